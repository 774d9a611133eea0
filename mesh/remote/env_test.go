package remote

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/meshbed/meshbed/internal/testenv"
	"github.com/meshbed/meshbed/mesh/wire"
)

const localName, localID = "cluster1", 1

// testLogger routes the package's logs to t.Log.
func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tWriter struct{ t testing.TB }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

var _ io.Writer = tWriter{}

// --- remote cluster publisher ---------------------------------------------

// publisher writes a remote cluster's exports into an etcd the way a
// mesh-apiserver (cached=false) or kvstoremesh (cached=true) does.
type publisher struct {
	t      testing.TB
	kv     *clientv3.Client
	name   string
	id     uint32
	cached bool
}

func newPublisher(t testing.TB, kv *clientv3.Client, name string, id uint32) *publisher {
	return &publisher{t: t, kv: kv, name: name, id: id}
}

func (p *publisher) ctx() context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	p.t.Cleanup(cancel)
	return ctx
}

func (p *publisher) put(key, value string) {
	p.t.Helper()
	if _, err := p.kv.Put(p.ctx(), key, value); err != nil {
		p.t.Fatalf("put %s: %v", key, err)
	}
}

func (p *publisher) del(key string) {
	p.t.Helper()
	if _, err := p.kv.Delete(p.ctx(), key); err != nil {
		p.t.Fatalf("delete %s: %v", key, err)
	}
}

// key maps a state key to the layout the publisher writes.
func (p *publisher) key(stateKey string) string {
	if !p.cached {
		return stateKey
	}
	k, err := wire.CacheKey(p.name, stateKey)
	if err != nil {
		p.t.Fatal(err)
	}
	return k
}

func mustJSON(t testing.TB, v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func (p *publisher) config() {
	p.configWith(p.id, wire.MaxConnectedClusters255)
}

func (p *publisher) configWith(id, maxConnected uint32) {
	p.put(wire.ClusterConfigKey(p.name), mustJSON(p.t, wire.ClusterConfig{
		ID: id, Capabilities: wire.Capabilities{SyncedCanaries: true, Cached: p.cached, MaxConnectedClusters: maxConnected},
	}))
}

func (p *publisher) canary(r wire.Resource) string { return wire.CanaryKey(r, p.name, p.cached) }

func (p *publisher) canaries() {
	for _, r := range wire.Resources {
		p.put(p.canary(r), wire.Timestamp(time.Now()))
	}
}

func (p *publisher) serviceValue(name string, backends ...string) *wire.ClusterService {
	cs := &wire.ClusterService{
		Cluster: p.name, ClusterID: p.id, Namespace: "default", Name: name, Shared: true,
		Frontends: map[string]wire.PortConfiguration{"10.21.0.10": {"http": {Protocol: "TCP", Port: 80}}},
		Backends:  map[string]wire.PortConfiguration{},
		Labels:    map[string]string{}, Selector: map[string]string{"name": name},
	}
	for _, b := range backends {
		cs.Backends[b] = wire.PortConfiguration{"http": {Protocol: "TCP", Port: 80}}
	}
	return cs
}

func (p *publisher) service(name string, backends ...string) {
	p.put(p.key(wire.ServiceKey(p.name, "default", name)), mustJSON(p.t, p.serviceValue(name, backends...)))
}

func (p *publisher) deleteService(name string) {
	p.del(p.key(wire.ServiceKey(p.name, "default", name)))
}

func (p *publisher) node(name, ip string) {
	p.put(p.key(wire.NodeKey(p.name, name)), mustJSON(p.t, wire.Node{
		Name: name, Cluster: p.name, ClusterID: p.id, Source: "custom-resource",
		IPAddresses: []wire.NodeAddress{{Type: wire.NodeAddressInternalIP, IP: net.ParseIP(ip)}},
	}))
}

func (p *publisher) ip(ip string, id uint32) {
	p.put(p.key(wire.IPKey(ip)), mustJSON(p.t, wire.IPIdentityPair{IP: net.ParseIP(ip), HostIP: net.ParseIP("172.18.0.3"), ID: id}))
}

func (p *publisher) localIdentity(n uint32) uint32 { return p.id<<16 | n }

func (p *publisher) identity(id uint32, app string) {
	labels := wire.NewLabels(wire.LabelSourceK8s, map[string]string{
		"app": app, wire.PolicyClusterLabel: p.name, wire.PodNamespaceLabel: "default",
	})
	p.put(p.key(wire.IdentityKey(id)), labels.String())
}

// basic publishes one of everything, then the canaries.
func (p *publisher) basic() {
	p.config()
	p.identity(p.localIdentity(1), "rebel-base")
	p.node("node-1", "172.18.0.3")
	p.ip("10.20.0.7", p.localIdentity(1))
	p.service("rebel-base", "10.20.0.7")
	p.canaries()
}

// --- sink -----------------------------------------------------------------

// view is what the recorder holds of one cluster.
type view struct {
	configured, up, reachable, synced bool
	id                                uint32
	services                          map[string]string // ns/name → sorted backends
	nodes                             map[string]bool
	ips                               map[netip.Addr]uint32
	identities                        map[uint32]string
	// reachableLog has every Reachable call with the services known then.
	reachableLog []reachability
}

type reachability struct {
	at        time.Time
	reachable bool
	services  map[string]string
}

func newView() *view {
	return &view{services: map[string]string{}, nodes: map[string]bool{}, ips: map[netip.Addr]uint32{}, identities: map[uint32]string{}}
}

// recorder is a Sink that keeps a view per cluster and checks invariants
// (calls only for configured clusters, deletes only of known entries).
type recorder struct {
	t        testing.TB
	mu       sync.Mutex
	clusters map[string]*view
	downs    []string
	calls    atomic.Int64
}

func newRecorder(t testing.TB) *recorder { return &recorder{t: t, clusters: map[string]*view{}} }

func (r *recorder) with(cluster string, fn func(v *view)) {
	r.calls.Add(1)
	r.mu.Lock()
	defer r.mu.Unlock()
	v, ok := r.clusters[cluster]
	if !ok {
		r.t.Errorf("call for unconfigured cluster %q", cluster)
		return
	}
	fn(v)
}

func (r *recorder) ClusterConfigured(cluster string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	v := newView()
	v.configured = true
	r.clusters[cluster] = v
}

func (r *recorder) ClusterUp(cluster string, id uint32) {
	r.with(cluster, func(v *view) { v.up, v.id = true, id })
}

func (r *recorder) ClusterDown(cluster string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.clusters, cluster)
	r.downs = append(r.downs, cluster)
}

func (r *recorder) Reachable(cluster string, reachable bool) {
	r.with(cluster, func(v *view) {
		v.reachable = reachable
		v.reachableLog = append(v.reachableLog, reachability{time.Now(), reachable, maps.Clone(v.services)})
	})
}

func (r *recorder) ServicesSynced(cluster string) { r.with(cluster, func(v *view) { v.synced = true }) }

func (r *recorder) UpsertService(cluster string, svc *wire.ClusterService) {
	r.with(cluster, func(v *view) {
		v.services[svc.Namespace+"/"+svc.Name] = strings.Join(slices.Sorted(maps.Keys(svc.Backends)), ",")
	})
}

func (r *recorder) DeleteService(cluster, namespace, name string) {
	r.with(cluster, func(v *view) {
		if _, ok := v.services[namespace+"/"+name]; !ok {
			r.t.Errorf("delete of unknown service %s/%s of %s", namespace, name, cluster)
		}
		delete(v.services, namespace+"/"+name)
	})
}

func (r *recorder) UpsertNode(cluster string, n *wire.Node) {
	r.with(cluster, func(v *view) { v.nodes[n.Name] = true })
}

func (r *recorder) DeleteNode(cluster, name string) {
	r.with(cluster, func(v *view) { delete(v.nodes, name) })
}

func (r *recorder) UpsertIPCache(cluster string, p *wire.IPIdentityPair) {
	a, _ := netip.AddrFromSlice(p.IP)
	r.with(cluster, func(v *view) { v.ips[a.Unmap()] = p.ID })
}

func (r *recorder) DeleteIPCache(cluster string, ip netip.Addr) {
	r.with(cluster, func(v *view) { delete(v.ips, ip) })
}

func (r *recorder) UpsertIdentity(cluster string, id uint32, labels wire.Labels) {
	r.with(cluster, func(v *view) { v.identities[id] = labels.String() })
}

func (r *recorder) DeleteIdentity(cluster string, id uint32) {
	r.with(cluster, func(v *view) { delete(v.identities, id) })
}

// get returns a copy of the view of cluster (nil if unknown).
func (r *recorder) get(cluster string) *view {
	r.mu.Lock()
	defer r.mu.Unlock()
	v, ok := r.clusters[cluster]
	if !ok {
		return nil
	}
	c := *v
	c.services, c.nodes, c.ips, c.identities = maps.Clone(v.services), maps.Clone(v.nodes), maps.Clone(v.ips), maps.Clone(v.identities)
	c.reachableLog = slices.Clone(v.reachableLog)
	return &c
}

// expect waits until the view of cluster satisfies check.
func (r *recorder) expect(timeout time.Duration, cluster string, check func(v *view) error) {
	r.t.Helper()
	testenv.Eventually(r.t, timeout, func() error {
		v := r.get(cluster)
		if v == nil {
			return fmt.Errorf("cluster %q unknown to the sink", cluster)
		}
		return check(v)
	})
}

func wantServices(want map[string]string) func(v *view) error {
	return func(v *view) error {
		if !maps.Equal(v.services, want) {
			return fmt.Errorf("services %v, want %v", v.services, want)
		}
		return nil
	}
}

func isReachable(want bool) func(v *view) error {
	return func(v *view) error {
		if v.reachable != want {
			return fmt.Errorf("reachable = %v, want %v", v.reachable, want)
		}
		return nil
	}
}

// --- config directory -----------------------------------------------------

func writeConfig(t testing.TB, dir, name string, endpoints []string, extra string) {
	t.Helper()
	var b strings.Builder
	b.WriteString("endpoints:\n")
	for _, e := range endpoints {
		fmt.Fprintf(&b, "- %s\n", e)
	}
	b.WriteString(extra)
	writeFileAtomic(t, filepath.Join(dir, name), b.String())
}

func writeFileAtomic(t testing.TB, path, content string) {
	t.Helper()
	tmp := filepath.Join(filepath.Dir(path), ".tmp-"+filepath.Base(path))
	if err := os.WriteFile(tmp, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// --- manager --------------------------------------------------------------

// fastConfig has timings suited to tests on loopback.
func fastConfig(t testing.TB, dir string) Config {
	return Config{
		ClusterName: localName, ClusterID: localID, Dir: dir,
		PollInterval:   50 * time.Millisecond,
		HealthInterval: 100 * time.Millisecond, HealthTimeout: 600 * time.Millisecond,
		CanaryGrace: 2 * time.Second, SyncTimeout: 20 * time.Second,
		MinBackoff: 20 * time.Millisecond, MaxBackoff: 300 * time.Millisecond,
		KeepAliveTime: 500 * time.Millisecond, KeepAliveTimeout: 500 * time.Millisecond,
		RequestTimeout: 2 * time.Second,
		Logger:         testLogger(t),
	}
}

// startManager runs a Manager until the test ends.
func startManager(t testing.TB, cfg Config) (*Manager, *recorder) {
	t.Helper()
	m, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	rec := newRecorder(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := m.Run(ctx, rec); err != nil {
			t.Errorf("Run: %v", err)
		}
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	return m, rec
}

func statusOf(m *Manager, name string) (ClusterStatus, bool) {
	for _, s := range m.Status() {
		if s.Name == name {
			return s, true
		}
	}
	return ClusterStatus{}, false
}

// --- black-hole proxy -----------------------------------------------------

// proxy forwards TCP to target and can black-hole traffic (hold it, never
// reset it) like a network partition; Dial is the dialer hook that routes
// the Manager's connections through it.
type proxy struct {
	target string
	ln     net.Listener
	dials  atomic.Int64
	mu     sync.Mutex
	cond   *sync.Cond
	cut    bool
	closed bool
	conns  []net.Conn
}

func newProxy(t testing.TB, target string) *proxy {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &proxy{target: target, ln: ln}
	p.cond = sync.NewCond(&p.mu)
	go p.accept()
	t.Cleanup(p.close)
	return p
}

// Dial hides the socket from the caller (the connection is not a
// syscall.Conn): the proxy's kernel acknowledges what it holds back, so
// through the kernel's eyes a cut here is a hung server, and the loss
// detector would rightly take longer over it (kvstore.HealthConfig.VouchFor).
// Hidden, the cut is the silence a black hole is.
func (p *proxy) Dial(ctx context.Context, addr string) (net.Conn, error) {
	p.dials.Add(1)
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", p.ln.Addr().String())
	if err != nil {
		return nil, err
	}
	return struct{ net.Conn }{c}, nil
}

func (p *proxy) accept() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		u, err := net.Dial("tcp", p.target)
		if err != nil {
			c.Close()
			continue
		}
		p.mu.Lock()
		p.conns = append(p.conns, c, u)
		p.mu.Unlock()
		go p.pipe(u, c)
		go p.pipe(c, u)
	}
}

func (p *proxy) pipe(dst, src net.Conn) {
	defer dst.Close()
	defer src.Close()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			p.mu.Lock()
			for p.cut && !p.closed {
				p.cond.Wait()
			}
			closed := p.closed
			p.mu.Unlock()
			if closed {
				return
			}
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

func (p *proxy) partition(cut bool) {
	p.mu.Lock()
	p.cut = cut
	p.mu.Unlock()
	p.cond.Broadcast()
}

func (p *proxy) close() {
	p.mu.Lock()
	p.closed = true
	for _, c := range p.conns {
		c.Close()
	}
	p.mu.Unlock()
	p.cond.Broadcast()
	p.ln.Close()
}
