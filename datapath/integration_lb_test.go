package datapath_test

import (
	"fmt"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/meshbed/meshbed/datapath"
	"github.com/meshbed/meshbed/datapath/netns/netnstest"
	"github.com/meshbed/meshbed/datapath/state"
)

var clusterIP = netip.MustParseAddr("10.96.0.10")

func (p *testPod) backend(proto state.Protocol, st state.BackendState) state.Backend {
	return state.Backend{IP: p.ep.IP, Port: 8080, Protocol: proto, ClusterID: clusterID, State: st}
}

func services(backends ...*testPod) []state.Service {
	return servicesWith(func(p *testPod) state.BackendState { return state.BackendActive }, backends...)
}

func servicesWith(st func(*testPod) state.BackendState, backends ...*testPod) []state.Service {
	tcp := state.Service{Name: "default/echo", Frontend: state.Frontend{IP: clusterIP, Port: 80, Protocol: state.TCP}}
	udp := state.Service{Name: "default/echo-udp", Frontend: state.Frontend{IP: clusterIP, Port: 80, Protocol: state.UDP}}
	for _, p := range backends {
		tcp.Backends = append(tcp.Backends, p.backend(state.TCP, st(p)))
		udp.Backends = append(udp.Backends, p.backend(state.UDP, st(p)))
	}
	return []state.Service{tcp, udp}
}

// askUntil asks the service over new connections until every name in want
// has answered (or 60 tries), failing on any other answer.
func askUntil(t *testing.T, client *testPod, want ...string) {
	t.Helper()
	seen := map[string]bool{}
	for range 60 {
		got, err := client.tcpAsk(clusterIP.String() + ":80")
		if err != nil {
			t.Fatalf("TCP to the ClusterIP: %v", err)
		}
		if !slices.Contains(want, got) {
			t.Fatalf("answer from %q, want one of %v", got, want)
		}
		seen[got] = true
		if len(seen) == len(want) {
			return
		}
	}
	t.Fatalf("only %v answered out of %v", seen, want)
}

func TestIntegrationService(t *testing.T) {
	integration(t)
	for _, mode := range []state.RoutingMode{state.Tunnel, state.Native} {
		t.Run(modeName(mode), func(t *testing.T) {
			netnstest.CheckLeaks(t)
			m := newMesh(t, mode)
			for _, p := range m.pods {
				p.serve(t, 8080)
			}
			a, b, c, d := m.pods["a"], m.pods["b"], m.pods["c"], m.pods["d"]
			m.apply(t, services(b, c), nil)

			t.Run("local and remote backends", func(t *testing.T) {
				askUntil(t, a, "b", "c")
				askUntil(t, d, "b", "c")
			})

			t.Run("UDP replies come from the ClusterIP", func(t *testing.T) {
				seen := map[string]bool{}
				for range 40 {
					got, from, err := a.udpAsk(clusterIP.String() + ":80")
					if err != nil {
						t.Fatal(err)
					}
					if from != netip.AddrPortFrom(clusterIP, 80) {
						t.Fatalf("answer from %s, want the ClusterIP", from)
					}
					seen[got] = true
				}
				if !seen["b"] || !seen["c"] {
					t.Fatalf("UDP answers only from %v", seen)
				}
			})

			t.Run("dump shows backends with their cluster", func(t *testing.T) {
				svcs, err := m.nodes[0].dp.DumpServices()
				if err != nil {
					t.Fatal(err)
				}
				if len(svcs) != 2 || svcs[0].Name != "default/echo" || len(svcs[0].Backends) != 2 {
					t.Fatalf("dump %+v", svcs)
				}
				for _, be := range svcs[0].Backends {
					if be.ClusterID != clusterID {
						t.Errorf("backend %v without its cluster", be)
					}
				}
			})

			t.Run("connection stays on its backend while backends change", func(t *testing.T) {
				conn, err := a.dial(clusterIP.String() + ":80")
				if err != nil {
					t.Fatal(err)
				}
				defer conn.c.Close()
				first, err := conn.ask()
				if err != nil {
					t.Fatal(err)
				}
				mine := m.pods[first]
				// Its backend terminates, the other one goes, d arrives.
				m.apply(t, servicesWith(func(p *testPod) state.BackendState {
					if p == mine {
						return state.BackendTerminating
					}
					return state.BackendActive
				}, mine, d), nil)
				for range 5 {
					if got, err := conn.ask(); err != nil || got != first {
						t.Fatalf("established connection answered %q, %v; want %q", got, err, first)
					}
				}
				for range 15 {
					if got, err := a.tcpAsk(clusterIP.String() + ":80"); err != nil || got != "d" {
						t.Fatalf("new connection answered %q, %v; want only d", got, err)
					}
				}
			})

			t.Run("removed backend gets no new connections", func(t *testing.T) {
				m.apply(t, services(c, d), nil)
				askUntil(t, a, "c", "d")
				m.apply(t, services(d), nil)
				for range 15 {
					if got, err := b.tcpAsk(clusterIP.String() + ":80"); err != nil || got != "d" {
						t.Fatalf("answer %q, %v; want only d", got, err)
					}
				}
			})

			t.Run("no backend", func(t *testing.T) {
				m.apply(t, services(), nil)
				if _, err := a.tcpAskTimeout(clusterIP.String()+":80", 300*time.Millisecond); err == nil {
					t.Fatal("connected to a service without backends")
				}
				ev := nextEvent(t, m.nodes[0].events, func(ev datapath.Event) bool { return ev.Verdict == datapath.Dropped })
				if ev.Reason != datapath.ReasonNoBackend || ev.Service != "default/echo" {
					t.Fatalf("drop event %s, want no-backend for default/echo", ev)
				}
			})
		})
	}
}

func (p *testPod) tcpAskTimeout(addr string, timeout time.Duration) (string, error) {
	ctx, cancel := contextWithTimeout(timeout)
	defer cancel()
	c, err := p.ns.Dial(ctx, nil, "tcp", addr)
	if err != nil {
		return "", err
	}
	defer c.Close()
	return (&conn{c: c, r: newReader(c)}).ask()
}

func TestIntegrationPolicy(t *testing.T) {
	integration(t)
	netnstest.CheckLeaks(t)
	m := newMesh(t, state.Tunnel)
	for _, p := range m.pods {
		p.serve(t, 8080)
	}
	a, b, c, d := m.pods["a"], m.pods["b"], m.pods["c"], m.pods["d"]
	cAddr := fmt.Sprintf("%s:8080", c.ep.IP)
	dAddr := fmt.Sprintf("%s:8080", d.ep.IP)
	const short = 400 * time.Millisecond

	// c accepts TCP 8080 from a only.
	policies := map[string]*state.EndpointPolicy{
		"c": {IngressEnforced: true, Allow: []state.PolicyKey{
			{Direction: state.Ingress, Identity: a.identity, Protocol: state.TCP, Port: 8080},
		}},
	}
	m.apply(t, nil, policies)

	if got, err := a.tcpAsk(cAddr); err != nil || got != "c" {
		t.Fatalf("allowed a -> c: %q, %v", got, err)
	}
	if _, err := b.tcpAskTimeout(cAddr, short); err == nil {
		t.Fatal("b reached c against c's ingress policy")
	}
	ev := nextEvent(t, m.nodes[1].events, func(ev datapath.Event) bool { return ev.Verdict == datapath.Dropped })
	if ev.Reason != datapath.ReasonPolicyIngress || ev.SourceIdentity != b.identity || ev.DestinationIdentity != c.identity {
		t.Fatalf("drop event %s, want ingress policy denial b -> c", ev)
	}
	if _, _, err := a.udpAskN(cAddr, 1, short); err == nil {
		t.Fatal("UDP a -> c passed a TCP-only policy")
	}

	// Allow b too, and restrict a's egress to c: a can no longer reach d.
	policies["c"].Allow = append(policies["c"].Allow, state.PolicyKey{Direction: state.Ingress, Identity: b.identity, Protocol: state.TCP, Port: 8080})
	policies["a"] = &state.EndpointPolicy{EgressEnforced: true, Allow: []state.PolicyKey{
		{Direction: state.Egress, Identity: c.identity, Protocol: state.ProtoAny},
	}}
	m.apply(t, nil, policies)
	if got, err := b.tcpAsk(cAddr); err != nil || got != "c" {
		t.Fatalf("newly allowed b -> c: %q, %v", got, err)
	}
	if got, err := a.tcpAsk(cAddr); err != nil || got != "c" {
		t.Fatalf("a -> c with a's egress policy: %q, %v", got, err)
	}
	if _, err := a.tcpAskTimeout(dAddr, short); err == nil {
		t.Fatal("a reached d against its egress policy")
	}
	// d may still reach a: a's ingress is not enforced, and replies to d
	// pass a's egress policy.
	if got, err := d.tcpAsk(fmt.Sprintf("%s:8080", a.ep.IP)); err != nil || got != "a" {
		t.Fatalf("d -> a: %q, %v", got, err)
	}
}
