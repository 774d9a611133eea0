package datapath

import (
	"errors"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"

	"github.com/meshbed/meshbed/datapath/state"
	"github.com/meshbed/meshbed/internal/testenv"
)

func TestApplyValidation(t *testing.T) {
	testenv.Privileged(t)
	fe := state.Frontend{IP: vip, Port: 80, Protocol: state.TCP}
	good := backend(remoteIP, 8080, state.TCP, 1)
	tests := []struct {
		name   string
		mutate func(s *state.State)
		want   string // substring naming the item and the problem
	}{
		{"frontend port 0", func(s *state.State) {
			s.Services = []state.Service{{Name: "ns/a", Frontend: state.Frontend{IP: vip, Protocol: state.TCP}}}
		}, `service "ns/a" frontend 10.96.0.10:0/TCP: port 0`},
		{"frontend invalid address", func(s *state.State) {
			s.Services = []state.Service{{Name: "ns/a", Frontend: state.Frontend{Port: 80, Protocol: state.TCP}}}
		}, `service "ns/a"`},
		{"frontend IPv6", func(s *state.State) {
			s.Services = []state.Service{{Name: "ns/a", Frontend: state.Frontend{IP: netip.MustParseAddr("fd00::1"), Port: 80, Protocol: state.TCP}}}
		}, "only IPv4"},
		{"backend cluster 0", func(s *state.State) {
			b := good
			b.ClusterID = 0
			s.Services = []state.Service{{Name: "ns/a", Frontend: fe, Backends: []state.Backend{b}}}
		}, "backend 10.0.2.5:8080/TCP@0: cluster ID 0 out of range"},
		{"backend cluster too large", func(s *state.State) {
			b := good
			b.ClusterID = 512
			s.Services = []state.Service{{Name: "ns/a", Frontend: fe, Backends: []state.Backend{b}}}
		}, "cluster ID 512 out of range"},
		{"backend port 0", func(s *state.State) {
			b := good
			b.Port = 0
			s.Services = []state.Service{{Name: "ns/a", Frontend: fe, Backends: []state.Backend{b}}}
		}, "backend 10.0.2.5:0/TCP@1: port 0"},
		{"backend invalid address", func(s *state.State) {
			b := good
			b.IP = netip.Addr{}
			s.Services = []state.Service{{Name: "ns/a", Frontend: fe, Backends: []state.Backend{b}}}
		}, "invalid address"},
		{"backend protocol mismatch", func(s *state.State) {
			b := good
			b.Protocol = state.UDP
			s.Services = []state.Service{{Name: "ns/a", Frontend: fe, Backends: []state.Backend{b}}}
		}, "differs from the frontend"},
		{"duplicate frontend", func(s *state.State) {
			s.Services = []state.Service{{Name: "ns/a", Frontend: fe}, {Name: "ns/b", Frontend: fe}}
		}, `duplicate frontend (also service "ns/a")`},
		{"endpoint ID 0", func(s *state.State) {
			s.Endpoints[0].ID = 0
		}, "endpoint 0 (10.0.1.2): endpoint ID 0"},
		{"endpoint invalid address", func(s *state.State) {
			s.Endpoints[0].IP = netip.Addr{}
		}, "endpoint 1 (invalid IP): invalid address"},
		{"endpoint identity 0", func(s *state.State) {
			s.Endpoints[0].Identity = 0
		}, "endpoint 1 (10.0.1.2): identity 0"},
		{"duplicate endpoint address", func(s *state.State) {
			s.Endpoints[1].IP = clientIP
		}, "address also used by endpoint 1"},
		{"ipcache identity too large", func(s *state.State) {
			s.IPCache[0].Identity = 1 << 24
		}, "ipcache entry 10.0.1.2/32: identity 16777216 out of range"},
		{"ipcache invalid prefix", func(s *state.State) {
			s.IPCache[0].Prefix = netip.Prefix{}
		}, "invalid prefix"},
		{"policy end port below port", func(s *state.State) {
			s.Endpoints[0].Policy = &state.EndpointPolicy{IngressEnforced: true, Allow: []state.PolicyKey{{Protocol: state.TCP, Port: 90, EndPort: 80}}}
		}, "end port below port"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newProgEnv(t, Options{Trace: true})
			s := baseState()
			tt.mutate(s)
			var err error
			e.ns.mustDo(t, func() error { err = e.d.Apply(s); return nil })
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Apply error %v, want one containing %q", err, tt.want)
			}
			// Nothing reached a map.
			for name, m := range map[string]*ebpf.Map{"endpoints": e.d.pod.Endpoints, "ipcache": e.d.pod.Ipcache, "services": e.d.pod.Services} {
				if n := countEntries(t, m); n != 0 {
					t.Errorf("%s has %d entries after a rejected Apply", name, n)
				}
			}
		})
	}
}

func countEntries(t *testing.T, m *ebpf.Map) int {
	t.Helper()
	n := 0
	var k, v []byte
	it := m.Iterate()
	for it.Next(&k, &v) {
		n++
	}
	if err := it.Err(); err != nil {
		t.Fatal(err)
	}
	return n
}

func TestApplyReconciles(t *testing.T) {
	e := newProgEnv(t, Options{Trace: true})
	fe := state.Frontend{IP: vip, Port: 80, Protocol: state.TCP}
	b1 := backend(serverIP, 8080, state.TCP, 1)
	b2 := backend(remoteIP, 8080, state.TCP, 1)
	b3 := backend(foreignIP, 8080, state.TCP, 2)
	s := baseState()
	s.Services = []state.Service{{Name: "default/web", Frontend: fe, Backends: []state.Backend{b1, b2}}}
	e.apply(t, s)

	dump := func() []ServiceEntry {
		t.Helper()
		svcs, err := e.d.DumpServices()
		if err != nil {
			t.Fatal(err)
		}
		return svcs
	}
	backendsOf := func(se ServiceEntry) []state.Backend {
		var out []state.Backend
		for _, b := range se.Backends {
			out = append(out, b.Backend)
		}
		return out
	}

	first := dump()
	if len(first) != 1 || first[0].Name != "default/web" || first[0].Frontend != fe {
		t.Fatalf("dump %+v", first)
	}
	if got := backendsOf(first[0]); !slices.Equal(got, []state.Backend{b1, b2}) {
		t.Fatalf("backends %v, want %v", got, []state.Backend{b1, b2})
	}

	t.Run("idempotent", func(t *testing.T) {
		e.apply(t, s)
		if again := dump(); !slices.EqualFunc(again, first, func(a, b ServiceEntry) bool {
			return a.RevNATID == b.RevNATID && slices.Equal(a.Backends, b.Backends)
		}) {
			t.Fatalf("re-applying changed the maps: %+v -> %+v", first, again)
		}
	})

	t.Run("incremental keeps slots", func(t *testing.T) {
		// b1 goes, b3 (other cluster) comes: b2 stays in its slot with its ID.
		s.Services[0].Backends = []state.Backend{b2, b3}
		e.apply(t, s)
		got := dump()[0]
		if got.Backends[1] != first[0].Backends[1] {
			t.Fatalf("kept backend moved: %+v, was %+v", got.Backends, first[0].Backends)
		}
		if got.Backends[0].Backend != b3 || got.Backends[0].ClusterID != 2 {
			t.Fatalf("new backend %+v, want %v", got.Backends[0], b3)
		}
		if n := countEntries(t, e.d.pod.Backends); n != 2 {
			t.Fatalf("%d backends in the map, want 2 (the removed one deleted)", n)
		}
	})

	t.Run("terminating backend leaves its slot but stays", func(t *testing.T) {
		b3t := b3
		b3t.State = state.BackendTerminating
		s.Services[0].Backends = []state.Backend{b2, b3t}
		e.apply(t, s)
		got := dump()[0]
		if len(got.Backends) != 1 || got.Backends[0].Backend != b2 {
			t.Fatalf("slots %+v, want only %v", got.Backends, b2)
		}
		if n := countEntries(t, e.d.pod.Backends); n != 2 {
			t.Fatalf("%d backends in the map, want 2 (terminating kept)", n)
		}
	})

	t.Run("ipcache dump", func(t *testing.T) {
		got, err := e.d.DumpIPCache()
		if err != nil {
			t.Fatal(err)
		}
		want := slices.Clone(s.IPCache)
		slices.SortFunc(want, func(a, b state.IPCacheEntry) int { return a.Prefix.Addr().Compare(b.Prefix.Addr()) })
		if !slices.Equal(got, want) {
			t.Fatalf("ipcache %v, want %v", got, want)
		}
	})

	t.Run("removal", func(t *testing.T) {
		e.apply(t, &state.State{})
		for name, m := range map[string]*ebpf.Map{
			"services": e.d.pod.Services, "backends": e.d.pod.Backends, "revnat": e.d.pod.Revnat,
			"ipcache": e.d.pod.Ipcache, "endpoints": e.d.pod.Endpoints, "policy": e.d.pod.Policy,
		} {
			if n := countEntries(t, m); n != 0 {
				t.Errorf("%s still has %d entries", name, n)
			}
		}
		for _, ifname := range []string{"ep1h", "ep2h"} {
			if n := attachedPrograms(t, e, ifname); n != 0 {
				t.Errorf("%d programs still attached to %s", n, ifname)
			}
		}
	})
}

// attachedPrograms counts tcx programs on ifname (both directions).
func attachedPrograms(t *testing.T, e *progEnv, ifname string) int {
	t.Helper()
	n := 0
	e.ns.mustDo(t, func() error {
		for _, at := range []ebpf.AttachType{ebpf.AttachTCXIngress, ebpf.AttachTCXEgress} {
			res, err := link.QueryPrograms(link.QueryOptions{Target: e.ifindex[ifname], Attach: at})
			if err != nil {
				return err
			}
			n += len(res.Programs)
		}
		return nil
	})
	return n
}

func TestCloseDetaches(t *testing.T) {
	e := newProgEnv(t, Options{Trace: true})
	e.apply(t, baseState())
	if n := attachedPrograms(t, e, "ep1h"); n != 2 {
		t.Fatalf("%d programs on ep1h, want 2", n)
	}
	if err := e.d.Close(); err != nil {
		t.Fatal(err)
	}
	for _, ifname := range []string{"ep1h", "ep2h"} {
		if n := attachedPrograms(t, e, ifname); n != 0 {
			t.Errorf("%d programs left on %s after Close", n, ifname)
		}
	}
	var n int
	e.ns.mustDo(t, func() error {
		res, err := link.QueryPrograms(link.QueryOptions{Target: e.vxlan, Attach: ebpf.AttachTCXIngress})
		n = len(res.Programs)
		return err
	})
	if n != 0 {
		t.Errorf("%d programs left on the VXLAN device after Close", n)
	}
}

func TestApplyMapFull(t *testing.T) {
	testenv.Privileged(t)
	e := newProgEnv(t, Options{Trace: true, mapSizes: map[string]uint32{"services": 8, "backends": 7}})
	feA := state.Frontend{IP: vip, Port: 80, Protocol: state.TCP}
	feB := state.Frontend{IP: vip, Port: 81, Protocol: state.TCP}
	mk := func(n int, third byte) []state.Backend {
		var out []state.Backend
		for i := range n {
			out = append(out, backend(netip.AddrFrom4([4]byte{10, 0, third, byte(i + 1)}), 8080, state.TCP, 1))
		}
		return out
	}
	s := baseState()
	s.Services = []state.Service{
		{Name: "ns/a", Frontend: feA, Backends: mk(3, 5)},
		{Name: "ns/b", Frontend: feB, Backends: mk(3, 6)},
	}
	e.apply(t, s) // 8 service entries, 6 backends: both maps (nearly) full

	check := func(t *testing.T, fe state.Frontend, want []state.Backend) {
		t.Helper()
		svcs, err := e.d.DumpServices()
		if err != nil {
			t.Fatal(err)
		}
		for _, se := range svcs {
			if se.Frontend != fe {
				continue
			}
			var got []state.Backend
			for _, b := range se.Backends {
				got = append(got, b.Backend)
			}
			if !slices.Equal(got, want) {
				t.Fatalf("%s backends %v, want %v", fe, got, want)
			}
			return
		}
		t.Fatalf("%s not in the map", fe)
	}

	tests := []struct {
		name     string
		backends []state.Backend
		mapName  string
	}{
		// One more backend fits the backends map, but its slot does not
		// fit the services map.
		{"services map full", append(mk(3, 5), backend(netip.MustParseAddr("10.0.7.1"), 8080, state.TCP, 1)), "services"},
		// Two more backends do not fit the backends map.
		{"backends map full", append(mk(3, 5), mk(2, 8)...), "backends"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s.Services[0].Backends = tt.backends
			var err error
			e.ns.mustDo(t, func() error { err = e.d.Apply(s); return nil })
			if !errors.Is(err, ErrMapFull) {
				t.Fatalf("Apply error %v, want ErrMapFull", err)
			}
			if !strings.Contains(err.Error(), `service "ns/a"`) {
				t.Errorf("error %q does not name the service", err)
			}
			if e.d.MapFullErrors()[tt.mapName] == 0 {
				t.Errorf("map-full counter of %s not incremented: %v", tt.mapName, e.d.MapFullErrors())
			}
			// Nothing half-applied: a keeps its earlier backends, b is intact,
			// and traffic to a still goes to one of them.
			check(t, feA, mk(3, 5))
			check(t, feB, mk(3, 6))
			_, out := e.fromClient(t, tcp(clientIP, vip, 50000, 80, tcpSYN))
			if !slices.ContainsFunc(mk(3, 5), func(b state.Backend) bool { return b.IP == out.dst.Addr() }) {
				t.Fatalf("traffic went to %s", out.dst)
			}
		})
	}

	t.Run("room made, change goes through", func(t *testing.T) {
		s.Services = s.Services[:1]
		s.Services[0].Backends = mk(5, 5)
		e.apply(t, s)
		check(t, feA, mk(5, 5))
	})
}

func TestApplyReattachesRecreatedInterface(t *testing.T) {
	e := newProgEnv(t, Options{Trace: true})
	e.apply(t, baseState())
	e.ns.mustDo(t, func() error {
		l, err := netlink.LinkByName("ep1h")
		if err != nil {
			return err
		}
		if err := netlink.LinkDel(l); err != nil {
			return err
		}
		nl, err := addVeth("ep1h", "ep1p")
		if err != nil {
			return err
		}
		e.ifindex["ep1h"] = nl.Attrs().Index
		return nil
	})
	e.apply(t, baseState())
	if n := attachedPrograms(t, e, "ep1h"); n != 2 {
		t.Fatalf("%d programs on the re-created interface, want 2", n)
	}
	// The endpoint map follows the new ifindex: the source check passes.
	if ret, _ := e.fromClient(t, tcp(clientIP, serverIP, 1000, 80, tcpSYN)); ret != tcActRedirect {
		t.Fatalf("verdict %d from the re-created interface", ret)
	}

	t.Run("missing interface", func(t *testing.T) {
		s := baseState()
		s.Endpoints[1].Interface = "nosuch0"
		var err error
		e.ns.mustDo(t, func() error { err = e.d.Apply(s); return nil })
		if err == nil || !strings.Contains(err.Error(), `endpoint 2 (10.0.1.3): interface "nosuch0" not found`) {
			t.Fatalf("Apply error %v", err)
		}
	})
}
