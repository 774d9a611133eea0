package kvstoremesh

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/meshbed/meshbed/internal/testenv"
	"github.com/meshbed/meshbed/mesh/etcdtest"
	"github.com/meshbed/meshbed/mesh/kvstore"
	"github.com/meshbed/meshbed/mesh/wire"
)

const (
	localName = "cluster1"
	localID   = 1
	// wait bounds eventual assertions that are not about a stated bound.
	wait = 15 * time.Second
	// lossBound is the mesh's bound on withdrawing a lost cluster's
	// backends with the default health timings (docs/architecture.md, "Semantics").
	lossBound = 3 * time.Second
)

// testLogger routes logs to t.Log.
func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tWriter struct{ t testing.TB }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

func ctxT(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// connect is a kvstore client of s, closed when the test ends.
func connect(t testing.TB, s *etcdtest.Server) *kvstore.Client {
	t.Helper()
	c, err := kvstore.Connect(context.Background(), kvstore.Config{
		Endpoints:        s.Endpoints(),
		KeepAliveTime:    500 * time.Millisecond,
		KeepAliveTimeout: 500 * time.Millisecond,
		RequestTimeout:   2 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// --- a remote cluster ------------------------------------------------------

// source is a remote cluster's etcd with its state written by a
// kvstore.Writer, the way its mesh-apiserver does.
type source struct {
	t    testing.TB
	name string
	id   uint32
	srv  *etcdtest.Server
	// w and its client belong to the current "apiserver" run.
	mu     sync.Mutex
	client *kvstore.Client
	w      *kvstore.Writer
	stop   func()
	// checker reads the source for checks, through the relay.
	checker *kvstore.Client
}

func newSource(t testing.TB, name string, id uint32) *source {
	t.Helper()
	s := &source{t: t, name: name, id: id, srv: etcdtest.Start(t)}
	s.startWriter()
	t.Cleanup(s.stopWriter)
	return s
}

// startWriter starts a new "apiserver run": a fresh client and Writer.
func (s *source) startWriter() {
	s.t.Helper()
	c, err := kvstore.Connect(context.Background(), kvstore.Config{Endpoints: s.srv.Endpoints(), RequestTimeout: 2 * time.Second})
	if err != nil {
		s.t.Fatal(err)
	}
	w := kvstore.NewWriter(c, kvstore.WriterConfig{MaxBackoff: 200 * time.Millisecond})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		w.Run(ctx)
	}()
	s.mu.Lock()
	s.client, s.w = c, w
	s.stop = func() {
		cancel()
		<-done
		c.Close()
	}
	s.mu.Unlock()
}

func (s *source) stopWriter() {
	s.mu.Lock()
	stop := s.stop
	s.stop = nil
	s.mu.Unlock()
	if stop != nil {
		stop()
	}
}

func mustJSON(t testing.TB, v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func (s *source) config() {
	s.w.Upsert(wire.ClusterConfigKey(s.name), mustJSON(s.t, wire.ClusterConfig{
		ID: s.id, Capabilities: wire.Capabilities{SyncedCanaries: true, MaxConnectedClusters: wire.MaxConnectedClusters255},
	}))
}

func (s *source) serviceValue(name string, backends ...string) *wire.ClusterService {
	cs := &wire.ClusterService{
		Cluster: s.name, ClusterID: s.id, Namespace: "default", Name: name, Shared: true, IncludeExternal: true,
		Frontends: map[string]wire.PortConfiguration{"10.21.0.10": {"http": {Protocol: "TCP", Port: 80}}},
		Backends:  map[string]wire.PortConfiguration{},
		Labels:    map[string]string{}, Selector: map[string]string{"name": name},
	}
	for _, b := range backends {
		cs.Backends[b] = wire.PortConfiguration{"http": {Protocol: "TCP", Port: 80}}
	}
	return cs
}

func (s *source) service(name string, backends ...string) {
	s.w.Upsert(wire.ServiceKey(s.name, "default", name), mustJSON(s.t, s.serviceValue(name, backends...)))
}

func (s *source) deleteService(name string) { s.w.Delete(wire.ServiceKey(s.name, "default", name)) }

func (s *source) node(name, ip string) {
	s.w.Upsert(wire.NodeKey(s.name, name), mustJSON(s.t, wire.Node{
		Name: name, Cluster: s.name, ClusterID: s.id, Source: "custom-resource",
		IPAddresses: []wire.NodeAddress{{Type: wire.NodeAddressInternalIP, IP: net.ParseIP(ip)}},
		Labels:      map[string]string{}, Annotations: map[string]string{},
	}))
}

func (s *source) ip(ip string, id uint32) {
	s.w.Upsert(wire.IPKey(ip), mustJSON(s.t, wire.IPIdentityPair{
		IP: net.ParseIP(ip), HostIP: net.ParseIP("172.18.0.3"), ID: id, K8sNamespace: "default", K8sPodName: "pod-" + ip,
	}))
}

func (s *source) deleteIP(ip string) { s.w.Delete(wire.IPKey(ip)) }

func (s *source) localIdentity(n uint32) uint32 { return s.id<<16 | n }

func (s *source) identity(id uint32, app string) {
	labels := wire.NewLabels(wire.LabelSourceK8s, map[string]string{
		"app": app, wire.PolicyClusterLabel: s.name, wire.PodNamespaceLabel: "default",
	})
	s.w.Upsert(wire.IdentityKey(id), []byte(labels.String()))
}

// synced writes every state canary after the keys enqueued so far,
// pruning what the run does not hold, as the mesh-apiserver does.
func (s *source) synced() {
	for _, r := range wire.Resources {
		s.w.Synced(wire.CanaryKey(r, s.name, false), wire.ClusterPrefix(r, s.name, false))
	}
}

func (s *source) flush() {
	s.t.Helper()
	if err := s.w.Flush(ctxT(s.t)); err != nil {
		s.t.Fatal(err)
	}
}

// basic publishes a small cluster: two identities, two nodes, four pods,
// two services, then the canaries.
func (s *source) basic() {
	s.config()
	s.identity(s.localIdentity(1), "rebel-base")
	s.identity(s.localIdentity(2), "x-wing")
	s.node("node-1", fmt.Sprintf("172.18.%d.1", s.id))
	s.node("node-2", fmt.Sprintf("172.18.%d.2", s.id))
	for i := 1; i <= 4; i++ {
		s.ip(fmt.Sprintf("10.%d.0.%d", s.id, i), s.localIdentity(uint32(1+i%2)))
	}
	s.service("rebel-base", fmt.Sprintf("10.%d.0.1", s.id), fmt.Sprintf("10.%d.0.3", s.id))
	s.service("other", fmt.Sprintf("10.%d.0.2", s.id))
	s.synced()
	s.flush()
}

// sourceClient is a kvstore client of the source's etcd for checks.
func (s *source) sourceClient() *kvstore.Client {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.checker == nil {
		s.checker = connect(s.t, s.srv)
	}
	return s.checker
}

// --- the local cluster -----------------------------------------------------

// local is the local cluster's etcd with a Mesh mirroring into it.
type local struct {
	t      testing.TB
	srv    *etcdtest.Server
	client *kvstore.Client
	dir    string
	mesh   *Mesh
}

// fastConfig has timings for loopback tests; loss detection keeps the
// defaults unless a test changes it.
func fastConfig(t testing.TB, l *local) Config {
	return Config{
		ClusterName: localName, ClusterID: localID,
		ConfigDir: l.dir, Local: l.client,
		PollInterval: 50 * time.Millisecond,
		MinBackoff:   20 * time.Millisecond, MaxBackoff: 300 * time.Millisecond,
		KeepAliveTime: 500 * time.Millisecond, KeepAliveTimeout: 500 * time.Millisecond,
		RequestTimeout: 2 * time.Second,
		// A source's Partition is a silence, as a black hole is
		// (etcdtest.Dial).
		Dialer: etcdtest.Dial,
		Logger: testLogger(t),
	}
}

// newLocal starts the local etcd; start runs the Mesh.
func newLocal(t testing.TB) *local {
	t.Helper()
	srv := etcdtest.Start(t)
	l := &local{t: t, srv: srv, dir: t.TempDir()}
	l.client = connect(t, srv)
	return l
}

func (l *local) start(cfg Config) *Mesh {
	l.t.Helper()
	m, err := New(cfg)
	if err != nil {
		l.t.Fatal(err)
	}
	l.mesh = m
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := m.Run(ctx); err != nil {
			l.t.Errorf("Run: %v", err)
		}
	}()
	l.t.Cleanup(func() {
		cancel()
		<-done
	})
	return m
}

// connectRemote writes the config file of s.
func (l *local) connectRemote(s *source) {
	l.t.Helper()
	writeConfig(l.t, l.dir, s.name, s.srv.Endpoints())
}

// writeConfig writes the etcd config file of cluster name into dir;
// extra is appended (TLS settings).
func writeConfig(t testing.TB, dir, name string, endpoints []string, extra ...string) {
	t.Helper()
	var b strings.Builder
	b.WriteString("endpoints:\n")
	for _, e := range endpoints {
		fmt.Fprintf(&b, "- %s\n", e)
	}
	for _, x := range extra {
		b.WriteString(x + "\n")
	}
	tmp := filepath.Join(dir, ".tmp-"+name)
	if err := os.WriteFile(tmp, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(dir, name)); err != nil {
		t.Fatal(err)
	}
}

// list reads prefix from the local etcd (every key when prefix is "").
func (l *local) list(prefix string) map[string]string {
	l.t.Helper()
	resp, err := l.srv.Client().Get(ctxT(l.t), prefix, clientv3.WithPrefix())
	if err != nil {
		l.t.Fatal(err)
	}
	out := map[string]string{}
	for _, kv := range resp.Kvs {
		out[string(kv.Key)] = string(kv.Value)
	}
	return out
}

func (l *local) has(key string) bool {
	l.t.Helper()
	_, ok := l.list(key)[key]
	return ok
}

// equal waits until the cache of s equals its source.
func (l *local) equal(s *source, timeout time.Duration) {
	l.t.Helper()
	src := s.sourceClient()
	testenv.Eventually(l.t, timeout, func() error { return Equal(ctxT(l.t), src, l.client, s.name) })
}

func (l *local) status(name string) (ClusterStatus, bool) {
	for _, st := range l.mesh.Status() {
		if st.Name == name {
			return st, true
		}
	}
	return ClusterStatus{}, false
}
