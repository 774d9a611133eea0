package agent

import (
	"fmt"
	"net/netip"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/tools/cache"

	"github.com/meshbed/meshbed/datapath/state"
	"github.com/meshbed/meshbed/mesh/flow"
	"github.com/meshbed/meshbed/mesh/identity"
	"github.com/meshbed/meshbed/mesh/wire"
)

// podIPIndex indexes the pod informer by pod address, for flows.
const podIPIndex = "podIP"

func podIPs(obj any) ([]string, error) {
	p, ok := obj.(*corev1.Pod)
	if !ok || p.Spec.HostNetwork || p.Status.PodIP == "" {
		return nil, nil
	}
	return []string{p.Status.PodIP}, nil
}

// Flows returns the node's flow observer, nil if the agent has no event
// source (Config.Monitor).
func (a *Agent) Flows() *flow.Observer { return a.flows }

// newFlowObserver makes the observer of Config.Monitor's events, resolving
// addresses with what the agent knows.
func (a *Agent) newFlowObserver() error {
	if a.cfg.Monitor == nil {
		return nil
	}
	if err := a.podInf.AddIndexers(cache.Indexers{podIPIndex: podIPs}); err != nil {
		return fmt.Errorf("agent: pod index: %w", err)
	}
	o, err := flow.NewObserver(flow.ObserverConfig{
		Cluster: a.cfg.ClusterName, Node: a.cfg.NodeName, Source: a.cfg.Monitor,
		Resolver: (*resolver)(a), Logger: a.log.With("component", "flows"),
	})
	if err != nil {
		return fmt.Errorf("agent: %w", err)
	}
	a.flows = o
	return nil
}

// resolver is the Agent seen as a flow.Resolver: local pods from the pod
// informer, remote pods from the remote clusters' ipcache entries, nodes of
// every cluster, identities of every cluster.
type resolver Agent

var _ flow.Resolver = (*resolver)(nil)

func (r *resolver) LookupIP(ip netip.Addr) (flow.Endpoint, bool) {
	a := (*Agent)(r)
	// Two pods may share an address for a moment (one going, one coming):
	// either is a fair description.
	if objs, err := a.podInf.GetIndexer().ByIndex(podIPIndex, ip.String()); err == nil && len(objs) > 0 {
		p := objs[0].(*corev1.Pod)
		e := flow.Endpoint{IP: ip, Cluster: a.cfg.ClusterName, Namespace: p.Namespace, Pod: p.Name}
		if id, ok := a.ids.LookupLabels(identity.PodLabels(a.cfg.ClusterName, p.Namespace, p.Labels)); ok {
			e.Identity = id
		}
		return e, true
	}
	for _, o := range a.nodeInf.GetStore().List() {
		n := o.(*corev1.Node)
		if nip, ok := nodeInternalIP(n); ok && nip == ip {
			return flow.Endpoint{IP: ip, Cluster: a.cfg.ClusterName, Node: n.Name, Identity: state.IdentityHost}, true
		}
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, name := range a.remoteNamesLocked() {
		rc := a.remotes[name]
		if p, ok := rc.ipcache[ip]; ok {
			e := flow.Endpoint{IP: ip, Cluster: name, Namespace: p.K8sNamespace, Pod: p.K8sPodName, Identity: p.ID}
			if p.ID == state.IdentityHost {
				e.Identity = state.IdentityRemoteNode
			}
			return e, true
		}
		for _, n := range rc.nodes {
			for _, addr := range n.IPAddresses {
				if nip, ok := netip.AddrFromSlice(addr.IP); ok && nip.Unmap() == ip {
					return flow.Endpoint{IP: ip, Cluster: name, Node: n.Name, Identity: state.IdentityRemoteNode}, true
				}
			}
		}
	}
	return flow.Endpoint{}, false
}

func (r *resolver) ClusterName(id uint32) string {
	a := (*Agent)(r)
	if id == a.cfg.ClusterID {
		return a.cfg.ClusterName
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	for name, rc := range a.remotes {
		if rc.id == id {
			return name
		}
	}
	return ""
}

// reservedLabels name the reserved identities the way Cilium does.
var reservedLabels = map[uint32]string{
	state.IdentityHost: "reserved:host", state.IdentityWorld: "reserved:world",
	state.IdentityUnmanaged: "reserved:unmanaged", state.IdentityHealth: "reserved:health",
	state.IdentityInit: "reserved:init", state.IdentityRemoteNode: "reserved:remote-node",
	state.IdentityKubeAPIServer: "reserved:kube-apiserver",
}

func (r *resolver) IdentityLabels(id uint32) []string {
	a := (*Agent)(r)
	if l, ok := reservedLabels[id]; ok {
		return []string{l}
	}
	if labels, ok := a.ids.LookupID(id); ok {
		return labelStrings(labels)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, rc := range a.remotes {
		if labels, ok := rc.identities[id]; ok {
			return labelStrings(labels)
		}
	}
	return nil
}

func labelStrings(l wire.Labels) []string {
	out := make([]string, len(l))
	for i, lb := range l {
		out[i] = lb.Source + ":" + lb.Key + "=" + lb.Value
	}
	return out
}
