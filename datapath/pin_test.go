package datapath

import (
	"bytes"
	"cmp"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/meshbed/meshbed/datapath/state"
	"github.com/meshbed/meshbed/internal/testenv"
)

var pinSeq atomic.Uint64

// PinPathForTest returns a pin path unique to the test: under
// /sys/fs/bpf/meshbed-test-<suffix> when a BPF filesystem is mounted there,
// otherwise on a private BPF filesystem mounted for the test. Cleanup (after
// the test's Datapaths are closed) uninstalls it and fails the test if
// anything is left. Exported for the external test package.
func PinPathForTest(t testing.TB) string {
	t.Helper()
	testenv.Privileged(t)
	base := DefaultBPFFS
	if ok, err := onBPFFS(base); err != nil || !ok {
		base = t.TempDir()
		if err := MountBPFFS(base); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			if err := unix.Unmount(base, unix.MNT_DETACH); err != nil {
				t.Errorf("unmount private BPF filesystem: %v", err)
			}
		})
	}
	path := filepath.Join(base, fmt.Sprintf("meshbed-test-%d-%d", os.Getpid(), pinSeq.Add(1)))
	t.Cleanup(func() {
		if err := Uninstall(path); err != nil {
			t.Errorf("uninstall %s: %v", path, err)
		}
		if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("pin path %s left behind (%v)", path, err)
		}
	})
	return path
}

// logBuffer collects a Datapath's log lines (and passes them to t.Log).
type logBuffer struct {
	t  testing.TB
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.t.Log(strings.TrimSpace(string(p)))
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func (l *logBuffer) logger() *slog.Logger {
	return slog.New(slog.NewTextHandler(io.Writer(l), &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// openDatapath is New with a cleanup that closes it.
func openDatapath(t *testing.T, opts Options) *Datapath {
	t.Helper()
	if opts.ClusterID == 0 {
		opts.ClusterID = 1
	}
	if opts.Logger == nil {
		opts.Logger = testLogger(t)
	}
	d, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := d.Close(); err != nil {
			t.Error(err)
		}
	})
	return d
}

// restartState is baseState with a service of three backends (one local,
// one remote, one terminating) and policy on endpoint 2.
func restartState() *state.State {
	s := baseState()
	term := backend(foreignIP, 8080, state.TCP, 2)
	term.State = state.BackendTerminating
	s.Services = []state.Service{
		{Name: "default/web", Frontend: state.Frontend{IP: vip, Port: 80, Protocol: state.TCP},
			Backends: []state.Backend{backend(serverIP, 8080, state.TCP, 1), backend(remoteIP, 8080, state.TCP, 1), term}},
		{Name: "default/dns", Frontend: state.Frontend{IP: vip, Port: 53, Protocol: state.UDP},
			Backends: []state.Backend{backend(remote2IP, 5353, state.UDP, 1)}},
	}
	s.Endpoints[1].Policy = &state.EndpointPolicy{IngressEnforced: true, Allow: []state.PolicyKey{
		{Direction: state.Ingress, Identity: clientIdentity, Protocol: state.TCP, Port: 8080, EndPort: 8090},
	}}
	return s
}

// progSnapshot renders what a Datapath believes is programmed, in a
// canonical order.
func progSnapshot(d *Datapath) string {
	d.mu.Lock()
	defer d.mu.Unlock()
	var lines []string
	keyStr := func(k backendKey) string { return fmt.Sprintf("%s:%d/%s@%d", k.addr, k.port, k.proto, k.cluster) }
	for fe, ps := range d.prog.services {
		var refs []string
		for _, k := range ps.refs {
			refs = append(refs, keyStr(k))
		}
		slices.Sort(refs)
		lines = append(lines, fmt.Sprintf("service %s %q revnat=%d slots=%v refs=%v", fe, ps.name, ps.revNatID, ps.slots, refs))
	}
	for k, pb := range d.prog.backends {
		lines = append(lines, fmt.Sprintf("backend %s id=%d value=%+v refs=%d", keyStr(k), pb.id, pb.value, pb.refs))
	}
	for id, k := range d.prog.backendIDs {
		lines = append(lines, fmt.Sprintf("backend-id %d %s", id, keyStr(k)))
	}
	for id, name := range d.prog.revNat {
		lines = append(lines, fmt.Sprintf("revnat %d %q", id, name))
	}
	for k, v := range d.prog.ipcache {
		lines = append(lines, fmt.Sprintf("ipcache %s %+v", ipcachePrefix(k), v))
	}
	for id, pe := range d.prog.endpoints {
		var pol []string
		for k := range pe.policy {
			pol = append(pol, fmt.Sprintf("%+v", k))
		}
		slices.Sort(pol)
		lines = append(lines, fmt.Sprintf("endpoint %d ip=%s ifindex=%d value=%+v attached=%t/%t stale=%v policy=%v",
			id, pe.ip, pe.ifindex, pe.value, pe.ingress != nil, pe.egress != nil, pe.staleIPs, pol))
	}
	lines = append(lines, fmt.Sprintf("strays %v", len(d.prog.strayBackends)))
	slices.Sort(lines)
	return strings.Join(lines, "\n")
}

// mapContents renders every entry of the agent-written maps.
func mapContents(t *testing.T, d *Datapath) string {
	t.Helper()
	return contentsOf(t, map[string]*ebpf.Map{
		"services": d.pod.Services, "backends": d.pod.Backends, "revnat": d.pod.Revnat,
		"ipcache": d.pod.Ipcache, "endpoints": d.pod.Endpoints, "policy": d.pod.Policy, "config": d.pod.Config,
	})
}

// idFreeContents renders the maps whose entries hold no allocated ID.
func idFreeContents(t *testing.T, d *Datapath) string {
	t.Helper()
	return contentsOf(t, map[string]*ebpf.Map{
		"ipcache": d.pod.Ipcache, "endpoints": d.pod.Endpoints, "policy": d.pod.Policy, "config": d.pod.Config,
	})
}

func contentsOf(t *testing.T, maps map[string]*ebpf.Map) string {
	t.Helper()
	var lines []string
	for name, m := range maps {
		var k, v []byte
		it := m.Iterate()
		for it.Next(&k, &v) {
			if name == "config" && len(v) == 16 {
				// The revision (node_config.revision) is every
				// Datapath's own: compared by TestPinnedRestart.
				v = append(v[:12:12], 0, 0, 0, 0)
			}
			lines = append(lines, fmt.Sprintf("%s %x %x", name, k, v))
		}
		if err := it.Err(); err != nil {
			t.Fatal(err)
		}
	}
	slices.Sort(lines)
	return strings.Join(lines, "\n")
}

func mapID(t *testing.T, m *ebpf.Map) ebpf.MapID {
	t.Helper()
	info, err := m.Info()
	if err != nil {
		t.Fatal(err)
	}
	id, ok := info.ID()
	if !ok {
		t.Fatal("kernel without map IDs")
	}
	return id
}

func progID(t *testing.T, p *ebpf.Program) ebpf.ProgramID {
	t.Helper()
	info, err := p.Info()
	if err != nil {
		t.Fatal(err)
	}
	id, ok := info.ID()
	if !ok {
		t.Fatal("kernel without program IDs")
	}
	return id
}

// hook is what is attached to one tcx hook: programs and their links.
type hook struct {
	progs []ebpf.ProgramID
	links []link.ID
}

func (e *progEnv) hook(t *testing.T, ifindex int, at ebpf.AttachType) hook {
	t.Helper()
	var h hook
	e.ns.mustDo(t, func() error {
		res, err := link.QueryPrograms(link.QueryOptions{Target: ifindex, Attach: at})
		if err != nil {
			return err
		}
		for _, p := range res.Programs {
			h.progs = append(h.progs, p.ID)
			if id, ok := p.LinkID(); ok {
				h.links = append(h.links, id)
			}
		}
		return nil
	})
	return h
}

// hooks are the five hooks of a progEnv, by name.
func (e *progEnv) hooks(t *testing.T) map[string]hook {
	t.Helper()
	return map[string]hook{
		"ep1h ingress": e.hook(t, e.ifindex["ep1h"], ebpf.AttachTCXIngress),
		"ep1h egress":  e.hook(t, e.ifindex["ep1h"], ebpf.AttachTCXEgress),
		"ep2h ingress": e.hook(t, e.ifindex["ep2h"], ebpf.AttachTCXIngress),
		"ep2h egress":  e.hook(t, e.ifindex["ep2h"], ebpf.AttachTCXEgress),
		"vx0 ingress":  e.hook(t, e.vxlan, ebpf.AttachTCXIngress),
	}
}

// wantPrograms checks that every hook runs exactly the program of d meant
// for it.
func (e *progEnv) wantPrograms(t *testing.T, d *Datapath) map[string]hook {
	t.Helper()
	want := map[string]ebpf.ProgramID{
		"ep1h ingress": progID(t, d.pod.FromContainer), "ep1h egress": progID(t, d.pod.ToContainer),
		"ep2h ingress": progID(t, d.pod.FromContainer), "ep2h egress": progID(t, d.pod.ToContainer),
		"vx0 ingress": progID(t, d.overlay.FromOverlay),
	}
	got := e.hooks(t)
	for name, h := range got {
		if !slices.Equal(h.progs, []ebpf.ProgramID{want[name]}) {
			t.Errorf("%s runs programs %v, want only %d", name, h.progs, want[name])
		}
	}
	return got
}

// TestPinnedRestart is an agent restart on one node: New, Apply, Close,
// New again with the same PinPath. Between the two the programs stay
// attached; the second Datapath takes over the maps with their entries
// (connection tracking included), switches the attachments to its programs,
// and knows what is programmed without writing anything.
func TestPinnedRestart(t *testing.T) {
	pin := PinPathForTest(t)
	opts := Options{Trace: true, PinPath: pin}
	e := newProgEnv(t, opts)
	s := restartState()
	// Connections through the service, each pinned to a backend, made
	// while all three backends are active; then one of them terminates.
	allActive := restartState()
	allActive.Services[0].Backends[2].State = state.BackendActive
	e.apply(t, allActive)
	const conns = 32
	before := make([]netip.AddrPort, conns)
	for i := range conns {
		_, out := e.fromClient(t, tcp(clientIP, vip, uint16(20000+i), 80, tcpSYN))
		before[i] = out.dst
	}
	if !slices.Contains(before, ap(foreignIP, 8080)) {
		t.Fatalf("no connection went to %s among %v", foreignIP, before)
	}
	e.apply(t, s)
	if n := countEntries(t, e.d.pod.Conntrack); n < conns {
		t.Fatalf("%d conntrack entries, want at least %d", n, conns)
	}
	first := e.d
	firstProg := progSnapshot(first)
	firstMaps := mapContents(t, first)
	firstDump, err := first.DumpServices()
	if err != nil {
		t.Fatal(err)
	}
	ids := map[string]ebpf.MapID{}
	for name, m := range map[string]*ebpf.Map{"services": first.pod.Services, "backends": first.pod.Backends,
		"conntrack": first.pod.Conntrack, "endpoints": first.pod.Endpoints, "policy": first.pod.Policy} {
		ids[name] = mapID(t, m)
	}
	attached := e.wantPrograms(t, first)
	firstRev := revisionOf(t, first)

	if err := first.Close(); err != nil {
		t.Fatal(err)
	}
	t.Run("programs stay attached while no datapath runs", func(t *testing.T) {
		if got := e.hooks(t); !mapsEqualFunc(got, attached) {
			t.Fatalf("hooks after Close %v, before %v", got, attached)
		}
	})

	second := openDatapath(t, opts)
	e.d = second
	secondRev := revisionOf(t, second)
	t.Run("a new revision voids the flow caches of the earlier datapath", func(t *testing.T) {
		if secondRev == firstRev || secondRev == 0 {
			t.Errorf("revision %d after New, was %d", secondRev, firstRev)
		}
	})
	t.Run("maps and their entries are taken over", func(t *testing.T) {
		for name, m := range map[string]*ebpf.Map{"services": second.pod.Services, "backends": second.pod.Backends,
			"conntrack": second.pod.Conntrack, "endpoints": second.pod.Endpoints, "policy": second.pod.Policy} {
			if got := mapID(t, m); got != ids[name] {
				t.Errorf("%s is map %d, was %d", name, got, ids[name])
			}
		}
		if got := mapContents(t, second); got != firstMaps {
			t.Errorf("maps changed by New:\n%s\nwant\n%s", got, firstMaps)
		}
		if n := countEntries(t, second.pod.Conntrack); n < conns {
			t.Errorf("%d conntrack entries after New, want at least %d", n, conns)
		}
	})
	t.Run("Restored describes what was taken over", func(t *testing.T) {
		got := second.Restored()
		want := restartState()
		for i := range want.Services {
			want.Services[i].Name = ""
		}
		slices.SortFunc(want.Services, func(a, b state.Service) int { return compareFrontends(a.Frontend, b.Frontend) })
		slices.SortFunc(want.IPCache, func(a, b state.IPCacheEntry) int { return a.Prefix.Addr().Compare(b.Prefix.Addr()) })
		// Active backends come in slot order: compare them as a set.
		for _, svcs := range [][]state.Service{got.Services, want.Services} {
			for _, svc := range svcs {
				slices.SortStableFunc(svc.Backends, func(a, b state.Backend) int {
					if c := cmp.Compare(a.State, b.State); c != 0 {
						return c
					}
					return a.IP.Compare(b.IP)
				})
			}
		}
		if fmt.Sprint(got.Services) != fmt.Sprint(want.Services) || !slices.Equal(got.IPCache, want.IPCache) {
			t.Fatalf("Restored:\n%+v\nwant\n%+v", got, want)
		}
		// The first Datapath started on an empty pin path; an unpinned
		// one restores nothing at all.
		if r := first.Restored(); r == nil || len(r.Services)+len(r.IPCache) != 0 {
			t.Fatalf("Datapath created on an empty pin path restored %+v", r)
		}
		if r := openDatapath(t, Options{}).Restored(); r != nil {
			t.Fatalf("unpinned Datapath restored %+v", r)
		}
	})
	t.Run("attachments switch to the new programs in place", func(t *testing.T) {
		got := e.wantPrograms(t, second)
		for name, h := range got {
			if !slices.Equal(h.links, attached[name].links) {
				t.Errorf("%s: links %v, were %v (re-attached instead of updated)", name, h.links, attached[name].links)
			}
		}
	})
	t.Run("first Apply writes nothing", func(t *testing.T) {
		e.apply(t, s)
		if got := revisionOf(t, second); got != secondRev {
			t.Errorf("revision %d after an Apply that changed nothing, was %d", got, secondRev)
		}
		if got := progSnapshot(second); got != firstProg {
			t.Errorf("programmed state after restart and Apply:\n%s\nwant\n%s", got, firstProg)
		}
		if got := mapContents(t, second); got != firstMaps {
			t.Errorf("maps after restart and Apply:\n%s\nwant\n%s", got, firstMaps)
		}
		got := e.wantPrograms(t, second)
		for name, h := range got {
			if !slices.Equal(h.links, attached[name].links) {
				t.Errorf("%s: links %v, were %v (Apply re-attached)", name, h.links, attached[name].links)
			}
		}
	})
	t.Run("connections keep their backends", func(t *testing.T) {
		for i := range conns {
			_, out := e.fromClient(t, tcp(clientIP, vip, uint16(20000+i), 80, tcpACK))
			if out.dst != before[i] {
				t.Fatalf("connection %d moved from %s to %s across the restart", i, before[i], out.dst)
			}
		}
	})
	t.Run("a change after the restart keeps what stays", func(t *testing.T) {
		s2 := restartState()
		web := &s2.Services[0]
		// The local backend goes, another remote one comes.
		web.Backends = []state.Backend{web.Backends[1], web.Backends[2], backend(remote2IP, 8080, state.TCP, 1)}
		e.apply(t, s2)
		dump, err := second.DumpServices()
		if err != nil {
			t.Fatal(err)
		}
		old := firstDump[1] // sorted: port 53, then 80
		now := dump[1]
		if now.Name != "default/web" || now.RevNATID != old.RevNATID {
			t.Fatalf("service after change %+v, was %+v", now, old)
		}
		for i, b := range old.Backends {
			if b.IP == remoteIP && now.Backends[i] != b {
				t.Fatalf("kept backend %+v moved or changed ID: slots now %+v", b, now.Backends)
			}
		}
		if n := countEntries(t, second.pod.Backends); n != 4 {
			t.Fatalf("%d backends, want 4 (web: 2 active + 1 terminating, dns: 1)", n)
		}
	})
}

func mapsEqualFunc(a, b map[string]hook) bool {
	if len(a) != len(b) {
		return false
	}
	for k, h := range a {
		if !slices.Equal(h.progs, b[k].progs) || !slices.Equal(h.links, b[k].links) {
			return false
		}
	}
	return true
}

// pinFiles lists what is pinned under path, relative to it.
func pinFiles(t *testing.T, path string) []string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(path, func(p string, de os.DirEntry, err error) error {
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		if err != nil {
			return err
		}
		if !de.IsDir() {
			rel, _ := filepath.Rel(path, p)
			out = append(out, rel)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func TestPinnedRemove(t *testing.T) {
	tests := []struct {
		name   string
		remove func(d *Datapath) error
	}{
		{"Remove on an open datapath", func(d *Datapath) error { return d.Remove() }},
		{"Remove after Close", func(d *Datapath) error {
			if err := d.Close(); err != nil {
				return err
			}
			return d.Remove()
		}},
		{"Uninstall with no datapath running", func(d *Datapath) error {
			if err := d.Close(); err != nil {
				return err
			}
			return Uninstall(d.opts.PinPath)
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pin := PinPathForTest(t)
			e := newProgEnv(t, Options{PinPath: pin})
			e.apply(t, restartState())
			files := pinFiles(t, pin)
			for _, want := range []string{"maps/conntrack", "maps/services", "links/from_container-1", "links/to_container-2", "links/from_overlay"} {
				if !slices.Contains(files, want) {
					t.Fatalf("pins %v, want %s among them", files, want)
				}
			}
			if slices.Contains(files, "maps/events") {
				t.Errorf("flow event ring pinned: %v", files)
			}
			var mapIDs []ebpf.MapID
			for _, m := range []*ebpf.Map{e.d.pod.Services, e.d.pod.Conntrack, e.d.pod.Ipcache} {
				mapIDs = append(mapIDs, mapID(t, m))
			}

			if err := tt.remove(e.d); err != nil {
				t.Fatal(err)
			}
			if _, err := os.Stat(pin); !errors.Is(err, os.ErrNotExist) {
				t.Fatalf("pin path still there (%v): %v", err, pinFiles(t, pin))
			}
			for name, h := range e.hooks(t) {
				if len(h.progs) != 0 {
					t.Errorf("%s still runs %v", name, h.progs)
				}
			}
			// The maps are freed (the kernel does it asynchronously).
			deadline := time.Now().Add(10 * time.Second)
			for _, id := range mapIDs {
				for {
					m, err := ebpf.NewMapFromID(id)
					if errors.Is(err, os.ErrNotExist) {
						break
					}
					if err == nil {
						m.Close()
					}
					if time.Now().After(deadline) {
						t.Fatalf("map %d still exists after Remove (%v)", id, err)
					}
					time.Sleep(20 * time.Millisecond)
				}
			}
		})
	}
}

func TestPinnedIncompatibleMapReplaced(t *testing.T) {
	tests := []struct {
		name string
		// prepare runs between the first Datapath's Close and the second
		// New; it returns the second New's options.
		prepare  func(t *testing.T, pin string) Options
		replaced string // map name
		reason   string // in the log line
	}{
		{"max entries changed", func(t *testing.T, pin string) Options {
			return Options{ConntrackEntries: 2048}
		}, "conntrack", "MaxEntries: 1024 changed to 2048"},
		{"key size changed", func(t *testing.T, pin string) Options {
			path := filepath.Join(pin, pinMapsDir, "backends")
			if err := os.Remove(path); err != nil {
				t.Fatal(err)
			}
			m, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Hash, KeySize: 8, ValueSize: 12, MaxEntries: 16, Flags: unix.BPF_F_NO_PREALLOC})
			if err != nil {
				t.Fatal(err)
			}
			defer m.Close()
			if err := m.Pin(path); err != nil {
				t.Fatal(err)
			}
			return Options{ConntrackEntries: 1024}
		}, "backends", "KeySize: 8 changed to 4"},
		{"conntrack entry of an older datapath", func(t *testing.T, pin string) Options {
			// The layout before the flow cache: 16-byte entries
			// (last_seen, backend_id, rev_nat_id, flags, pad).
			path := filepath.Join(pin, pinMapsDir, "conntrack")
			if err := os.Remove(path); err != nil {
				t.Fatal(err)
			}
			m, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.LRUHash, KeySize: 16, ValueSize: 16, MaxEntries: 1024})
			if err != nil {
				t.Fatal(err)
			}
			defer m.Close()
			if err := m.Put(make([]byte, 16), make([]byte, 16)); err != nil {
				t.Fatal(err)
			}
			if err := m.Pin(path); err != nil {
				t.Fatal(err)
			}
			return Options{ConntrackEntries: 1024}
		}, "conntrack", "ValueSize: 16 changed to 56"},
		{"map type changed", func(t *testing.T, pin string) Options {
			path := filepath.Join(pin, pinMapsDir, "revnat")
			if err := os.Remove(path); err != nil {
				t.Fatal(err)
			}
			m, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.LRUHash, KeySize: 2, ValueSize: 8, MaxEntries: 65536})
			if err != nil {
				t.Fatal(err)
			}
			defer m.Close()
			if err := m.Pin(path); err != nil {
				t.Fatal(err)
			}
			return Options{ConntrackEntries: 1024}
		}, "revnat", "Type: LRUHash changed to Hash"},
		{"value fields moved, same size", func(t *testing.T, pin string) Options {
			spec, err := loadPod()
			if err != nil {
				t.Fatal(err)
			}
			ms := spec.Maps["revnat"].Copy()
			u16 := &btf.Int{Name: "unsigned short", Size: 2}
			u32 := &btf.Int{Name: "unsigned int", Size: 4}
			ms.Value = &btf.Struct{Name: "revnat_value", Size: 8, Members: []btf.Member{
				{Name: "port", Type: u16, Offset: 0}, {Name: "pad", Type: u16, Offset: 16}, {Name: "addr", Type: u32, Offset: 32},
			}}
			path := filepath.Join(pin, pinMapsDir, "revnat")
			if err := os.Remove(path); err != nil {
				t.Fatal(err)
			}
			m, err := ebpf.NewMap(ms)
			if err != nil {
				t.Fatal(err)
			}
			defer m.Close()
			if err := m.Pin(path); err != nil {
				t.Fatal(err)
			}
			return Options{ConntrackEntries: 1024}
		}, "revnat", "value type revnat_value changed"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pin := PinPathForTest(t)
			e := newProgEnv(t, Options{PinPath: pin, ConntrackEntries: 1024})
			s := restartState()
			e.apply(t, s)
			e.fromClient(t, tcp(clientIP, vip, 20000, 80, tcpSYN))
			servicesID := mapID(t, e.d.pod.Services)
			idFree := idFreeContents(t, e.d)
			if err := e.d.Close(); err != nil {
				t.Fatal(err)
			}

			opts := tt.prepare(t, pin)
			opts.PinPath = pin
			logs := &logBuffer{t: t}
			opts.Logger = logs.logger()
			second := openDatapath(t, opts)
			e.d = second
			if !strings.Contains(logs.String(), "replacing incompatible pinned map") ||
				!strings.Contains(logs.String(), "map="+tt.replaced) || !strings.Contains(logs.String(), tt.reason) {
				t.Errorf("log does not say that %s was replaced because %s:\n%s", tt.replaced, tt.reason, logs)
			}
			// The replaced map is the spec's, pinned in the old one's place.
			m, err := ebpf.LoadPinnedMap(filepath.Join(pin, pinMapsDir, tt.replaced), nil)
			if err != nil {
				t.Fatal(err)
			}
			defer m.Close()
			if got, want := mapID(t, m), mapID(t, mapByName(second, tt.replaced)); got != want {
				t.Errorf("pinned %s is map %d, the datapath uses %d", tt.replaced, got, want)
			}
			if tt.replaced != "services" && mapID(t, second.pod.Services) != servicesID {
				t.Errorf("services map replaced too")
			}
			if tt.replaced == "conntrack" {
				if n, max := countEntries(t, second.pod.Conntrack), second.pod.Conntrack.MaxEntries(); n != 0 || max != opts.ConntrackEntries {
					t.Errorf("conntrack: %d entries, %d max, want a new empty one of %d", n, max, opts.ConntrackEntries)
				}
			}
			// Apply makes the maps whole again, and traffic flows.
			e.apply(t, s)
			checkServices(t, second, s)
			if got := idFreeContents(t, second); got != idFree {
				t.Errorf("maps after Apply:\n%s\nwant\n%s", got, idFree)
			}
			if ret, out := e.fromClient(t, tcp(clientIP, vip, 20001, 80, tcpSYN)); ret == tcActShot || out.dst.Port() != 8080 {
				t.Errorf("service after the replacement: verdict %d, packet to %s", ret, out.dst)
			}
		})
	}
}

// revisionOf reads the revision the programs see (node_config.revision).
func revisionOf(t *testing.T, d *Datapath) uint32 {
	t.Helper()
	var cfg podNodeConfig
	if err := d.pod.Config.Lookup(uint32(0), &cfg); err != nil {
		t.Fatal(err)
	}
	return cfg.Revision
}

func mapByName(d *Datapath, name string) *ebpf.Map {
	return d.sharedMaps()[name]
}

// checkServices checks that the service maps implement exactly s's
// services, whatever IDs were allocated: every frontend with its active
// backends, a rev-NAT entry per frontend, and no other entry.
func checkServices(t *testing.T, d *Datapath, s *state.State) {
	t.Helper()
	dump, err := d.DumpServices()
	if err != nil {
		t.Fatal(err)
	}
	var got, want []string
	for _, se := range dump {
		var bs []string
		for _, b := range se.Backends {
			bs = append(bs, fmt.Sprintf("%s:%d", b.IP, b.Port))
		}
		slices.Sort(bs)
		got = append(got, fmt.Sprintf("%s %v", se.Frontend, bs))
		var rv podRevnatValue
		if err := d.pod.Revnat.Lookup(se.RevNATID, &rv); err != nil || rv != (podRevnatValue{Addr: be32(se.Frontend.IP), Port: be16(se.Frontend.Port)}) {
			t.Errorf("%s: rev-NAT entry %d = %+v, %v", se.Frontend, se.RevNATID, rv, err)
		}
	}
	slots, keys := 0, map[backendKey]bool{}
	for _, svc := range s.Services {
		var bs []string
		for _, b := range svc.Backends {
			keys[keyOfBackend(b)] = true
			if b.State == state.BackendActive {
				bs = append(bs, fmt.Sprintf("%s:%d", b.IP, b.Port))
			}
		}
		slices.Sort(bs)
		slots += 1 + len(bs)
		want = append(want, fmt.Sprintf("%s %v", svc.Frontend, bs))
	}
	slices.Sort(got)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Errorf("services %v, want %v", got, want)
	}
	for name, c := range map[string]struct {
		m    *ebpf.Map
		want int
	}{"services": {d.pod.Services, slots}, "backends": {d.pod.Backends, len(keys)}, "revnat": {d.pod.Revnat, len(s.Services)}} {
		if n := countEntries(t, c.m); n != c.want {
			t.Errorf("%s map holds %d entries, want %d", name, n, c.want)
		}
	}
}

func TestPinPathInUse(t *testing.T) {
	pin := PinPathForTest(t)
	first := openDatapath(t, Options{PinPath: pin})
	if d, err := New(Options{ClusterID: 1, PinPath: pin}); !errors.Is(err, ErrPinPathInUse) {
		if d != nil {
			d.Close()
		}
		t.Fatalf("second New on a pin path in use: %v, want ErrPinPathInUse", err)
	}
	if err := Uninstall(pin); !errors.Is(err, ErrPinPathInUse) {
		t.Fatalf("Uninstall of a pin path in use: %v, want ErrPinPathInUse", err)
	}
	if err := first.Close(); err != nil {
		t.Fatal(err)
	}
	openDatapath(t, Options{PinPath: pin})
}

func TestPinPathNotOnBPFFS(t *testing.T) {
	testenv.Privileged(t)
	dir := filepath.Join(t.TempDir(), "pins")
	d, err := New(Options{ClusterID: 1, PinPath: dir})
	if err == nil {
		d.Close()
		t.Fatal("New pinned to a directory that is not on a BPF filesystem")
	}
	if !strings.Contains(err.Error(), "not on a BPF filesystem") {
		t.Fatalf("error %q does not say why", err)
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("New created %s anyway", dir)
	}
}

// TestRestoreRepairsInterruptedWrites leaves the maps as an agent killed in
// the middle of Apply could, and checks that the next Datapath cleans up
// what no lookup reaches and that its first Apply converges to exactly
// what a fresh datapath would write.
func TestRestoreRepairsInterruptedWrites(t *testing.T) {
	pin := PinPathForTest(t)
	e := newProgEnv(t, Options{PinPath: pin})
	s := restartState()
	e.apply(t, s)
	dump, err := e.d.DumpServices()
	if err != nil {
		t.Fatal(err)
	}
	web := dump[1]
	idFree := idFreeContents(t, e.d)
	if err := e.d.Close(); err != nil {
		t.Fatal(err)
	}

	load := func(name string) *ebpf.Map {
		m, err := ebpf.LoadPinnedMap(filepath.Join(pin, pinMapsDir, name), nil)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { m.Close() })
		return m
	}
	svcs, backends, revnat, endpoints := load("services"), load("backends"), load("revnat"), load("endpoints")
	orphan := state.Frontend{IP: vip, Port: 99, Protocol: state.TCP}
	put := func(m *ebpf.Map, k, v any) {
		t.Helper()
		if err := m.Put(k, v); err != nil {
			t.Fatal(err)
		}
	}
	// A slot past the count (a shrink interrupted before its last step).
	put(svcs, svcKey(web.Frontend, 9), podSvcValue{BackendId: web.Backends[0].ID})
	// Slots of a frontend whose master was never written.
	put(svcs, svcKey(orphan, 1), podSvcValue{BackendId: web.Backends[0].ID})
	// A rev-NAT entry of no frontend.
	put(revnat, uint16(777), podRevnatValue{Addr: be32(vip), Port: be16(99)})
	// The web frontend's rev-NAT entry lost.
	if err := revnat.Delete(web.RevNATID); err != nil {
		t.Fatal(err)
	}
	// A second ID for a backend key, referenced by nothing.
	var b podBackend
	if err := backends.Lookup(web.Backends[0].ID, &b); err != nil {
		t.Fatal(err)
	}
	put(backends, uint32(5000), b)
	// A second address for endpoint 1 (an address change interrupted).
	var ep podEndpoint
	k := be32(clientIP)
	if err := endpoints.Lookup(&k, &ep); err != nil {
		t.Fatal(err)
	}
	put(endpoints, be32(netip.MustParseAddr("10.0.1.99")), ep)

	second := openDatapath(t, Options{PinPath: pin})
	e.d = second
	var rv podRevnatValue
	if err := second.pod.Revnat.Lookup(web.RevNATID, &rv); err != nil || rv.Port != be16(80) {
		t.Errorf("web's rev-NAT entry not repaired by New: %+v, %v", rv, err)
	}
	e.apply(t, s)
	checkServices(t, second, s)
	if got := idFreeContents(t, second); got != idFree {
		t.Errorf("maps after the first Apply:\n%s\nwant\n%s", got, idFree)
	}
	// Connections still find the backends the slots name.
	if _, out := e.fromClient(t, tcp(clientIP, vip, 21000, 80, tcpSYN)); out.dst.Port() != 8080 {
		t.Errorf("service after repair: packet to %s", out.dst)
	}
}

func TestParseLinkPin(t *testing.T) {
	tests := []struct {
		name     string
		prog     string
		id       uint16
		ok       bool
		canonify bool // linkPinPath renders it back
	}{
		{"from_overlay", "from_overlay", 0, true, true},
		{"from_container-1", "from_container", 1, true, true},
		{"to_container-65535", "to_container", 65535, true, true},
		{"to_container-65536", "", 0, false, false},
		{"to_container-0", "", 0, false, false},
		{"to_container-01", "", 0, false, false},
		{"from_container", "", 0, false, false},
		{"from_overlay-3", "", 0, false, false},
		{"other-3", "", 0, false, false},
		{"from_container-1.tmp", "", 0, false, false},
	}
	d := &Datapath{opts: Options{PinPath: "/p"}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			prog, id, ok := parseLinkPin(tt.name)
			if prog != tt.prog || id != tt.id || ok != tt.ok {
				t.Fatalf("parseLinkPin(%q) = %q, %d, %t; want %q, %d, %t", tt.name, prog, id, ok, tt.prog, tt.id, tt.ok)
			}
			if tt.canonify {
				if got := d.linkPinPath(prog, id); got != "/p/links/"+tt.name {
					t.Fatalf("linkPinPath = %q", got)
				}
			}
		})
	}
}

// TestPinnedOverlayMoves attaches the overlay to a second VXLAN device on a
// pinned datapath: the pin follows the attachment, and the next Datapath
// takes over the new one and sends through it.
func TestPinnedOverlayMoves(t *testing.T) {
	pin := PinPathForTest(t)
	opts := Options{PinPath: pin}
	e := newProgEnv(t, opts)
	var vx1 int
	e.ns.mustDo(t, func() error {
		// A second collect-metadata device needs a port of its own.
		v := &netlink.Vxlan{LinkAttrs: netlink.LinkAttrs{Name: "vx1", MTU: 1450}, FlowBased: true, Port: 4790}
		if err := netlink.LinkAdd(v); err != nil {
			return err
		}
		l, err := netlink.LinkByName("vx1")
		if err != nil {
			return err
		}
		vx1 = l.Attrs().Index
		return e.d.AttachOverlay("vx1")
	})
	if h := e.hook(t, e.vxlan, ebpf.AttachTCXIngress); len(h.progs) != 0 {
		t.Fatalf("vx0 still runs %v after the overlay moved", h.progs)
	}
	moved := e.hook(t, vx1, ebpf.AttachTCXIngress)
	if len(moved.progs) != 1 {
		t.Fatalf("vx1 runs %v, want the overlay program", moved.progs)
	}
	if err := e.d.Close(); err != nil {
		t.Fatal(err)
	}

	second := openDatapath(t, opts)
	if h := e.hook(t, vx1, ebpf.AttachTCXIngress); !slices.Equal(h.links, moved.links) ||
		!slices.Equal(h.progs, []ebpf.ProgramID{progID(t, second.overlay.FromOverlay)}) {
		t.Fatalf("vx1 after restart: %+v, want link %v running the new program", h, moved.links)
	}
	var cfg podNodeConfig
	if err := second.pod.Config.Lookup(uint32(0), &cfg); err != nil {
		t.Fatal(err)
	}
	if cfg.VxlanIfindex != uint32(vx1) {
		t.Fatalf("node config sends through ifindex %d before AttachOverlay, want the adopted vx1 (%d)", cfg.VxlanIfindex, vx1)
	}
}
