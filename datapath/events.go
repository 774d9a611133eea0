package datapath

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"sync"
	"time"

	"github.com/cilium/ebpf/ringbuf"
	"golang.org/x/sys/unix"

	"github.com/meshbed/meshbed/datapath/monitor"
	"github.com/meshbed/meshbed/datapath/state"
)

// The event types live in package monitor, which the control plane may
// import; these names keep the datapath's API whole.
type (
	Reason  = monitor.Reason
	Verdict = monitor.Verdict
	Point   = monitor.Point
	Event   = monitor.Event
)

// Reasons, verdicts and observation points (see package monitor).
const (
	ReasonForwardedLocal  = monitor.ReasonForwardedLocal
	ReasonForwardedTunnel = monitor.ReasonForwardedTunnel
	ReasonForwardedStack  = monitor.ReasonForwardedStack
	ReasonService         = monitor.ReasonService
	ReasonRemoteCluster   = monitor.ReasonRemoteCluster
	ReasonPolicyEgress    = monitor.ReasonPolicyEgress
	ReasonPolicyIngress   = monitor.ReasonPolicyIngress
	ReasonNoBackend       = monitor.ReasonNoBackend
	ReasonInvalidSource   = monitor.ReasonInvalidSource
	ReasonMalformed       = monitor.ReasonMalformed
	ReasonNoTunnelKey     = monitor.ReasonNoTunnelKey
	ReasonNoTunnelDevice  = monitor.ReasonNoTunnelDevice
	ReasonNATFailed       = monitor.ReasonNATFailed
	ReasonTunnelFailed    = monitor.ReasonTunnelFailed
	ReasonEventsLost      = monitor.ReasonEventsLost

	Forwarded = monitor.Forwarded
	Dropped   = monitor.Dropped

	FromContainer = monitor.FromContainer
	ToContainer   = monitor.ToContainer
	FromOverlay   = monitor.FromOverlay
)

// flow_event.flags (bpf/lib/events.h).
const flowFlagNew = 1 << 0

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
		New:                 fe.Flags&flowFlagNew != 0,
		Tunnel:              monitor.Tunnel(fe.Tunnel),
		BackendCluster:      uint32(fe.BackendCluster),
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

	mu       sync.Mutex
	deadline time.Time
}

// ErrReaderClosed is returned by EventReader.Read after Close.
var ErrReaderClosed = monitor.ErrReaderClosed

// EventPollInterval bounds how long an event waits for its reader. The
// datapath wakes the reader only once a batch has accumulated (a wake-up
// per event would cost the datapath microseconds per connection), so the
// reader also looks for events this often.
const EventPollInterval = 50 * time.Millisecond

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
// or Close (ErrReaderClosed). An event is returned at most
// EventPollInterval after the datapath wrote it.
func (r *EventReader) Read() (Event, error) {
	for {
		r.mu.Lock()
		user := r.deadline
		r.mu.Unlock()
		poll := time.Now().Add(EventPollInterval)
		if !user.IsZero() && user.Before(poll) {
			poll = user
		}
		r.rb.SetDeadline(poll)
		rec, err := r.rb.Read()
		if errors.Is(err, ringbuf.ErrClosed) {
			return Event{}, ErrReaderClosed
		}
		if errors.Is(err, os.ErrDeadlineExceeded) {
			if !user.IsZero() && !time.Now().Before(user) {
				return Event{}, err
			}
			continue
		}
		if err != nil {
			return Event{}, fmt.Errorf("read flow event: %w", err)
		}
		ev, err := decodeEvent(rec.RawSample)
		if err != nil {
			return Event{}, err
		}
		ev.Time = wallTime(ev.Monotonic)
		if ev.RevNATID != 0 {
			r.d.mu.Lock()
			ev.Service = r.d.prog.revNat[ev.RevNATID]
			r.d.mu.Unlock()
		}
		return ev, nil
	}
}

// wallTime converts a CLOCK_MONOTONIC reading (bpf_ktime_get_ns) into
// wall-clock time, by the current offset between the two clocks.
func wallTime(mono time.Duration) time.Time {
	var ts unix.Timespec
	now := time.Now()
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		return now
	}
	return now.Add(mono - time.Duration(ts.Nano()))
}

// LostEvents is how many flow events the datapath could not write because
// the ring buffer was full, since it was loaded (monitor.Source).
func (d *Datapath) LostEvents() (uint64, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return 0, ErrClosed
	}
	var perCPU []podMetric
	if err := d.pod.Metrics.Lookup(uint32(ReasonEventsLost), &perCPU); err != nil {
		return 0, fmt.Errorf("datapath: read lost events: %w", err)
	}
	var n uint64
	for _, m := range perCPU {
		n += m.Packets
	}
	return n, nil
}

// SetDeadline makes Read return os.ErrDeadlineExceeded after t, once the
// events written before t are read; the zero time removes the deadline. It
// applies to the next Read.
func (r *EventReader) SetDeadline(t time.Time) {
	r.mu.Lock()
	r.deadline = t
	r.mu.Unlock()
}

// Close releases the reader and unblocks Read.
func (r *EventReader) Close() error { return r.rb.Close() }
