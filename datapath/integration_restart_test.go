package datapath_test

import (
	"testing"

	"github.com/meshbed/meshbed/datapath"
	"github.com/meshbed/meshbed/datapath/netns/netnstest"
	"github.com/meshbed/meshbed/datapath/state"
)

// restartSetup is a mesh whose pods serve, with a TCP connection from a
// (node1) through the ClusterIP to a backend on node2 (c or d).
type restartSetup struct {
	m            *mesh
	conn         *conn
	first, other string // the connection's backend, the other backend
}

func newRestartSetup(t *testing.T, mode state.RoutingMode, pin string) *restartSetup {
	t.Helper()
	m := newMesh(t, mode, func(i int, o *datapath.Options) {
		if i == 0 {
			o.PinPath = pin
		}
	})
	for _, p := range m.pods {
		p.serve(t, 8080)
	}
	m.apply(t, services(m.pods["c"], m.pods["d"]), nil)
	c, err := m.pods["a"].dial(clusterIP.String() + ":80")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.c.Close() })
	first, err := c.ask()
	if err != nil {
		t.Fatal(err)
	}
	other := map[string]string{"c": "d", "d": "c"}[first]
	if other == "" {
		t.Fatalf("connection answered by %q, want c or d", first)
	}
	return &restartSetup{m: m, conn: c, first: first, other: other}
}

// restart does what a restarted meshbed-agent does to node1's datapath:
// Close, New with the same options, attach the overlay, Apply.
func (r *restartSetup) restart(t *testing.T, opts datapath.Options, between func()) {
	t.Helper()
	n1 := r.m.nodes[0]
	if err := n1.dp.Close(); err != nil {
		t.Fatal(err)
	}
	if between != nil {
		between()
	}
	dp, err := datapath.New(opts)
	if err != nil {
		t.Fatal(err)
	}
	n1.dp = dp // closed by newMesh's cleanup
	if r.m.mode == state.Tunnel {
		if err := n1.ns.Do(func() error { return dp.AttachOverlay(n1.vxlan.Name) }); err != nil {
			t.Fatal(err)
		}
	}
}

// askSame asks n times on the established connection and fails unless
// want answers every time.
func (r *restartSetup) askSame(t *testing.T, n int, want string) {
	t.Helper()
	for range n {
		if got, err := r.conn.ask(); err != nil || got != want {
			t.Fatalf("established connection answered %q, %v; want %q", got, err, want)
		}
	}
}

// terminate makes the connection's backend terminating on every node: new
// connections can no longer choose it, so only a connection tracking entry
// that survived with a valid backend ID keeps the connection on it.
func (r *restartSetup) terminate(t *testing.T) {
	t.Helper()
	first := r.m.pods[r.first]
	r.m.apply(t, servicesWith(func(p *testPod) state.BackendState {
		if p == first {
			return state.BackendTerminating
		}
		return state.BackendActive
	}, r.m.pods["c"], r.m.pods["d"]), nil)
}

// TestIntegrationAgentRestart restarts the datapath of the client's node
// under an established TCP connection through a ClusterIP to a backend on
// the other node, as a restarted meshbed-agent does, and checks that the
// connection carries on: while no datapath runs, after the restart with
// the same state, and after a change that only its connection tracking
// entry (with the backend ID it names) can survive.
func TestIntegrationAgentRestart(t *testing.T) {
	integration(t)
	for _, mode := range []state.RoutingMode{state.Tunnel, state.Native} {
		t.Run(modeName(mode), func(t *testing.T) {
			netnstest.CheckLeaks(t)
			pin := datapath.PinPathForTest(t)
			r := newRestartSetup(t, mode, pin)
			a := r.m.pods["a"]
			n1 := r.m.nodes[0]
			before, err := n1.dp.DumpServices()
			if err != nil {
				t.Fatal(err)
			}

			opts := datapath.Options{ClusterID: clusterID, Routing: mode, Trace: true, PinPath: pin}
			r.restart(t, opts, func() {
				// No agent: the pinned programs forward on the pinned maps.
				r.askSame(t, 3, r.first)
				askUntil(t, a, "c", "d")
			})
			if err := n1.ns.Do(func() error { return n1.dp.Apply(r.m.stateFor(n1, services(r.m.pods["c"], r.m.pods["d"]), nil)) }); err != nil {
				t.Fatal(err)
			}

			t.Run("the connection carries on", func(t *testing.T) {
				r.askSame(t, 5, r.first)
			})
			t.Run("services keep rev-NAT and backend IDs", func(t *testing.T) {
				after, err := n1.dp.DumpServices()
				if err != nil {
					t.Fatal(err)
				}
				if len(after) != len(before) {
					t.Fatalf("services after restart %+v, before %+v", after, before)
				}
				for i := range before {
					b, a := before[i], after[i]
					if a.Name != b.Name || a.Frontend != b.Frontend || a.RevNATID != b.RevNATID || len(a.Backends) != len(b.Backends) {
						t.Fatalf("service after restart %+v, before %+v", a, b)
					}
					for j := range b.Backends {
						if a.Backends[j] != b.Backends[j] {
							t.Fatalf("slot %d of %s: backend %d (%s), before %d (%s)", j+1, b.Name,
								a.Backends[j].ID, a.Backends[j].Backend, b.Backends[j].ID, b.Backends[j].Backend)
						}
					}
				}
			})
			t.Run("new connections use both backends", func(t *testing.T) {
				askUntil(t, a, "c", "d")
			})
			t.Run("the connection keeps a terminating backend", func(t *testing.T) {
				r.terminate(t)
				r.askSame(t, 5, r.first)
				for range 10 {
					if got, err := a.tcpAsk(clusterIP.String() + ":80"); err != nil || got != r.other {
						t.Fatalf("new connection answered %q, %v; want only %q", got, err, r.other)
					}
				}
			})
		})
	}

	// The same restart without pinning: connection tracking starts empty,
	// and the connection cannot survive its backend terminating. This is
	// what the checks above would see if pinning did not work.
	t.Run("unpinned restart loses the connection", func(t *testing.T) {
		netnstest.CheckLeaks(t)
		r := newRestartSetup(t, state.Tunnel, "")
		r.restart(t, datapath.Options{ClusterID: clusterID, Routing: state.Tunnel, Trace: true}, nil)
		r.terminate(t)
		if got, err := r.conn.ask(); err == nil && got == r.first {
			t.Fatalf("connection still answered by %q after an unpinned restart", got)
		}
	})
}
