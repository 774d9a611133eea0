package datapath

import (
	"errors"
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/meshbed/meshbed/datapath/monitor"
	"github.com/meshbed/meshbed/datapath/state"
	"github.com/meshbed/meshbed/internal/testenv"
)

// Program-level tests: crafted packets through BPF_PROG_TEST_RUN against maps
// programmed by Apply in a private network namespace.

const (
	tcActOK       = 0
	tcActShot     = 2
	tcActRedirect = 7
)

var (
	clientIP  = netip.MustParseAddr("10.0.1.2") // endpoint 1 on this node
	serverIP  = netip.MustParseAddr("10.0.1.3") // endpoint 2 on this node
	remoteIP  = netip.MustParseAddr("10.0.2.5") // pod on another node of cluster 1
	remote2IP = netip.MustParseAddr("10.0.2.6")
	foreignIP = netip.MustParseAddr("10.1.0.7") // pod in cluster 2
	node2     = netip.MustParseAddr("192.168.0.2")
	node3     = netip.MustParseAddr("192.168.1.2")
	vip       = netip.MustParseAddr("10.96.0.10")
	worldIP   = netip.MustParseAddr("8.8.8.8")
)

const (
	clientIdentity  = 1000
	serverIdentity  = 1001
	remoteIdentity  = 2000
	foreignIdentity = 2<<16 | 300
)

type progEnv struct {
	ns      *testNS
	d       *Datapath
	events  *EventReader
	ifindex map[string]int
	vxlan   int
}

// newProgEnv loads a datapath in a fresh namespace with two endpoint veths
// (ep1h, ep2h) and a VXLAN device, all attached.
func newProgEnv(t testing.TB, opts Options) *progEnv {
	t.Helper()
	testenv.Privileged(t)
	e := &progEnv{ns: newTestNS(t), ifindex: map[string]int{}}
	if opts.ClusterID == 0 {
		opts.ClusterID = 1
	}
	opts.Logger = testLogger(t)
	d, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := d.Close(); err != nil {
			t.Error(err)
		}
	})
	e.d = d
	e.ns.mustDo(t, func() error {
		for _, n := range []string{"ep1", "ep2"} {
			l, err := addVeth(n+"h", n+"p")
			if err != nil {
				return err
			}
			e.ifindex[n+"h"] = l.Attrs().Index
		}
		l, err := addVXLAN("vx0")
		if err != nil {
			return err
		}
		e.vxlan = l.Attrs().Index
		return d.AttachOverlay("vx0")
	})
	r, err := d.Events()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	e.events = r
	return e
}

func baseState() *state.State {
	return &state.State{
		Endpoints: []state.Endpoint{
			{ID: 1, IP: clientIP, Identity: clientIdentity, Interface: "ep1h"},
			{ID: 2, IP: serverIP, Identity: serverIdentity, Interface: "ep2h"},
		},
		IPCache: []state.IPCacheEntry{
			{Prefix: netip.PrefixFrom(clientIP, 32), Identity: clientIdentity, ClusterID: 1},
			{Prefix: netip.PrefixFrom(serverIP, 32), Identity: serverIdentity, ClusterID: 1},
			{Prefix: netip.PrefixFrom(remoteIP, 32), Identity: remoteIdentity, TunnelEndpoint: node2, ClusterID: 1},
			{Prefix: netip.PrefixFrom(remote2IP, 32), Identity: remoteIdentity, TunnelEndpoint: node2, ClusterID: 1},
			{Prefix: netip.PrefixFrom(foreignIP, 32), Identity: foreignIdentity, TunnelEndpoint: node3, ClusterID: 2},
		},
	}
}

func (e *progEnv) apply(t testing.TB, s *state.State) {
	t.Helper()
	e.ns.mustDo(t, func() error { return e.d.Apply(s) })
}

// run runs prog on pkt as if received on ifname and returns the verdict
// and the packet as the program left it.
func (e *progEnv) run(t *testing.T, prog *ebpf.Program, ifname string, pkt testPacket) (uint32, []byte) {
	t.Helper()
	var ctx [192]byte // struct __sk_buff; only ifindex (offset 40) is set
	idx := e.ifindex[ifname]
	ctx[40], ctx[41], ctx[42], ctx[43] = byte(idx), byte(idx>>8), byte(idx>>16), byte(idx>>24)
	in := pkt.bytes()
	out := make([]byte, len(in)+256)
	var ret uint32
	e.ns.mustDo(t, func() error {
		opts := ebpf.RunOptions{Data: in, DataOut: out, Context: ctx}
		var err error
		ret, err = prog.Run(&opts)
		out = out[:len(opts.DataOut)]
		return err
	})
	return ret, out
}

// fromClient sends pkt from endpoint 1's veth through from_container.
func (e *progEnv) fromClient(t *testing.T, pkt testPacket) (uint32, parsedPacket) {
	t.Helper()
	ret, out := e.run(t, e.d.pod.FromContainer, "ep1h", pkt)
	p, err := parseTestPacket(out)
	if err != nil {
		t.Fatalf("packet after from_container: %v", err)
	}
	return ret, p
}

// event returns the next flow event matching match, failing after a second.
func (e *progEnv) event(t *testing.T, match func(Event) bool) Event {
	t.Helper()
	deadline := time.Now().Add(time.Second)
	e.events.SetDeadline(deadline)
	for {
		ev, err := e.events.Read()
		if errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("no matching flow event within a second")
		}
		if err != nil {
			t.Fatal(err)
		}
		if match(ev) {
			return ev
		}
	}
}

func (e *progEnv) drainEvents() {
	e.events.SetDeadline(time.Now())
	for {
		if _, err := e.events.Read(); err != nil {
			return
		}
	}
}

func tcp(src, dst netip.Addr, sport, dport uint16, flags uint8) testPacket {
	return testPacket{src: netip.AddrPortFrom(src, sport), dst: netip.AddrPortFrom(dst, dport), proto: state.TCP, tcpFlags: flags, payload: []byte("hello")}
}

func udp(src, dst netip.Addr, sport, dport uint16) testPacket {
	return testPacket{src: netip.AddrPortFrom(src, sport), dst: netip.AddrPortFrom(dst, dport), proto: state.UDP, payload: []byte("ping")}
}

func ap(a netip.Addr, port uint16) netip.AddrPort { return netip.AddrPortFrom(a, port) }

func backend(ip netip.Addr, port uint16, proto state.Protocol, cluster uint32) state.Backend {
	return state.Backend{IP: ip, Port: port, Protocol: proto, ClusterID: cluster}
}

func TestServiceTranslation(t *testing.T) {
	// Not in trace mode: each first packet must report its connection.
	e := newProgEnv(t, Options{})
	s := baseState()
	s.Services = []state.Service{
		{Name: "default/local", Frontend: state.Frontend{IP: vip, Port: 80, Protocol: state.TCP},
			Backends: []state.Backend{backend(serverIP, 8080, state.TCP, 1)}},
		{Name: "default/remote", Frontend: state.Frontend{IP: vip, Port: 81, Protocol: state.TCP},
			Backends: []state.Backend{backend(remoteIP, 9090, state.TCP, 1)}},
		{Name: "default/dns", Frontend: state.Frontend{IP: vip, Port: 53, Protocol: state.UDP},
			Backends: []state.Backend{backend(serverIP, 5353, state.UDP, 1)}},
		{Name: "default/foreign", Frontend: state.Frontend{IP: vip, Port: 82, Protocol: state.TCP},
			Backends: []state.Backend{backend(foreignIP, 80, state.TCP, 2)}},
		{Name: "default/empty", Frontend: state.Frontend{IP: vip, Port: 83, Protocol: state.TCP}},
	}
	e.apply(t, s)

	tests := []struct {
		name    string
		pkt     testPacket
		verdict uint32
		dst     netip.AddrPort
		reason  Reason // event expected for the packet
		tunnel  netip.Addr
		service bool   // the event names the service
		backend uint32 // cluster of the backend chosen
	}{
		{"TCP to local backend", tcp(clientIP, vip, 40000, 80, tcpSYN), tcActRedirect, ap(serverIP, 8080), ReasonForwardedLocal, netip.Addr{}, true, 1},
		{"TCP to remote backend is tunnelled", tcp(clientIP, vip, 40001, 81, tcpSYN), tcActRedirect, ap(remoteIP, 9090), ReasonForwardedTunnel, node2, true, 1},
		{"UDP to local backend", udp(clientIP, vip, 40002, 53), tcActRedirect, ap(serverIP, 5353), ReasonForwardedLocal, netip.Addr{}, true, 1},
		{"backend in another cluster", tcp(clientIP, vip, 40003, 82, tcpSYN), tcActRedirect, ap(foreignIP, 80), ReasonForwardedTunnel, node3, true, 2},
		{"port miss is not translated", tcp(clientIP, vip, 40004, 84, tcpSYN), tcActOK, ap(vip, 84), ReasonForwardedStack, netip.Addr{}, false, 0},
		{"protocol miss is not translated", udp(clientIP, vip, 40005, 80), tcActOK, ap(vip, 80), ReasonForwardedStack, netip.Addr{}, false, 0},
		{"no backend drops", tcp(clientIP, vip, 40006, 83, tcpSYN), tcActShot, ap(vip, 83), ReasonNoBackend, netip.Addr{}, true, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e.drainEvents()
			ret, out := e.fromClient(t, tt.pkt)
			if ret != tt.verdict {
				t.Fatalf("verdict %d, want %d", ret, tt.verdict)
			}
			if out.dst != tt.dst {
				t.Errorf("destination %s, want %s", out.dst, tt.dst)
			}
			if out.src != tt.pkt.src {
				t.Errorf("source rewritten to %s", out.src)
			}
			ev := e.event(t, func(ev Event) bool { return ev.Reason == tt.reason })
			if ev.Destination != tt.dst {
				t.Errorf("event destination %s, want %s", ev.Destination, tt.dst)
			}
			if dropped := tt.reason.IsDrop(); ev.New == dropped {
				t.Errorf("event new=%v on a packet dropped=%v: %s", ev.New, dropped, ev)
			}
			if tt.service {
				if ev.Frontend != tt.pkt.dst {
					t.Errorf("event frontend %s, want %s", ev.Frontend, tt.pkt.dst)
				}
				if ev.Service == "" {
					t.Errorf("event without service name: %s", ev)
				}
				if ev.BackendCluster != tt.backend {
					t.Errorf("event backend cluster %d, want %d: %s", ev.BackendCluster, tt.backend, ev)
				}
			}
			if tt.tunnel.IsValid() {
				if ev.Tunnel != monitor.TunnelTx || ev.TunnelEndpoint != tt.tunnel || ev.SourceIdentity != clientIdentity {
					t.Errorf("tunnel %s to %s with VNI %d, want to-tunnel %s and %d", ev.Tunnel, ev.TunnelEndpoint, ev.SourceIdentity, tt.tunnel, clientIdentity)
				}
			} else if ev.Tunnel != monitor.NoTunnel {
				t.Errorf("event crosses the tunnel (%s): %s", ev.Tunnel, ev)
			}
		})
	}

	counters, err := e.d.Counters()
	if err != nil {
		t.Fatal(err)
	}
	if c := counters[ReasonNoBackend]; c.Packets != 1 {
		t.Errorf("no-backend counter %d, want 1", c.Packets)
	}
	if c := counters[ReasonForwardedTunnel]; c.Packets != 2 {
		t.Errorf("tunnel counter %d, want 2", c.Packets)
	}
}

func TestBackendSelection(t *testing.T) {
	e := newProgEnv(t, Options{Trace: true})
	s := baseState()
	var backends []state.Backend
	for i := range 10 {
		backends = append(backends, backend(netip.AddrFrom4([4]byte{10, 0, 3, byte(10 + i)}), 8080, state.TCP, 1))
	}
	s.Services = []state.Service{{Name: "default/spread", Frontend: state.Frontend{IP: vip, Port: 80, Protocol: state.TCP}, Backends: backends}}
	e.apply(t, s)

	t.Run("spread over all backends", func(t *testing.T) {
		const conns = 2000
		hits := map[netip.Addr]int{}
		for i := range conns {
			_, out := e.fromClient(t, tcp(clientIP, vip, uint16(10000+i), 80, tcpSYN))
			hits[out.dst.Addr()]++
		}
		if len(hits) != len(backends) {
			t.Fatalf("%d backends chosen, want %d: %v", len(hits), len(backends), hits)
		}
		// Binomial(2000, 0.1): mean 200, sd ≈ 13.4; 120..280 is ±6 sd.
		for a, n := range hits {
			if n < 120 || n > 280 {
				t.Errorf("backend %s got %d of %d connections", a, n, conns)
			}
		}
	})

	t.Run("a connection stays on its backend", func(t *testing.T) {
		_, first := e.fromClient(t, tcp(clientIP, vip, 30000, 80, tcpSYN))
		for range 20 {
			_, out := e.fromClient(t, tcp(clientIP, vip, 30000, 80, tcpACK))
			if out.dst != first.dst {
				t.Fatalf("connection moved from %s to %s", first.dst, out.dst)
			}
		}
		// The other backends go away and ours terminates: it keeps the
		// connection, but a new one cannot pick it.
		chosen := first.dst.Addr()
		s2 := baseState()
		var next []state.Backend
		for _, b := range backends {
			if b.IP == chosen {
				b.State = state.BackendTerminating
				next = append(next, b)
			}
		}
		fresh := backend(netip.MustParseAddr("10.0.4.1"), 8080, state.TCP, 1)
		next = append(next, fresh)
		s2.Services = []state.Service{{Name: "default/spread", Frontend: state.Frontend{IP: vip, Port: 80, Protocol: state.TCP}, Backends: next}}
		e.apply(t, s2)
		_, out := e.fromClient(t, tcp(clientIP, vip, 30000, 80, tcpACK))
		if out.dst != first.dst {
			t.Fatalf("established connection moved from %s to %s after backend change", first.dst, out.dst)
		}
		for i := range 50 {
			_, out := e.fromClient(t, tcp(clientIP, vip, uint16(31000+i), 80, tcpSYN))
			if out.dst.Addr() != fresh.IP {
				t.Fatalf("new connection went to %s, want only the active backend %s", out.dst, fresh.IP)
			}
		}
		// A new connection that reuses the old one's tuple (the client
		// recycled its port) is a new connection: it must not inherit the
		// terminating backend from the old conntrack entry.
		_, out = e.fromClient(t, tcp(clientIP, vip, 30000, 80, tcpSYN))
		if out.dst.Addr() != fresh.IP {
			t.Fatalf("a new connection on a reused tuple went to the terminating %s, want %s", out.dst, fresh.IP)
		}
		for range 5 {
			_, out := e.fromClient(t, tcp(clientIP, vip, 30000, 80, tcpACK))
			if out.dst.Addr() != fresh.IP {
				t.Fatalf("the new connection on a reused tuple moved to %s", out.dst)
			}
		}
		// Once the backend is removed entirely, the connection is
		// rebalanced to a live one.
		s3 := baseState()
		s3.Services = []state.Service{{Name: "default/spread", Frontend: state.Frontend{IP: vip, Port: 80, Protocol: state.TCP}, Backends: []state.Backend{fresh}}}
		e.apply(t, s3)
		_, out = e.fromClient(t, tcp(clientIP, vip, 30000, 80, tcpACK))
		if out.dst.Addr() != fresh.IP {
			t.Fatalf("connection to a removed backend went to %s, want %s", out.dst, fresh.IP)
		}
	})
}

func TestReverseNAT(t *testing.T) {
	e := newProgEnv(t, Options{Trace: true})
	s := baseState()
	s.Services = []state.Service{
		{Name: "default/local", Frontend: state.Frontend{IP: vip, Port: 80, Protocol: state.TCP},
			Backends: []state.Backend{backend(serverIP, 8080, state.TCP, 1)}},
		{Name: "default/remote", Frontend: state.Frontend{IP: vip, Port: 81, Protocol: state.UDP},
			Backends: []state.Backend{backend(remoteIP, 9090, state.UDP, 1)}},
	}
	e.apply(t, s)

	t.Run("local backend reply via from_container", func(t *testing.T) {
		if ret, _ := e.fromClient(t, tcp(clientIP, vip, 41000, 80, tcpSYN)); ret != tcActRedirect {
			t.Fatalf("request verdict %d", ret)
		}
		ret, raw := e.run(t, e.d.pod.FromContainer, "ep2h", tcp(serverIP, clientIP, 8080, 41000, tcpSYN|tcpACK))
		out, err := parseTestPacket(raw)
		if err != nil {
			t.Fatal(err)
		}
		if ret != tcActRedirect {
			t.Fatalf("reply verdict %d, want redirect", ret)
		}
		if out.src != ap(vip, 80) || out.dst != ap(clientIP, 41000) {
			t.Fatalf("reply %s -> %s, want from %s", out.src, out.dst, ap(vip, 80))
		}
	})

	t.Run("remote backend reply via to_container", func(t *testing.T) {
		if ret, out := e.fromClient(t, udp(clientIP, vip, 41001, 81)); ret != tcActRedirect || out.dst != ap(remoteIP, 9090) {
			t.Fatalf("request verdict %d to %s", ret, out.dst)
		}
		ret, raw := e.run(t, e.d.pod.ToContainer, "ep1h", udp(remoteIP, clientIP, 9090, 41001))
		out, err := parseTestPacket(raw)
		if err != nil {
			t.Fatal(err)
		}
		if ret != tcActOK {
			t.Fatalf("reply verdict %d, want pass", ret)
		}
		if out.src != ap(vip, 81) {
			t.Fatalf("reply from %s, want %s", out.src, ap(vip, 81))
		}
	})

	t.Run("unrelated packet from a backend is not rewritten", func(t *testing.T) {
		_, raw := e.run(t, e.d.pod.ToContainer, "ep1h", udp(remoteIP, clientIP, 9090, 41999))
		out, err := parseTestPacket(raw)
		if err != nil {
			t.Fatal(err)
		}
		if out.src != ap(remoteIP, 9090) {
			t.Fatalf("source rewritten to %s", out.src)
		}
	})
}

func TestPolicy(t *testing.T) {
	e := newProgEnv(t, Options{Trace: true})
	s := baseState()
	// Client: egress only to the remote identity on TCP 80-90 and to anyone
	// on UDP 53. Server: ingress only from the client identity on UDP.
	s.Endpoints[0].Policy = &state.EndpointPolicy{EgressEnforced: true, Allow: []state.PolicyKey{
		{Direction: state.Egress, Identity: remoteIdentity, Protocol: state.TCP, Port: 80, EndPort: 90},
		{Direction: state.Egress, Identity: 0, Protocol: state.UDP, Port: 53},
		{Direction: state.Egress, Identity: serverIdentity, Protocol: state.ProtoAny},
	}}
	s.Endpoints[1].Policy = &state.EndpointPolicy{IngressEnforced: true, Allow: []state.PolicyKey{
		{Direction: state.Ingress, Identity: clientIdentity, Protocol: state.UDP},
	}}
	e.apply(t, s)

	tests := []struct {
		name    string
		prog    *ebpf.Program
		ifname  string
		pkt     testPacket
		verdict uint32
		drop    Reason
	}{
		{"egress allowed identity and port", e.d.pod.FromContainer, "ep1h", tcp(clientIP, remoteIP, 42000, 85, tcpSYN), tcActRedirect, 0},
		{"egress range start", e.d.pod.FromContainer, "ep1h", tcp(clientIP, remoteIP, 42001, 80, tcpSYN), tcActRedirect, 0},
		{"egress range end", e.d.pod.FromContainer, "ep1h", tcp(clientIP, remoteIP, 42002, 90, tcpSYN), tcActRedirect, 0},
		{"egress port outside range", e.d.pod.FromContainer, "ep1h", tcp(clientIP, remoteIP, 42003, 91, tcpSYN), tcActShot, ReasonPolicyEgress},
		{"egress wrong protocol", e.d.pod.FromContainer, "ep1h", udp(clientIP, remoteIP, 42004, 85), tcActShot, ReasonPolicyEgress},
		{"egress any identity on UDP 53", e.d.pod.FromContainer, "ep1h", udp(clientIP, worldIP, 42005, 53), tcActOK, 0},
		{"egress other identity denied", e.d.pod.FromContainer, "ep1h", tcp(clientIP, foreignIP, 42006, 85, tcpSYN), tcActShot, ReasonPolicyEgress},
		{"egress world denied", e.d.pod.FromContainer, "ep1h", tcp(clientIP, worldIP, 42007, 443, tcpSYN), tcActShot, ReasonPolicyEgress},
		{"ingress allowed identity and protocol", e.d.pod.FromContainer, "ep1h", udp(clientIP, serverIP, 42008, 7000), tcActRedirect, 0},
		{"ingress wrong protocol", e.d.pod.FromContainer, "ep1h", tcp(clientIP, serverIP, 42009, 7000, tcpSYN), tcActShot, ReasonPolicyIngress},
		{"ingress other identity via host stack", e.d.pod.ToContainer, "ep2h", udp(remoteIP, serverIP, 42010, 7000), tcActShot, ReasonPolicyIngress},
		{"no policy allows", e.d.pod.ToContainer, "ep1h", tcp(foreignIP, clientIP, 42011, 22, tcpSYN), tcActOK, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e.drainEvents()
			ret, _ := e.run(t, tt.prog, tt.ifname, tt.pkt)
			if ret != tt.verdict {
				t.Fatalf("verdict %d, want %d", ret, tt.verdict)
			}
			if tt.drop != 0 {
				ev := e.event(t, func(ev Event) bool { return ev.Verdict == Dropped })
				if ev.Reason != tt.drop {
					t.Fatalf("drop reason %s, want %s", ev.Reason, tt.drop)
				}
			}
		})
	}

	t.Run("replies pass enforced ingress", func(t *testing.T) {
		// The server opens a connection to a remote pod (its egress is not
		// enforced); the reply comes back through the host stack although
		// ingress allows nothing from that identity.
		if ret, _ := e.run(t, e.d.pod.FromContainer, "ep2h", tcp(serverIP, remoteIP, 43000, 443, tcpSYN)); ret != tcActRedirect {
			t.Fatalf("request verdict %d", ret)
		}
		if ret, _ := e.run(t, e.d.pod.ToContainer, "ep2h", tcp(remoteIP, serverIP, 443, 43000, tcpSYN|tcpACK)); ret != tcActOK {
			t.Fatalf("reply verdict %d, want pass", ret)
		}
		if ret, _ := e.run(t, e.d.pod.ToContainer, "ep2h", tcp(remoteIP, serverIP, 443, 43001, tcpSYN)); ret != tcActShot {
			t.Fatalf("unsolicited packet verdict %d, want drop", ret)
		}
	})

	t.Run("policy change applies", func(t *testing.T) {
		s.Endpoints[0].Policy.Allow = append(s.Endpoints[0].Policy.Allow, state.PolicyKey{Direction: state.Egress, Identity: foreignIdentity, Protocol: state.TCP, Port: 85})
		e.apply(t, s)
		if ret, _ := e.run(t, e.d.pod.FromContainer, "ep1h", tcp(clientIP, foreignIP, 42100, 85, tcpSYN)); ret != tcActRedirect {
			t.Fatalf("newly allowed: verdict %d", ret)
		}
		s.Endpoints[0].Policy = nil
		e.apply(t, s)
		if ret, _ := e.run(t, e.d.pod.FromContainer, "ep1h", tcp(clientIP, worldIP, 42101, 443, tcpSYN)); ret != tcActOK {
			t.Fatalf("policy removed: verdict %d", ret)
		}
	})
}

func TestForwarding(t *testing.T) {
	tests := []struct {
		name    string
		routing state.RoutingMode
		pkt     testPacket
		verdict uint32
		reason  Reason
		dstID   uint32
	}{
		{"local pod", state.Tunnel, tcp(clientIP, serverIP, 44000, 80, tcpSYN), tcActRedirect, ReasonForwardedLocal, serverIdentity},
		{"remote pod tunnelled", state.Tunnel, tcp(clientIP, remoteIP, 44001, 80, tcpSYN), tcActRedirect, ReasonForwardedTunnel, remoteIdentity},
		{"remote pod native", state.Native, tcp(clientIP, remoteIP, 44002, 80, tcpSYN), tcActOK, ReasonForwardedStack, remoteIdentity},
		{"unknown destination", state.Tunnel, tcp(clientIP, worldIP, 44003, 80, tcpSYN), tcActOK, ReasonForwardedStack, state.IdentityWorld},
		{"ICMP to remote pod", state.Tunnel, testPacket{src: ap(clientIP, 0), dst: ap(remoteIP, 0)}, tcActRedirect, ReasonForwardedTunnel, remoteIdentity},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newProgEnv(t, Options{Trace: true, Routing: tt.routing})
			e.apply(t, baseState())
			ret, out := e.fromClient(t, tt.pkt)
			if ret != tt.verdict {
				t.Fatalf("verdict %d, want %d", ret, tt.verdict)
			}
			if out.dst != tt.pkt.dst || out.src != tt.pkt.src {
				t.Errorf("addresses rewritten: %s -> %s", out.src, out.dst)
			}
			ev := e.event(t, func(ev Event) bool { return ev.Verdict == Forwarded && ev.Reason < ReasonService })
			if ev.Reason != tt.reason || ev.DestinationIdentity != tt.dstID || ev.SourceIdentity != clientIdentity {
				t.Errorf("event %s, want reason %s, identities %d -> %d", ev, tt.reason, clientIdentity, tt.dstID)
			}
			if tt.reason == ReasonForwardedLocal {
				want := e.d.prog.endpoints[2].value.Mac
				if out.srcMAC != want {
					t.Errorf("delivered from MAC %x, want the host veth's %x", out.srcMAC, want)
				}
			}
		})
	}
}

func TestRejectedPackets(t *testing.T) {
	e := newProgEnv(t, Options{Trace: true})
	e.apply(t, baseState())
	arp := []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 2, 0, 0, 0, 0, 1, 0x08, 0x06}
	arp = append(arp, make([]byte, 28)...)

	t.Run("spoofed source", func(t *testing.T) {
		e.drainEvents()
		ret, _ := e.run(t, e.d.pod.FromContainer, "ep1h", tcp(serverIP, remoteIP, 1, 2, tcpSYN))
		if ret != tcActShot {
			t.Fatalf("verdict %d, want drop", ret)
		}
		if ev := e.event(t, func(ev Event) bool { return ev.Verdict == Dropped }); ev.Reason != ReasonInvalidSource {
			t.Fatalf("reason %s", ev.Reason)
		}
	})
	t.Run("unknown source", func(t *testing.T) {
		if ret, _ := e.run(t, e.d.pod.FromContainer, "ep1h", tcp(worldIP, remoteIP, 1, 2, tcpSYN)); ret != tcActShot {
			t.Fatalf("verdict %d, want drop", ret)
		}
	})
	t.Run("overlay packet without tunnel key", func(t *testing.T) {
		e.drainEvents()
		if ret, _ := e.run(t, e.d.overlay.FromOverlay, "ep1h", tcp(remoteIP, clientIP, 1, 2, tcpSYN)); ret != tcActShot {
			t.Fatalf("verdict %d, want drop", ret)
		}
		if ev := e.event(t, func(ev Event) bool { return ev.Verdict == Dropped }); ev.Reason != ReasonNoTunnelKey {
			t.Fatalf("reason %s", ev.Reason)
		}
	})
	t.Run("ARP passes", func(t *testing.T) {
		var ctx [192]byte
		e.ns.mustDo(t, func() error {
			ret, err := e.d.pod.FromContainer.Run(&ebpf.RunOptions{Data: arp, Context: ctx})
			if err == nil && ret != tcActOK {
				t.Errorf("ARP verdict %d, want pass", ret)
			}
			return err
		})
	})
}
