package datapath

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"time"

	"github.com/cilium/ebpf/ringbuf"

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
	ReasonService         Reason = 8 // new connection load-balanced to a backend
	ReasonRemoteCluster   Reason = 9 // new connection to another cluster

	ReasonPolicyEgress   Reason = 16
	ReasonPolicyIngress  Reason = 17
	ReasonNoBackend      Reason = 18 // service without active backends
	ReasonInvalidSource  Reason = 19 // source IP not the pod behind the veth
	ReasonMalformed      Reason = 20
	ReasonNoTunnelKey    Reason = 21 // overlay packet without tunnel metadata
	ReasonNoTunnelDevice Reason = 22 // tunnel routing but no overlay attached
	ReasonNATFailed      Reason = 23
	ReasonTunnelFailed   Reason = 24

	ReasonEventsLost Reason = 32 // ring buffer full: events were dropped
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

// Event is one flow event: a packet with a verdict of interest.
type Event struct {
	// Monotonic is the kernel's monotonic clock when the packet was seen.
	Monotonic time.Duration
	Verdict   Verdict
	Reason    Reason
	Point     Point
	Protocol  state.Protocol
	// Source and Destination as on the wire at the verdict (Destination is
	// the backend after service translation).
	Source, Destination netip.AddrPort
	// Frontend is the service address the client used; invalid if the
	// packet did not go through a service.
	Frontend netip.AddrPort
	// Service is the service's name (namespace/name) and BackendID the
	// backend chosen, when the packet went through a service.
	Service   string
	RevNATID  uint16
	BackendID uint32
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
	if e.Frontend.IsValid() {
		name := e.Service
		if name == "" {
			name = fmt.Sprintf("rev-nat-%d", e.RevNATID)
		}
		fmt.Fprintf(&b, " service %s %s backend %d", name, e.Frontend, e.BackendID)
	}
	if e.TunnelEndpoint.IsValid() {
		fmt.Fprintf(&b, " tunnel %s", e.TunnelEndpoint)
	}
	if e.EndpointID != 0 {
		fmt.Fprintf(&b, " endpoint %d", e.EndpointID)
	}
	return b.String()
}

// flowEventSize is sizeof(struct flow_event).
var flowEventSize = binary.Size(podFlowEvent{})

// decodeEvent turns a ring buffer record into an Event. Records come from
// our own program, but a short or garbled one must not crash the reader.
func decodeEvent(raw []byte) (Event, error) {
	if len(raw) < flowEventSize {
		return Event{}, fmt.Errorf("flow event of %d bytes, want %d", len(raw), flowEventSize)
	}
	var fe podFlowEvent
	if err := binary.Read(bytes.NewReader(raw[:flowEventSize]), binary.NativeEndian, &fe); err != nil {
		return Event{}, fmt.Errorf("decode flow event: %w", err)
	}
	ev := Event{
		Monotonic:           time.Duration(fe.Timestamp),
		Verdict:             Verdict(fe.Verdict),
		Reason:              Reason(fe.Reason),
		Point:               Point(fe.Obs),
		Protocol:            state.Protocol(fe.Proto),
		Source:              netip.AddrPortFrom(addrFromBE32(fe.Saddr), portFromBE16(fe.Sport)),
		Destination:         netip.AddrPortFrom(addrFromBE32(fe.Daddr), portFromBE16(fe.Dport)),
		RevNATID:            fe.RevNatId,
		BackendID:           fe.BackendId,
		SourceIdentity:      fe.SrcIdentity,
		DestinationIdentity: fe.DstIdentity,
		SourceCluster:       uint32(fe.SrcCluster),
		DestinationCluster:  uint32(fe.DstCluster),
		EndpointID:          fe.EndpointId,
		Ifindex:             fe.Ifindex,
	}
	if fe.OrigDaddr != 0 {
		ev.Frontend = netip.AddrPortFrom(addrFromBE32(fe.OrigDaddr), portFromBE16(fe.OrigDport))
	}
	if fe.TunnelEndpoint != 0 {
		ev.TunnelEndpoint = addrFromBE32(fe.TunnelEndpoint)
	}
	return ev, nil
}

// EventReader reads flow events from a Datapath's ring buffer.
type EventReader struct {
	d  *Datapath
	rb *ringbuf.Reader
}

// ErrReaderClosed is returned by EventReader.Read after Close.
var ErrReaderClosed = errors.New("event reader closed")

// Events opens a reader of flow events. Events are consumed: with two
// readers each event goes to one of them.
func (d *Datapath) Events() (*EventReader, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil, ErrClosed
	}
	rb, err := ringbuf.NewReader(d.pod.Events)
	if err != nil {
		return nil, fmt.Errorf("datapath: open flow events: %w", err)
	}
	return &EventReader{d: d, rb: rb}, nil
}

// Read blocks until the next event, the deadline (os.ErrDeadlineExceeded)
// or Close (ErrReaderClosed).
func (r *EventReader) Read() (Event, error) {
	rec, err := r.rb.Read()
	if errors.Is(err, ringbuf.ErrClosed) {
		return Event{}, ErrReaderClosed
	}
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return Event{}, err
	}
	if err != nil {
		return Event{}, fmt.Errorf("read flow event: %w", err)
	}
	ev, err := decodeEvent(rec.RawSample)
	if err != nil {
		return Event{}, err
	}
	if ev.RevNATID != 0 {
		r.d.mu.Lock()
		ev.Service = r.d.prog.revNat[ev.RevNATID]
		r.d.mu.Unlock()
	}
	return ev, nil
}

// SetDeadline makes Read return os.ErrDeadlineExceeded after t; the zero
// time removes the deadline.
func (r *EventReader) SetDeadline(t time.Time) { r.rb.SetDeadline(t) }

// Close releases the reader and unblocks Read.
func (r *EventReader) Close() error { return r.rb.Close() }
