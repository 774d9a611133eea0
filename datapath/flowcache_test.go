package datapath

import (
	"net/netip"
	"testing"

	"github.com/meshbed/meshbed/datapath/state"
)

// The flow cache (struct ct_entry, bpf/pod.c fast_forward) lets established
// packets skip the endpoint, service, backend, ipcache and policy lookups.
// These tests prove that what it caches does not outlive a change of what
// it was derived from: every Apply that writes a map bumps the revision.

// ctScopeEgress is CT_SCOPE_EGRESS (bpf/lib/maps.h).
const ctScopeEgress = 1

// cachedEntry returns the conntrack entry of scope for the tuple of pkt
// (as sent, before any NAT), failing if it has no current flow cache.
func cachedEntry(t *testing.T, e *progEnv, pkt testPacket, scope uint8) podCtEntry {
	t.Helper()
	k := podCtKey{
		Saddr: be32(pkt.src.Addr()), Daddr: be32(pkt.dst.Addr()),
		Sport: be16(pkt.src.Port()), Dport: be16(pkt.dst.Port()),
		Proto: uint8(pkt.proto), Scope: scope,
	}
	var v podCtEntry
	if err := e.d.pod.Conntrack.Lookup(&k, &v); err != nil {
		t.Fatalf("conntrack entry of %v (scope %d): %v", pkt, scope, err)
	}
	if rev := revisionOf(t, e.d); v.Revision != rev {
		t.Fatalf("conntrack entry of %v: flow cache of revision %d, datapath at %d: the fast path would not take it", pkt, v.Revision, rev)
	}
	return v
}

func TestFlowCachePolicyChange(t *testing.T) {
	e := newProgEnv(t, Options{})
	s := baseState()
	s.Endpoints[0].Policy = &state.EndpointPolicy{EgressEnforced: true, Allow: []state.PolicyKey{
		{Direction: state.Egress, Identity: remoteIdentity, Protocol: state.TCP, Port: 80},
	}}
	e.apply(t, s)

	if ret, _ := e.fromClient(t, tcp(clientIP, remoteIP, 41000, 80, tcpSYN)); ret != tcActRedirect {
		t.Fatalf("SYN allowed by policy: verdict %d", ret)
	}
	est := tcp(clientIP, remoteIP, 41000, 80, tcpACK)
	for range 3 {
		if ret, _ := e.fromClient(t, est); ret != tcActRedirect {
			t.Fatalf("established packet: verdict %d", ret)
		}
	}
	cachedEntry(t, e, est, ctScopeEgress)
	before := revisionOf(t, e.d)

	// The rule goes: the cached verdict must go with it.
	s.Endpoints[0].Policy.Allow = []state.PolicyKey{
		{Direction: state.Egress, Identity: remoteIdentity, Protocol: state.TCP, Port: 443},
	}
	e.apply(t, s)
	if after := revisionOf(t, e.d); after == before {
		t.Fatalf("policy change left the revision at %d", after)
	}
	e.drainEvents()
	if ret, _ := e.fromClient(t, est); ret != tcActShot {
		t.Fatalf("established packet after its policy was removed: verdict %d, want drop", ret)
	}
	ev := e.event(t, func(ev Event) bool { return ev.Reason == ReasonPolicyEgress })
	if ev.Reason != ReasonPolicyEgress {
		t.Errorf("drop reason %v, want %v", ev.Reason, ReasonPolicyEgress)
	}

	// And back: allowed again, and cached again.
	s.Endpoints[0].Policy.Allow[0].Port = 80
	e.apply(t, s)
	for range 2 {
		if ret, _ := e.fromClient(t, est); ret != tcActRedirect {
			t.Fatalf("established packet with its policy restored: verdict %d", ret)
		}
	}
	cachedEntry(t, e, est, ctScopeEgress)
}

func TestFlowCacheBackendRemoved(t *testing.T) {
	e := newProgEnv(t, Options{})
	s := baseState()
	s.Services = []state.Service{{Name: "default/remote", Frontend: state.Frontend{IP: vip, Port: 81, Protocol: state.TCP},
		Backends: []state.Backend{backend(remoteIP, 9090, state.TCP, 1)}}}
	e.apply(t, s)

	if ret, out := e.fromClient(t, tcp(clientIP, vip, 41001, 81, tcpSYN)); ret != tcActRedirect || out.dst != ap(remoteIP, 9090) {
		t.Fatalf("SYN to the service: verdict %d, to %s", ret, out.dst)
	}
	est := tcp(clientIP, vip, 41001, 81, tcpACK)
	for range 3 {
		if ret, out := e.fromClient(t, est); ret != tcActRedirect || out.dst != ap(remoteIP, 9090) {
			t.Fatalf("established packet: verdict %d, to %s", ret, out.dst)
		}
	}
	if c := cachedEntry(t, e, est, ctScopeService); c.NatAddr != be32(remoteIP) {
		t.Fatalf("flow cache sends to %s, want %s", addrFromBE32(c.NatAddr), remoteIP)
	}

	// The backend is replaced: its connections move to the new one
	// rather than keep going to the dead one.
	s.Services[0].Backends = []state.Backend{backend(remote2IP, 9090, state.TCP, 1)}
	e.apply(t, s)
	for range 2 {
		if ret, out := e.fromClient(t, est); ret != tcActRedirect || out.dst != ap(remote2IP, 9090) {
			t.Fatalf("established packet after its backend was removed: verdict %d, to %s, want %s", ret, out.dst, ap(remote2IP, 9090))
		}
	}
	cachedEntry(t, e, est, ctScopeService)

	// A terminating backend keeps its connections, cached or not.
	s.Services[0].Backends = []state.Backend{backend(remote2IP, 9090, state.TCP, 1), backend(remoteIP, 9090, state.TCP, 1)}
	s.Services[0].Backends[0].State = state.BackendTerminating
	e.apply(t, s)
	for range 2 {
		if ret, out := e.fromClient(t, est); ret != tcActRedirect || out.dst != ap(remote2IP, 9090) {
			t.Fatalf("established packet to a terminating backend: verdict %d, to %s", ret, out.dst)
		}
	}

	// The service goes: no more translation to any backend.
	s.Services = nil
	e.apply(t, s)
	if _, out := e.fromClient(t, est); out.dst != ap(vip, 81) {
		t.Fatalf("packet to a deleted service went to %s", out.dst)
	}
	if _, out := e.fromClient(t, est); out.dst != ap(vip, 81) {
		t.Fatalf("second packet to a deleted service went to %s", out.dst)
	}
}

func TestFlowCacheEndpointAndIPCacheChange(t *testing.T) {
	e := newProgEnv(t, Options{})
	s := baseState()
	e.apply(t, s)
	est := tcp(clientIP, remoteIP, 41002, 80, tcpACK)
	for range 3 {
		if ret, _ := e.fromClient(t, est); ret != tcActRedirect {
			t.Fatalf("packet to a remote pod: verdict %d", ret)
		}
	}
	c := cachedEntry(t, e, est, ctScopeEgress)
	if c.TunnelEndpoint != be32(node2) {
		t.Fatalf("flow cache tunnels to %s, want %s", addrFromBE32(c.TunnelEndpoint), node2)
	}
	// The remote pod moves to another node.
	for i := range s.IPCache {
		if s.IPCache[i].Prefix == netip.PrefixFrom(remoteIP, 32) {
			s.IPCache[i].TunnelEndpoint = node3
		}
	}
	e.apply(t, s)
	e.fromClient(t, est)
	if c := cachedEntry(t, e, est, ctScopeEgress); c.TunnelEndpoint != be32(node3) {
		t.Errorf("after the move the flow cache tunnels to %s, want %s", addrFromBE32(c.TunnelEndpoint), node3)
	}
	// The client endpoint goes: its packets are no longer trusted.
	s.Endpoints = s.Endpoints[1:]
	e.apply(t, s)
	if ret, _ := e.fromClient(t, est); ret != tcActShot {
		t.Errorf("packet of a removed endpoint: verdict %d, want drop", ret)
	}
}
