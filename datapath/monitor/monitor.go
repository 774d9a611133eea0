// Package monitor is what the datapath reports about packets: flow events
// (drops, and the first packet of each connection at each observation
// point) and the count of events lost when the reader fell behind. It is
// the datapath's side of flow observability, the way package state is the
// desired state: it imports neither BPF nor netlink, so the control plane
// (mesh/flow) can consume events while package datapath produces them.
package monitor

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"time"

	"github.com/meshbed/meshbed/datapath/state"
)

// Reason says why a packet was forwarded or dropped; it indexes the
// datapath's counters and is carried by flow events (enum reason in
// bpf/lib/events.h).
type Reason uint8

// Reasons.
const (
	ReasonForwardedLocal  Reason = 1 // redirected to a pod on this node
	ReasonForwardedTunnel Reason = 2 // encapsulated towards another node
	ReasonForwardedStack  Reason = 3 // handed to the host stack
	ReasonService         Reason = 8 // counter: new connection load-balanced to a backend
	ReasonRemoteCluster   Reason = 9 // counter: new connection to another cluster

	ReasonPolicyEgress   Reason = 16
	ReasonPolicyIngress  Reason = 17
	ReasonNoBackend      Reason = 18 // service without active backends
	ReasonInvalidSource  Reason = 19 // source IP not the pod behind the veth
	ReasonMalformed      Reason = 20
	ReasonNoTunnelKey    Reason = 21 // overlay packet without tunnel metadata
	ReasonNoTunnelDevice Reason = 22 // tunnel routing but no overlay attached
	ReasonNATFailed      Reason = 23
	ReasonTunnelFailed   Reason = 24

	ReasonEventsLost Reason = 32 // counter: ring buffer full, events dropped
)

var reasonNames = map[Reason]string{
	ReasonForwardedLocal:  "forwarded-local",
	ReasonForwardedTunnel: "forwarded-tunnel",
	ReasonForwardedStack:  "forwarded-stack",
	ReasonService:         "service",
	ReasonRemoteCluster:   "remote-cluster",
	ReasonPolicyEgress:    "policy-denied-egress",
	ReasonPolicyIngress:   "policy-denied-ingress",
	ReasonNoBackend:       "no-backend",
	ReasonInvalidSource:   "invalid-source",
	ReasonMalformed:       "malformed",
	ReasonNoTunnelKey:     "no-tunnel-key",
	ReasonNoTunnelDevice:  "no-tunnel-device",
	ReasonNATFailed:       "nat-failed",
	ReasonTunnelFailed:    "tunnel-failed",
	ReasonEventsLost:      "events-lost",
}

func (r Reason) String() string {
	if n, ok := reasonNames[r]; ok {
		return n
	}
	return fmt.Sprintf("reason-%d", uint8(r))
}

// IsDrop reports whether the reason is a drop.
func (r Reason) IsDrop() bool { return r >= ReasonPolicyEgress && r < ReasonEventsLost }

// Verdict is what happened to the packet of a flow event.
type Verdict uint8

// Verdicts.
const (
	Forwarded Verdict = 1
	Dropped   Verdict = 2
)

func (v Verdict) String() string {
	switch v {
	case Forwarded:
		return "FORWARDED"
	case Dropped:
		return "DROPPED"
	}
	return fmt.Sprintf("verdict-%d", uint8(v))
}

// Point is where in the datapath a packet was seen.
type Point uint8

// Observation points.
const (
	FromContainer Point = 1 // pod egress (host veth ingress)
	ToContainer   Point = 2 // pod ingress via the host stack (host veth egress)
	FromOverlay   Point = 3 // VXLAN device ingress
)

func (p Point) String() string {
	switch p {
	case FromContainer:
		return "from-container"
	case ToContainer:
		return "to-container"
	case FromOverlay:
		return "from-overlay"
	}
	return fmt.Sprintf("point-%d", uint8(p))
}

// Tunnel says whether the packet goes into or came out of the tunnel.
type Tunnel uint8

// Tunnel crossings.
const (
	NoTunnel Tunnel = 0
	TunnelTx Tunnel = 1 // encapsulated towards another node
	TunnelRx Tunnel = 2 // decapsulated from another node
)

func (t Tunnel) String() string {
	switch t {
	case NoTunnel:
		return "none"
	case TunnelTx:
		return "to-tunnel"
	case TunnelRx:
		return "from-tunnel"
	}
	return fmt.Sprintf("tunnel-%d", uint8(t))
}

// Event is one flow event: a drop, or the first packet of a connection at
// an observation point (every forwarded packet in trace mode).
type Event struct {
	// Time is when the datapath saw the packet (its monotonic timestamp
	// converted to wall-clock time by the reader).
	Time time.Time
	// Monotonic is the kernel's monotonic clock when the packet was seen.
	Monotonic time.Duration
	Verdict   Verdict
	Reason    Reason
	Point     Point
	// New marks the first packet of a connection (a conntrack entry was
	// created for it); false on drops and on trace-mode packets of
	// established connections.
	New      bool
	Tunnel   Tunnel
	Protocol state.Protocol
	// Source and Destination as on the wire at the verdict (Destination is
	// the backend after service translation).
	Source, Destination netip.AddrPort
	// Frontend is the service address the client used; invalid if the
	// packet did not go through a service.
	Frontend netip.AddrPort
	// Service is the service's name (namespace/name) and BackendID the
	// backend chosen, when the packet went through a service;
	// BackendCluster is that backend's cluster ID.
	Service        string
	RevNATID       uint16
	BackendID      uint32
	BackendCluster uint32
	// Identities and clusters of both ends (0 when unknown).
	SourceIdentity, DestinationIdentity uint32
	SourceCluster, DestinationCluster   uint32
	// TunnelEndpoint is the node the packet was tunnelled to or from.
	TunnelEndpoint netip.Addr
	// EndpointID is the local endpoint the packet left or was going to.
	EndpointID uint16
	Ifindex    uint32
}

func (e Event) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s %s %s -> %s", e.Point, e.Verdict, e.Reason, e.Source, e.Destination)
	fmt.Fprintf(&b, " %s identity %d@%d -> %d@%d", e.Protocol, e.SourceIdentity, e.SourceCluster, e.DestinationIdentity, e.DestinationCluster)
	if e.New {
		b.WriteString(" new")
	}
	if e.Frontend.IsValid() {
		name := e.Service
		if name == "" {
			name = fmt.Sprintf("rev-nat-%d", e.RevNATID)
		}
		fmt.Fprintf(&b, " service %s %s backend %d@%d", name, e.Frontend, e.BackendID, e.BackendCluster)
	}
	if e.Tunnel != NoTunnel {
		fmt.Fprintf(&b, " %s", e.Tunnel)
	}
	if e.TunnelEndpoint.IsValid() {
		fmt.Fprintf(&b, " tunnel %s", e.TunnelEndpoint)
	}
	if e.EndpointID != 0 {
		fmt.Fprintf(&b, " endpoint %d", e.EndpointID)
	}
	return b.String()
}

// ErrReaderClosed is returned by Reader.Read after Close.
var ErrReaderClosed = errors.New("event reader closed")

// Reader reads flow events of one node's datapath. Read blocks until the
// next event, the deadline (os.ErrDeadlineExceeded) or Close
// (ErrReaderClosed). Events are consumed: with two readers each event goes
// to one of them.
type Reader interface {
	Read() (Event, error)
	SetDeadline(t time.Time)
	Close() error
}

// Source is a node's datapath seen from an event consumer.
type Source interface {
	// Events opens a Reader.
	Events() (Reader, error)
	// LostEvents is how many events the datapath could not report because
	// the ring buffer was full (the reader fell behind), since it was
	// loaded.
	LostEvents() (uint64, error)
}
