package datapath

import (
	"bytes"
	"encoding/binary"
	"errors"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/meshbed/meshbed/datapath/monitor"
	"github.com/meshbed/meshbed/datapath/state"
)

func TestDecodeEvent(t *testing.T) {
	fe := podFlowEvent{
		Saddr: be32(clientIP), Daddr: be32(remoteIP), Sport: be16(40000), Dport: be16(8080),
		OrigDaddr: be32(vip), OrigDport: be16(80), TunnelEndpoint: be32(node2),
		SrcIdentity: clientIdentity, DstIdentity: remoteIdentity, SrcCluster: 1, DstCluster: 2,
		BackendId: 7, RevNatId: 3, Proto: 6, Verdict: 1, Reason: uint8(ReasonRemoteCluster), Obs: 1, EndpointId: 4,
	}
	var buf bytes.Buffer
	if err := binary.Write(&buf, binary.NativeEndian, &fe); err != nil {
		t.Fatal(err)
	}
	ev, err := decodeEvent(buf.Bytes())
	if err != nil {
		t.Fatal(err)
	}
	want := Event{
		Verdict: Forwarded, Reason: ReasonRemoteCluster, Point: FromContainer, Protocol: state.TCP,
		Source: ap(clientIP, 40000), Destination: ap(remoteIP, 8080), Frontend: ap(vip, 80),
		RevNATID: 3, BackendID: 7, SourceIdentity: clientIdentity, DestinationIdentity: remoteIdentity,
		SourceCluster: 1, DestinationCluster: 2, TunnelEndpoint: node2, EndpointID: 4,
	}
	if ev != want {
		t.Fatalf("decoded %+v\nwant %+v", ev, want)
	}
	s := ev.String()
	for _, part := range []string{"from-container", "FORWARDED", "remote-cluster", "10.0.1.2:40000 -> 10.0.2.5:8080", "identity 1000@1 -> 2000@2", "10.96.0.10:80", "tunnel 192.168.0.2"} {
		if !strings.Contains(s, part) {
			t.Errorf("String() = %q, lacks %q", s, part)
		}
	}
	if _, err := decodeEvent(buf.Bytes()[:10]); err == nil {
		t.Error("short record decoded")
	}
}

func FuzzDecodeEvent(f *testing.F) {
	f.Add(make([]byte, flowEventSize))
	f.Add([]byte{1, 2, 3})
	f.Fuzz(func(t *testing.T, raw []byte) {
		ev, err := decodeEvent(raw)
		if err != nil {
			return
		}
		_ = ev.String()
		if ev.Frontend.IsValid() && ev.Frontend.Addr() == (netip.Addr{}) {
			t.Fatal("valid frontend without address")
		}
	})
}

// readAll returns every event waiting in the ring buffer.
func (e *progEnv) readAll(t *testing.T) []Event {
	t.Helper()
	var out []Event
	// A deadline in the past still returns what is pending.
	e.events.SetDeadline(time.Now())
	for {
		ev, err := e.events.Read()
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, ev)
	}
}

// TestEventsPerConnection: outside trace mode a connection reports its first
// packet once at each point it passes, and nothing after; every drop
// reports.
func TestEventsPerConnection(t *testing.T) {
	e := newProgEnv(t, Options{})
	s := baseState()
	s.Services = []state.Service{
		{Name: "default/remote", Frontend: state.Frontend{IP: vip, Port: 81, Protocol: state.TCP},
			Backends: []state.Backend{backend(foreignIP, 9090, state.TCP, 2)}},
	}
	s.Endpoints[1].Policy = &state.EndpointPolicy{IngressEnforced: true}
	e.apply(t, s)
	e.drainEvents()

	t.Run("a connection through a service to another cluster", func(t *testing.T) {
		for i, flags := range []uint8{tcpSYN, tcpACK, tcpACK, tcpACK | 0x08} {
			if ret, _ := e.fromClient(t, tcp(clientIP, vip, 43000, 81, flags)); ret != tcActRedirect {
				t.Fatalf("packet %d: verdict %d", i, ret)
			}
		}
		evs := e.readAll(t)
		if len(evs) != 1 {
			t.Fatalf("%d events for a 4-packet connection, want 1: %v", len(evs), evs)
		}
		ev := evs[0]
		want := Event{
			Verdict: Forwarded, Reason: ReasonForwardedTunnel, Point: FromContainer, New: true, Tunnel: monitor.TunnelTx,
			Protocol: state.TCP, Source: ap(clientIP, 43000), Destination: ap(foreignIP, 9090), Frontend: ap(vip, 81),
			Service: "default/remote", BackendCluster: 2, SourceIdentity: clientIdentity, DestinationIdentity: foreignIdentity,
			SourceCluster: 1, DestinationCluster: 2, TunnelEndpoint: node3, EndpointID: 1,
		}
		ev.Time, ev.Monotonic, ev.RevNATID, ev.BackendID, ev.Ifindex = time.Time{}, 0, 0, 0, 0
		if ev != want {
			t.Fatalf("event %+v\nwant  %+v", ev, want)
		}
		if d := time.Since(evs[0].Time); d < 0 || d > time.Minute {
			t.Errorf("event time %s is %s from now", evs[0].Time, d)
		}
	})

	t.Run("a client port reused while its entry is closing opens a new connection", func(t *testing.T) {
		for i, flags := range []uint8{tcpSYN, tcpACK, tcpACK | 0x01, tcpSYN, tcpACK} {
			if ret, _ := e.fromClient(t, tcp(clientIP, vip, 43003, 81, flags)); ret != tcActRedirect {
				t.Fatalf("packet %d: verdict %d", i, ret)
			}
		}
		evs := e.readAll(t)
		if len(evs) != 2 || !evs[0].New || !evs[1].New {
			t.Fatalf("%d events for two connections on one tuple, want 2 new: %v", len(evs), evs)
		}
	})

	t.Run("every drop reports", func(t *testing.T) {
		for range 3 {
			if ret, _ := e.fromClient(t, tcp(clientIP, serverIP, 43002, 80, tcpSYN)); ret != tcActShot {
				t.Fatalf("verdict %d, want drop", ret)
			}
		}
		evs := e.readAll(t)
		if len(evs) != 3 {
			t.Fatalf("%d events for 3 drops: %v", len(evs), evs)
		}
		for _, ev := range evs {
			if ev.Verdict != Dropped || ev.Reason != ReasonPolicyIngress || ev.New || ev.DestinationIdentity != serverIdentity {
				t.Errorf("drop event %s", ev)
			}
		}
	})
}

// TestLostEventsStalledReader: with nobody reading, the ring buffer fills;
// the datapath keeps forwarding, and every event it could not write is
// counted, so that written + lost = emitted.
func TestLostEventsStalledReader(t *testing.T) {
	e := newProgEnv(t, Options{EventBufferBytes: 4096})
	e.apply(t, baseState())
	e.drainEvents()
	lost0, err := e.d.LostEvents()
	if err != nil {
		t.Fatal(err)
	}
	const conns = 500 // each a new connection: one event each
	for i := range conns {
		if ret, _ := e.fromClient(t, tcp(clientIP, remoteIP, uint16(20000+i), 80, tcpSYN)); ret != tcActRedirect {
			t.Fatalf("connection %d: verdict %d with the ring buffer full", i, ret)
		}
	}
	lost, err := e.d.LostEvents()
	if err != nil {
		t.Fatal(err)
	}
	read := len(e.readAll(t))
	if lost-lost0 == 0 || read == 0 {
		t.Fatalf("read %d, lost %d: a 4 KiB ring buffer cannot hold %d events", read, lost-lost0, conns)
	}
	if got := uint64(read) + lost - lost0; got != conns {
		t.Fatalf("read %d + lost %d = %d, want %d", read, lost-lost0, got, conns)
	}
	t.Logf("read %d, lost %d of %d", read, lost-lost0, conns)
}
