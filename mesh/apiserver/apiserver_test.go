package apiserver

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"path/filepath"
	goruntime "runtime"
	"sort"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	dynamicfake "k8s.io/client-go/dynamic/fake"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/meshbed/meshbed/internal/testenv"
	"github.com/meshbed/meshbed/mesh/identity"
	"github.com/meshbed/meshbed/mesh/pki"
	"github.com/meshbed/meshbed/mesh/wire"
)

type logWriter struct{ t testing.TB }

func (w logWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

// mesh is the PKI of a test mesh: one CA and the pairs of the users.
type mesh struct {
	ca  *pki.CA
	dir pki.Dir
}

func newMesh(t *testing.T) *mesh {
	t.Helper()
	ca, err := pki.NewCA("test-mesh", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	dir := pki.Dir(t.TempDir())
	if err := pki.IssueServerTLS(dir, ca, "cluster1", []net.IP{net.ParseIP("127.0.0.1")}, time.Hour); err != nil {
		t.Fatal(err)
	}
	return &mesh{ca: ca, dir: dir}
}

// client connects to the server's TCP endpoint as user (nil pair: no
// client certificate).
func (m *mesh) client(t *testing.T, s *Server, pair *pki.Cert) *clientv3.Client {
	t.Helper()
	c, err := clientv3.New(clientv3.Config{
		Endpoints:   s.Endpoints(),
		TLS:         pki.ClientTLSConfig(m.ca.Pool(), pair, ""),
		DialTimeout: 2 * time.Second,
		Logger:      zap.NewNop(),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func (m *mesh) pair(t *testing.T, user string) *pki.Cert {
	t.Helper()
	p, err := m.ca.IssueClient(user, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

type env struct {
	kube *fake.Clientset
	dyn  *dynamicfake.FakeDynamicClient
}

func newEnv(objs ...runtime.Object) *env {
	return &env{
		kube: fake.NewClientset(objs...),
		dyn:  dynamicfake.NewSimpleDynamicClientWithCustomListKinds(runtime.NewScheme(), identity.ListKinds()),
	}
}

// start starts and runs an apiserver of cluster1 (ID 1) until the test
// ends or stop is called; it returns once the initial export is synced.
func start(t *testing.T, m *mesh, e *env, tweak func(*Config)) (s *Server, stop func()) {
	t.Helper()
	cfg := Config{
		ClusterName:       "cluster1",
		ClusterID:         1,
		Kube:              e.kube,
		Dynamic:           e.dyn,
		ListenAddress:     "127.0.0.1:0",
		TLSDir:            m.dir,
		RemoteClusters:    []string{"cluster2"},
		HeartbeatInterval: 100 * time.Millisecond,
		TickMs:            10,
		ElectionMs:        50,
		Logger:            slog.New(slog.NewTextHandler(logWriter{t}, nil)),
	}
	if tweak != nil {
		tweak(&cfg)
	}
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	if err := s.Start(ctx); err != nil {
		cancel()
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	stopped := false
	stop = func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
		if err := s.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	}
	t.Cleanup(stop)
	select {
	case <-s.Synced():
	case err := <-done:
		t.Fatalf("Run returned before sync: %v", err)
	case <-time.After(20 * time.Second):
		t.Fatal("initial export not synced after 20s")
	}
	fctx, fcancel := context.WithTimeout(ctx, 10*time.Second)
	defer fcancel()
	if err := s.Flush(fctx); err != nil {
		t.Fatal(err)
	}
	return s, stop
}

// eventually polls cond every 20 ms until it returns "" or 10 s pass.
func eventually(t *testing.T, cond func() string) {
	t.Helper()
	testenv.Eventually(t, 10*time.Second, func() error {
		if msg := cond(); msg != "" {
			return errors.New(msg)
		}
		return nil
	})
}

func get(t *testing.T, s *Server, key string) (string, bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	v, found, err := s.Client().Get(ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	return string(v), found
}

// dump lists every key under cilium/ with its value; timestamps are
// checked and replaced so that the result is stable.
func dump(t *testing.T, s *Server) (string, map[string]*kv) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := s.Client().Etcd().Get(ctx, wire.Root, clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	kvs := map[string]*kv{}
	var b strings.Builder
	for _, x := range resp.Kvs {
		k, v := string(x.Key), string(x.Value)
		kvs[k] = &kv{value: v, create: x.CreateRevision, mod: x.ModRevision, lease: x.Lease}
		if k == wire.HeartbeatKey || strings.HasPrefix(k, wire.SyncedRoot) {
			if _, err := time.Parse(time.RFC3339Nano, v); err != nil {
				t.Fatalf("%s = %q: not a timestamp: %v", k, v, err)
			}
			v = "<timestamp>"
		}
		fmt.Fprintf(&b, "%s\n%s\n\n", k, v)
	}
	return b.String(), kvs
}

type kv struct {
	value       string
	create, mod int64
	lease       int64
}

func golden(t *testing.T, name, got string) {
	t.Helper()
	testenv.Golden(t, filepath.Join("testdata", name+".golden"), []byte(got))
}

// cluster1 is a small cluster: two nodes, services of every kind, pods.
func cluster1() []runtime.Object {
	global := map[string]string{"service.cilium.io/global": "true"}
	rebel := pod("default", "rebel-base-6d4f8-abcde", "10.10.1.7", "172.18.0.3",
		map[string]string{"name": "rebel-base", "pod-template-hash": "6d4f8"})
	rebel2 := pod("default", "rebel-base-6d4f8-fghij", "10.10.2.9", "172.18.0.4",
		map[string]string{"name": "rebel-base", "pod-template-hash": "6d4f8"})
	xwing := pod("default", "x-wing-5c7d9-klmno", "10.10.1.8", "172.18.0.3", map[string]string{"name": "x-wing"})
	xwing.Spec.Containers[0].Ports = nil
	hostNet := pod("kube-system", "kube-proxy-abc", "172.18.0.3", "172.18.0.3", map[string]string{"k8s-app": "kube-proxy"})
	hostNet.Spec.HostNetwork = true
	pending := pod("default", "pending", "", "", map[string]string{"name": "pending"})
	return []runtime.Object{
		node("cluster1-control-plane", "172.18.0.3", "10.10.1.0/24"),
		node("cluster1-worker", "172.18.0.4", "10.10.2.0/24"),
		svc("default", "rebel-base", global, "10.11.0.42"),
		slice("default", "rebel-base", "rebel-base-1", 80,
			ep{addr: "10.10.1.7", ready: yes}, ep{addr: "10.10.2.9", ready: yes}),
		svc("default", "hidden", map[string]string{"service.cilium.io/global": "true", "service.cilium.io/shared": "false"}, "10.11.0.43"),
		slice("default", "hidden", "hidden-1", 80, ep{addr: "10.10.1.7"}),
		svc("default", "local-only", nil, "10.11.0.44"),
		svc("default", "legacy", map[string]string{"io.cilium/global-service": "TRUE"}, "10.11.0.45"),
		svc("default", "headless", global, "None"),
		slice("default", "headless", "headless-1", 8080, ep{addr: "10.10.2.9"}),
		rebel, rebel2, xwing, hostNet, pending,
	}
}

func TestExport(t *testing.T) {
	m := newMesh(t)
	s, _ := start(t, m, newEnv(cluster1()...), nil)
	// The heartbeat is on the same lease as everything else; wait for it
	// like for any key.
	eventually(t, func() string {
		if _, ok := get(t, s, wire.HeartbeatKey); !ok {
			return "no heartbeat"
		}
		return ""
	})
	got, kvs := dump(t, s)
	golden(t, "export", got)

	// Every value is accepted by the reader a remote cluster runs.
	for k, v := range kvs {
		var err error
		switch {
		case strings.HasPrefix(k, wire.NodesPrefix):
			_, err = wire.DecodeNode(k, []byte(v.value), "cluster1", 1)
		case strings.HasPrefix(k, wire.ServicesPrefix):
			_, err = wire.DecodeClusterService(k, []byte(v.value), "cluster1", 1)
		case strings.HasPrefix(k, wire.IPPrefix):
			_, err = wire.DecodeIPIdentityPair(k, []byte(v.value), "cluster1", 1, 255)
		case strings.HasPrefix(k, wire.IdentitiesPrefix):
			_, err = wire.DecodeIdentity(k, []byte(v.value), "cluster1", 1, 255)
		case strings.HasPrefix(k, wire.ClusterConfigRoot):
			_, err = wire.DecodeClusterConfig(k, []byte(v.value), "cluster1")
		}
		if err != nil {
			t.Errorf("reader rejects %s: %v", k, err)
		}
		if v.lease == 0 {
			t.Errorf("%s is not on a lease", k)
		}
	}
}

// TestCanaryAfterInitialKeys checks the sync contract on a cluster large
// enough for the initial export to take many writes: each canary's
// revision is above that of every key under its prefix, and a reader
// watching from before Run never sees a canary before its keys.
func TestCanaryAfterInitialKeys(t *testing.T) {
	var objs []runtime.Object
	for i := range 20 {
		objs = append(objs, node(fmt.Sprintf("n%d", i), fmt.Sprintf("172.18.0.%d", i+10), fmt.Sprintf("10.10.%d.0/24", i)))
	}
	for i := range 60 {
		objs = append(objs, pod("default", fmt.Sprintf("p%d", i), fmt.Sprintf("10.10.%d.%d", i%20, i+2), fmt.Sprintf("172.18.0.%d", i%20+10),
			map[string]string{"app": fmt.Sprintf("app%d", i%15)}))
	}
	for i := range 20 {
		name := fmt.Sprintf("s%d", i)
		objs = append(objs, svc("default", name, map[string]string{"service.cilium.io/global": "true"}, fmt.Sprintf("10.11.0.%d", i+1)),
			slice("default", name, name+"-1", 80, ep{addr: fmt.Sprintf("10.10.%d.%d", i, i+2)}))
	}
	m := newMesh(t)
	s, _ := start(t, m, newEnv(objs...), nil)
	_, kvs := dump(t, s)
	counts := map[wire.Resource]int{}
	for _, r := range wire.Resources {
		canary, ok := kvs[wire.CanaryKey(r, "cluster1", false)]
		if !ok {
			t.Fatalf("no canary for %s", r)
		}
		prefix := wire.ClusterPrefix(r, "cluster1", false)
		for k, v := range kvs {
			if !strings.HasPrefix(k, prefix) {
				continue
			}
			counts[r]++
			if v.create >= canary.create {
				t.Errorf("%s created at revision %d, after its canary (%d)", k, v.create, canary.create)
			}
		}
	}
	want := map[wire.Resource]int{wire.Nodes: 20, wire.IP: 60, wire.Services: 20, wire.Identities: 15}
	if fmt.Sprint(counts) != fmt.Sprint(want) {
		t.Fatalf("exported %v, want %v", counts, want)
	}
}

func TestServiceUpdates(t *testing.T) {
	ctx := context.Background()
	m := newMesh(t)
	e := newEnv(svc("default", "rebel-base", map[string]string{"service.cilium.io/global": "true"}, "10.11.0.42"),
		slice("default", "rebel-base", "rebel-base-1", 80, ep{addr: "10.10.1.7"}))
	s, _ := start(t, m, e, nil)
	key := wire.ServiceKey("cluster1", "default", "rebel-base")
	backends := func() (string, bool) {
		v, ok := get(t, s, key)
		if !ok {
			return "", false
		}
		cs, err := wire.DecodeClusterService(key, []byte(v), "cluster1", 1)
		if err != nil {
			t.Fatal(err)
		}
		return strings.Join(sortedKeys(cs.Backends), ","), true
	}
	expect := func(want string, exported bool) {
		t.Helper()
		eventually(t, func() string {
			got, ok := backends()
			if ok != exported || got != want {
				return fmt.Sprintf("service exported=%v backends %q, want exported=%v %q", ok, got, exported, want)
			}
			return ""
		})
	}
	expect("10.10.1.7", true)

	setAnnotations := func(ann map[string]string) {
		t.Helper()
		cur, err := e.kube.CoreV1().Services("default").Get(ctx, "rebel-base", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		cur.Annotations = ann
		if _, err := e.kube.CoreV1().Services("default").Update(ctx, cur, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	setSlice := func(es *discoveryv1.EndpointSlice) {
		t.Helper()
		if _, err := e.kube.DiscoveryV1().EndpointSlices("default").Update(ctx, es, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
	}

	t.Run("shared=false withdraws", func(t *testing.T) {
		setAnnotations(map[string]string{"service.cilium.io/global": "true", "service.cilium.io/shared": "false"})
		expect("", false)
	})
	t.Run("shared=true exports again", func(t *testing.T) {
		setAnnotations(map[string]string{"service.cilium.io/global": "true", "service.cilium.io/shared": "True"})
		expect("10.10.1.7", true)
	})
	t.Run("new ready endpoint", func(t *testing.T) {
		setSlice(slice("default", "rebel-base", "rebel-base-1", 80, ep{addr: "10.10.1.7"}, ep{addr: "10.10.2.9", ready: yes}))
		expect("10.10.1.7,10.10.2.9", true)
	})
	t.Run("terminating dropped even while serving, not ready dropped", func(t *testing.T) {
		setSlice(slice("default", "rebel-base", "rebel-base-1", 80,
			ep{addr: "10.10.1.7", ready: no, serving: yes, terminating: yes},
			ep{addr: "10.10.2.9", ready: no, serving: no},
			ep{addr: "10.10.2.10", ready: yes}))
		expect("10.10.2.10", true)
		setSlice(slice("default", "rebel-base", "rebel-base-1", 80, ep{addr: "10.10.1.7"}))
		expect("10.10.1.7", true)
	})
	t.Run("second slice", func(t *testing.T) {
		if _, err := e.kube.DiscoveryV1().EndpointSlices("default").Create(ctx,
			slice("default", "rebel-base", "rebel-base-2", 80, ep{addr: "10.10.3.3"}), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		expect("10.10.1.7,10.10.3.3", true)
	})
	t.Run("slice deleted", func(t *testing.T) {
		if err := e.kube.DiscoveryV1().EndpointSlices("default").Delete(ctx, "rebel-base-1", metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		expect("10.10.3.3", true)
	})
	t.Run("no longer global", func(t *testing.T) {
		setAnnotations(nil)
		expect("", false)
	})
	t.Run("global again, then deleted", func(t *testing.T) {
		setAnnotations(map[string]string{"io.cilium/global-service": "true"})
		expect("10.10.3.3", true)
		if err := e.kube.CoreV1().Services("default").Delete(ctx, "rebel-base", metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		expect("", false)
	})
}

func TestPodAndNodeUpdates(t *testing.T) {
	ctx := context.Background()
	m := newMesh(t)
	e := newEnv(node("n1", "172.18.0.3", "10.10.1.0/24"))
	s, _ := start(t, m, e, nil)
	ipKey := wire.IPKey("10.10.1.7")
	idOf := func() (uint32, bool) {
		v, ok := get(t, s, ipKey)
		if !ok {
			return 0, false
		}
		p, err := wire.DecodeIPIdentityPair(ipKey, []byte(v), "cluster1", 1, 255)
		if err != nil {
			t.Fatal(err)
		}
		return p.ID, true
	}
	p := pod("default", "a", "", "", map[string]string{"app": "a"})
	if _, err := e.kube.CoreV1().Pods("default").Create(ctx, p, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	// Scheduled and given an IP: exported with a fresh identity.
	p.Status.PodIP, p.Status.HostIP = "10.10.1.7", "172.18.0.3"
	p.Status.PodIPs = []corev1.PodIP{{IP: "10.10.1.7"}}
	if _, err := e.kube.CoreV1().Pods("default").UpdateStatus(ctx, p, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	var first uint32
	eventually(t, func() string {
		id, ok := idOf()
		if !ok {
			return "pod IP not exported"
		}
		first = id
		return ""
	})
	labels, ok := get(t, s, wire.IdentityKey(first))
	if !ok || labels != "k8s:app=a;k8s:io.cilium.k8s.policy.cluster=cluster1;k8s:io.kubernetes.pod.namespace=default;" {
		t.Fatalf("identity %d = %q, %v", first, labels, ok)
	}
	// New labels: new identity on the same IP.
	p.Labels = map[string]string{"app": "b"}
	if _, err := e.kube.CoreV1().Pods("default").Update(ctx, p, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, func() string {
		if id, _ := idOf(); id == first || id == 0 {
			return fmt.Sprintf("identity still %d", id)
		}
		return ""
	})
	// Deleted: the ipcache entry goes, identities stay (they are the
	// cluster's, not the pod's).
	if err := e.kube.CoreV1().Pods("default").Delete(ctx, "a", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, func() string {
		if _, ok := idOf(); ok {
			return "ipcache entry of deleted pod still there"
		}
		return ""
	})
	if _, ok := get(t, s, wire.IdentityKey(first)); !ok {
		t.Fatal("identity withdrawn with its pod")
	}
	// Nodes.
	if err := e.kube.CoreV1().Nodes().Delete(ctx, "n1", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, func() string {
		if _, ok := get(t, s, wire.NodeKey("cluster1", "n1")); ok {
			return "deleted node still exported"
		}
		return ""
	})
}

// errSetup marks a read that found nothing: the test's own mistake, not a
// refusal.
var errSetup = errors.New("key not found (test setup)")

// TestAccess checks who may do what on the etcd, through its TCP endpoint
// with real mTLS.
func TestAccess(t *testing.T) {
	m := newMesh(t)
	s, _ := start(t, m, newEnv(cluster1()...), nil)
	other, err := pki.NewCA("other-mesh", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	stranger, err := other.IssueClient("remote-cluster2", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	// Keys that exist for reads; a foreign cluster-config and cache entry
	// as kvstoremesh would write them.
	cfg2 := wire.ClusterConfigKey("cluster2")
	cache2 := wire.CacheNodesPrefix + "/cluster2/n1"
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for _, k := range []string{cfg2, cache2, wire.SyncedKey("cluster2", wire.CacheNodesPrefix)} {
		if err := s.Client().Put(ctx, k, []byte("{}")); err != nil {
			t.Fatal(err)
		}
	}
	ownNode := wire.NodeKey("cluster1", "cluster1-worker")
	ownCanary := wire.CanaryKey(wire.Nodes, "cluster1", false)

	type op struct {
		write bool
		key   string
		ok    bool
		// prefix: a read of key as a prefix (writes are single keys).
		prefix bool
	}
	tests := []struct {
		user string
		pair *pki.Cert
		ops  []op
	}{
		{"remote-cluster2", m.pair(t, "remote-cluster2"), []op{
			{false, ownNode, true, false},
			{false, wire.ClusterConfigKey("cluster1"), true, false},
			{false, ownCanary, true, false},
			{false, wire.HeartbeatKey, true, false},
			// As Cilium's etcd client reads it, before anything else.
			{false, wire.HeartbeatKey, true, true},
			{false, wire.ClusterConfigRoot, false, true},
			{false, cfg2, false, false},
			{false, cache2, false, false},
			{false, wire.SyncedKey("cluster2", wire.CacheNodesPrefix), false, false},
			{true, ownNode, false, false},
			{true, wire.StateRoot + "x", false, false},
			{true, cache2, false, false},
		}},
		{"local-cluster1", m.pair(t, "local-cluster1"), []op{
			{false, ownNode, true, false},
			{false, cfg2, true, false},
			{false, cache2, true, false},
			{false, wire.SyncedKey("cluster2", wire.CacheNodesPrefix), true, false},
			{false, wire.HeartbeatKey, true, false},
			{false, wire.HeartbeatKey, true, true},
			{true, cache2, false, false},
			{true, ownNode, false, false},
		}},
		{"kvstoremesh-cluster1", m.pair(t, "kvstoremesh-cluster1"), []op{
			{false, ownNode, true, false},
			{true, cache2, true, false},
			{true, cfg2, true, false},
			{true, wire.SyncedKey("cluster2", wire.CacheNodesPrefix), true, false},
			{true, ownNode, false, false},
			{true, wire.HeartbeatKey, false, false},
		}},
		// A certificate of the mesh CA for a user that does not exist.
		{"unknown remote", m.pair(t, "remote-cluster9"), []op{
			{false, ownNode, false, false},
		}},
		// Another cluster's admin and agents: same CA, no such users here.
		{"admin-cluster2", m.pair(t, "admin-cluster2"), []op{
			{false, ownNode, false, false},
			{true, ownNode, false, false},
		}},
		{"local-cluster2", m.pair(t, "local-cluster2"), []op{
			{false, ownNode, false, false},
			{false, cache2, false, false},
		}},
		// The names an older meshbed issued in every cluster.
		{"local-agent", m.pair(t, "local-agent"), []op{{false, ownNode, false, false}}},
		{"kvstoremesh", m.pair(t, "kvstoremesh"), []op{{false, ownNode, false, false}}},
		{"no certificate", nil, []op{{false, ownNode, false, false}}},
		{"certificate of another CA", stranger, []op{{false, ownNode, false, false}}},
	}
	for _, tt := range tests {
		t.Run(tt.user, func(t *testing.T) {
			c := m.client(t, s, tt.pair)
			for _, o := range tt.ops {
				ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
				var err error
				if o.write {
					_, err = c.Put(ctx, o.key, "{}")
				} else {
					var resp *clientv3.GetResponse
					var opts []clientv3.OpOption
					if o.prefix {
						opts = append(opts, clientv3.WithPrefix())
					}
					resp, err = c.Get(ctx, o.key, opts...)
					if err == nil && len(resp.Kvs) == 0 {
						err = fmt.Errorf("key %s: %w", o.key, errSetup)
					}
				}
				cancel()
				if (err == nil) != o.ok {
					t.Errorf("write=%v %s: err = %v, want allowed=%v", o.write, o.key, err, o.ok)
				}
				if err != nil && errors.Is(err, errSetup) {
					t.Errorf("write=%v %s: %v", o.write, o.key, err)
				}
				if err != nil {
					t.Logf("write=%v %s: refused: %v", o.write, o.key, err)
				}
			}
		})
	}

	t.Run("remote users follow SetRemoteClusters", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := s.SetRemoteClusters(ctx, []string{"cluster3"}); err != nil {
			t.Fatal(err)
		}
		for user, ok := range map[string]bool{"remote-cluster2": false, "remote-cluster3": true} {
			c := m.client(t, s, m.pair(t, user))
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
			_, err := c.Get(ctx, ownNode)
			cancel()
			if (err == nil) != ok {
				t.Errorf("%s: err = %v, want allowed=%v", user, err, ok)
			}
		}
		if err := s.SetRemoteClusters(ctx, []string{"Bad_Name"}); err == nil {
			t.Error("invalid cluster name accepted")
		}
	})
}

// TestIdentitiesStableAcrossRestart restarts the apiserver (fresh etcd,
// same Kubernetes API) and expects the very same identities.
func TestIdentitiesStableAcrossRestart(t *testing.T) {
	m := newMesh(t)
	e := newEnv(cluster1()...)
	s, stop := start(t, m, e, nil)
	first, kvs := dump(t, s)
	stop()
	if len(kvs) == 0 {
		t.Fatal("nothing exported")
	}
	s2, _ := start(t, m, e, nil)
	second, _ := dump(t, s2)
	// Heartbeat timing may differ; compare identities and ipcache.
	pick := func(d string) string {
		var keep []string
		for _, rec := range strings.Split(d, "\n\n") {
			if strings.HasPrefix(rec, wire.IPPrefix) || strings.HasPrefix(rec, wire.IdentitiesPrefix) {
				keep = append(keep, rec)
			}
		}
		sort.Strings(keep)
		return strings.Join(keep, "\n\n")
	}
	if a, b := pick(first), pick(second); a != b || a == "" {
		t.Fatalf("identities changed across restart:\n--- before\n%s\n--- after\n%s", a, b)
	}
	list, err := e.dyn.Resource(identity.GVR).List(context.Background(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(list.Items) != 2 {
		t.Fatalf("%d MeshIdentity resources after restart, want 2 (rebel-base, x-wing)", len(list.Items))
	}
}

func TestNewRejectsBadConfig(t *testing.T) {
	e := newEnv()
	good := Config{ClusterName: "c1", ClusterID: 1, Kube: e.kube, Dynamic: e.dyn, ListenAddress: "127.0.0.1:0", TLSDir: "/x"}
	tests := []struct {
		name   string
		mutate func(*Config)
		want   string
	}{
		{"bad name", func(c *Config) { c.ClusterName = "C1" }, "cluster name"},
		{"ID 0", func(c *Config) { c.ClusterID = 0 }, "cluster ID"},
		{"ID above 255", func(c *Config) { c.ClusterID = 256 }, "cluster ID"},
		{"ID 300 fine with 511", func(c *Config) { c.ClusterID = 300; c.MaxConnectedClusters = 511 }, ""},
		{"max connected 100", func(c *Config) { c.MaxConnectedClusters = 100 }, "maxConnectedClusters"},
		{"no kube", func(c *Config) { c.Kube = nil }, "Kubernetes"},
		{"listen without port", func(c *Config) { c.ListenAddress = "127.0.0.1" }, "listen address"},
		{"no TLS", func(c *Config) { c.TLSDir = "" }, "TLS"},
		{"bad remote", func(c *Config) { c.RemoteClusters = []string{"-x"} }, "remote cluster"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := good
			tt.mutate(&cfg)
			_, err := New(cfg)
			if tt.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want mention of %q", err, tt.want)
			}
		})
	}
}

// TestNoGoroutineLeak starts and stops an apiserver and expects every
// goroutine it started (etcd, informers, writer, heartbeat) to be gone.
func TestNoGoroutineLeak(t *testing.T) {
	m := newMesh(t)
	e := newEnv(cluster1()...)
	// A first run warms up process-wide goroutines (gRPC, klog) that
	// outlive any one server by design.
	_, stop := start(t, m, e, nil)
	stop()
	before := goruntime.NumGoroutine()
	_, stop = start(t, m, e, nil)
	stop()
	eventually(t, func() string {
		if n := goruntime.NumGoroutine(); n > before {
			return fmt.Sprintf("%d goroutines after stop, %d before start", n, before)
		}
		return ""
	})
}

// BenchmarkStartAndSync measures a cold start: etcd, auth, informers,
// identity allocation and the initial export of 40 nodes, 400 pods (40
// label sets) and 40 global services, up to every canary committed.
func BenchmarkStartAndSync(b *testing.B) {
	var objs []runtime.Object
	for i := range 40 {
		objs = append(objs, node(fmt.Sprintf("n%d", i), fmt.Sprintf("172.18.1.%d", i+1), fmt.Sprintf("10.10.%d.0/24", i)))
		name := fmt.Sprintf("s%d", i)
		objs = append(objs, svc("default", name, map[string]string{"service.cilium.io/global": "true"}, fmt.Sprintf("10.11.0.%d", i+1)),
			slice("default", name, name+"-1", 80, ep{addr: fmt.Sprintf("10.10.%d.2", i)}))
	}
	for i := range 400 {
		objs = append(objs, pod("default", fmt.Sprintf("p%d", i), fmt.Sprintf("10.10.%d.%d", i%40, i/40+2), fmt.Sprintf("172.18.1.%d", i%40+1),
			map[string]string{"app": fmt.Sprintf("app%d", i%40)}))
	}
	ca, err := pki.NewCA("bench", time.Hour)
	if err != nil {
		b.Fatal(err)
	}
	dir := pki.Dir(b.TempDir())
	if err := pki.IssueServerTLS(dir, ca, "cluster1", nil, time.Hour); err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		e := newEnv(objs...)
		s, err := New(Config{ClusterName: "cluster1", ClusterID: 1, Kube: e.kube, Dynamic: e.dyn,
			ListenAddress: "127.0.0.1:0", TLSDir: dir, TickMs: 10, ElectionMs: 50})
		if err != nil {
			b.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		if err := s.Start(ctx); err != nil {
			b.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { done <- s.Run(ctx) }()
		<-s.Synced()
		if err := s.Flush(ctx); err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		cancel()
		<-done
		s.Close()
		b.StartTimer()
	}
	b.ReportMetric(float64(b.Elapsed().Milliseconds())/float64(b.N), "ms/start")
}

// TestSharedPodIP: a terminating pod and its successor may hold the same
// address for a while; the entry follows the pods that still exist.
func TestSharedPodIP(t *testing.T) {
	ctx := context.Background()
	m := newMesh(t)
	e := newEnv()
	s, _ := start(t, m, e, nil)
	key := wire.IPKey("10.10.1.7")
	podOf := func() string {
		v, ok := get(t, s, key)
		if !ok {
			return ""
		}
		p, err := wire.DecodeIPIdentityPair(key, []byte(v), "cluster1", 1, 255)
		if err != nil {
			t.Fatal(err)
		}
		return p.K8sPodName
	}
	expect := func(want string) {
		t.Helper()
		eventually(t, func() string {
			if got := podOf(); got != want {
				return fmt.Sprintf("%s belongs to %q, want %q", key, got, want)
			}
			return ""
		})
	}
	pods := e.kube.CoreV1().Pods("default")
	a := pod("default", "a", "10.10.1.7", "172.18.0.3", map[string]string{"app": "a"})
	if _, err := pods.Create(ctx, a, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	expect("a")
	if _, err := pods.Create(ctx, pod("default", "b", "10.10.1.7", "172.18.0.4", map[string]string{"app": "b"}), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	expect("b")
	// The old pod changes again and takes the entry back...
	a.Labels = map[string]string{"app": "a2"}
	if _, err := pods.Update(ctx, a, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	expect("a")
	// ...and when it is gone, the entry is the successor's, not deleted.
	if err := pods.Delete(ctx, "a", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	expect("b")
	if err := pods.Delete(ctx, "b", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	expect("")
}
