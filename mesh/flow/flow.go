// Package flow turns the datapath's flow events into flows in the manner of
// Hubble: each event (a drop, or the first packet of a connection at one
// observation point) is enriched with what the agent knows of both ends
// (pod, namespace, cluster, identity and its labels, including the
// endpoints of remote clusters), the service and the cluster of the backend
// chosen, the verdict and drop reason, and whether the packet crossed the
// tunnel.
//
// An Observer per node reads the events, keeps the last flows in a ring and
// streams them to subscribers; a slow subscriber loses flows (counted and
// reported to it) and never slows the reader, and the reader never slows the
// datapath (events it could not keep up with are lost in the datapath's
// ring buffer, counted, and reported too). Handler serves the stream as
// newline-delimited JSON over HTTP (the agent's local socket, the
// simulator's control socket); Client and Printer read and show it.
//
// The package is control plane: it reads events through datapath/monitor
// and never imports BPF or netlink.
package flow

import (
	"net/netip"
	"strings"
	"time"

	"github.com/meshbed/meshbed/datapath/monitor"
)

// Endpoint is one end of a flow.
type Endpoint struct {
	IP       netip.Addr `json:"ip"`
	Port     uint16     `json:"port,omitempty"`
	Identity uint32     `json:"identity"`
	// Cluster is the cluster the address belongs to; empty for addresses
	// outside the mesh (world).
	Cluster   string `json:"cluster,omitempty"`
	Namespace string `json:"namespace,omitempty"`
	Pod       string `json:"pod_name,omitempty"`
	// Node names the node when the address is a node's own.
	Node   string   `json:"node_name,omitempty"`
	Labels []string `json:"labels,omitempty"`
}

// Name is how the endpoint is shown: namespace/pod, the node, or the address.
func (e Endpoint) Name() string {
	switch {
	case e.Pod != "":
		return e.Namespace + "/" + e.Pod
	case e.Node != "":
		return "node/" + e.Node
	}
	return e.IP.String()
}

// Service is the service a flow went through.
type Service struct {
	Namespace string         `json:"namespace"`
	Name      string         `json:"name"`
	Frontend  netip.AddrPort `json:"frontend"`
	// BackendCluster is the cluster of the backend the datapath chose;
	// empty when none was chosen (a drop for lack of backends).
	BackendCluster string `json:"backend_cluster,omitempty"`
}

// Verdicts, as Hubble spells them.
const (
	VerdictForwarded = "FORWARDED"
	VerdictDropped   = "DROPPED"
)

// Flow is one enriched flow event.
type Flow struct {
	Time time.Time `json:"time"`
	// Cluster and Node are where the flow was observed.
	Cluster string `json:"cluster"`
	Node    string `json:"node_name"`
	// Verdict is FORWARDED or DROPPED; DropReason says why a packet was
	// dropped, Reason how it was forwarded (or the drop reason again).
	Verdict    string `json:"verdict"`
	DropReason string `json:"drop_reason_desc,omitempty"`
	Reason     string `json:"reason"`
	// ObservationPoint is the datapath program that saw the packet.
	ObservationPoint string `json:"trace_observation_point"`
	// New marks the first packet of a connection.
	New         bool     `json:"is_new,omitempty"`
	Protocol    string   `json:"protocol"`
	Source      Endpoint `json:"source"`
	Destination Endpoint `json:"destination"`
	Service     *Service `json:"service,omitempty"`
	// Tunnel is "to-tunnel" (encapsulated towards TunnelPeer), "from-tunnel"
	// (decapsulated from TunnelPeer), or empty.
	Tunnel     string     `json:"tunnel,omitempty"`
	TunnelPeer netip.Addr `json:"tunnel_peer,omitzero"`
}

// Lost reports events that did not reach the reader.
type Lost struct {
	Time time.Time `json:"time"`
	// Source is where they were lost: LostDatapath (the datapath's ring
	// buffer was full) or LostSubscriber (this stream's reader was too
	// slow).
	Source string `json:"source"`
	Count  uint64 `json:"num_events_lost"`
	// Cluster and Node are where the loss happened.
	Cluster string `json:"cluster,omitempty"`
	Node    string `json:"node_name,omitempty"`
}

// Loss sources.
const (
	LostDatapath   = "datapath-ring-buffer"
	LostSubscriber = "observer-subscriber"
)

// Record is one line of a flow stream: a flow, or a report of lost events.
type Record struct {
	Flow *Flow `json:"flow,omitempty"`
	Lost *Lost `json:"lost_events,omitempty"`
}

// Resolver is what the agent knows of addresses, identities and clusters.
type Resolver interface {
	// LookupIP describes the address: its pod or node, identity and
	// cluster; false if unknown.
	LookupIP(ip netip.Addr) (Endpoint, bool)
	// ClusterName names a cluster ID; empty if unknown.
	ClusterName(id uint32) string
	// IdentityLabels lists an identity's labels (source:key=value); nil if
	// unknown.
	IdentityLabels(id uint32) []string
}

// Enrich turns a datapath event seen on cluster/node into a Flow.
func Enrich(ev monitor.Event, r Resolver, cluster, node string) Flow {
	f := Flow{
		Time: ev.Time, Cluster: cluster, Node: cluster + "/" + node,
		Reason: ev.Reason.String(), ObservationPoint: ev.Point.String(), New: ev.New,
		Protocol: ev.Protocol.String(),
	}
	if f.Time.IsZero() {
		f.Time = time.Now()
	}
	switch ev.Verdict {
	case monitor.Dropped:
		f.Verdict, f.DropReason = VerdictDropped, ev.Reason.String()
	default:
		f.Verdict = VerdictForwarded
	}
	f.Source = endpoint(r, ev.Source, ev.SourceIdentity, ev.SourceCluster)
	f.Destination = endpoint(r, ev.Destination, ev.DestinationIdentity, ev.DestinationCluster)
	if ev.Frontend.IsValid() {
		s := &Service{Frontend: ev.Frontend}
		if ns, name, ok := strings.Cut(ev.Service, "/"); ok {
			s.Namespace, s.Name = ns, name
		} else {
			s.Name = ev.Service
		}
		if ev.BackendCluster != 0 {
			s.BackendCluster = r.ClusterName(ev.BackendCluster)
		}
		f.Service = s
	}
	if ev.Tunnel != monitor.NoTunnel {
		f.Tunnel = ev.Tunnel.String()
		f.TunnelPeer = ev.TunnelEndpoint
	}
	return f
}

// endpoint describes one end: the resolver's view of the address, filled in
// with what the datapath saw where the resolver knows less.
func endpoint(r Resolver, ap netip.AddrPort, identity, clusterID uint32) Endpoint {
	e, ok := r.LookupIP(ap.Addr())
	if !ok {
		e = Endpoint{}
	}
	e.IP, e.Port = ap.Addr(), ap.Port()
	if identity != 0 {
		// The datapath's identity is what policy saw: it wins.
		e.Identity = identity
	}
	if e.Cluster == "" && clusterID != 0 {
		e.Cluster = r.ClusterName(clusterID)
	}
	if e.Identity != 0 && e.Labels == nil {
		e.Labels = r.IdentityLabels(e.Identity)
	}
	if e.Namespace == "" {
		const nsLabel = "k8s:io.kubernetes.pod.namespace="
		for _, l := range e.Labels {
			if v, ok := strings.CutPrefix(l, nsLabel); ok {
				e.Namespace = v
			}
		}
	}
	return e
}
