//go:build interop

package interop_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
	"go.etcd.io/etcd/server/v3/storage/mvcc"

	"github.com/meshbed/meshbed/datapath/netns"
	"github.com/meshbed/meshbed/internal/testenv"
	"github.com/meshbed/meshbed/mesh/wire"
	"github.com/meshbed/meshbed/sim"
)

// manifest is a global echo service of replicas backends and an idle
// client, applied to both clusters.
func manifest(replicas int) string {
	return fmt.Sprintf(`
apiVersion: v1
kind: Service
metadata:
  name: interop-echo
  annotations:
    service.cilium.io/global: "true"
spec:
  selector: {name: interop-echo}
  ports:
    - {name: http, port: 80, targetPort: 80}
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: interop-echo
spec:
  replicas: %d
  selector:
    matchLabels: {name: interop-echo}
  template:
    metadata:
      labels: {name: interop-echo}
    spec:
      containers:
        - name: echo
          image: docker.io/cilium/json-mock:1.2
          ports:
            - {name: http, containerPort: 80}
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: interop-client
spec:
  replicas: 1
  selector:
    matchLabels: {name: interop-client}
  template:
    metadata:
      labels: {name: interop-client}
    spec:
      containers:
        - name: client
          image: docker.io/curlimages/curl:8.10.1
`, replicas)
}

// TestCiliumKVStoreMesh runs Cilium's own kvstoremesh (the
// clustermesh-apiserver binary of a Cilium release, built by hack/interop.sh)
// beside meshbed's in cluster1 of a simulated two-cluster mesh: it reads
// cluster2's mesh-apiserver with the same config directory and certificate
// as meshbed's kvstoremesh and writes into an etcd of its own. Its cache of
// cluster2 must equal the one meshbed's kvstoremesh keeps in cluster1's
// mesh-apiserver, key for key and byte for byte, after the bring-up and
// again after cluster2's service scales down (updates and deletions).
func TestCiliumKVStoreMesh(t *testing.T) {
	bin := ciliumBinary(t)
	m := startMesh(t)
	c1, _ := m.Cluster("cluster1")
	c2, _ := m.Cluster("cluster2")
	deploy(t, m, manifest(3))

	// Cilium's kvstoremesh lives in a node namespace of cluster1, from
	// where cluster2's mesh-apiserver is reachable, with its etcd on the
	// namespace's loopback.
	ns := c1.Nodes()[0].NS()
	local := startLocalEtcd(t, ns)
	startCilium(t, bin, ns, c1, local)

	svcKey := wire.CacheServicesPrefix + "/cluster2/default/interop-echo"
	sameCaches(t, c1, local, func(cache map[string][]byte) error {
		return errors.Join(wantBackends(cache, svcKey, 3), wantIPs(cache, 4))
	})

	// A scale change in cluster2: service backends updated, ip entries of
	// the removed pods deleted. Both caches follow, and stay equal.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := m.Apply(ctx, c2.Name(), []byte(manifest(1))); err != nil {
		t.Fatal(err)
	}
	sameCaches(t, c1, local, func(cache map[string][]byte) error {
		return errors.Join(wantBackends(cache, svcKey, 1), wantIPs(cache, 2))
	})
}

// ciliumBinary is Cilium's clustermesh-apiserver, or a skip when the
// interop run was not asked for.
func ciliumBinary(t *testing.T) string {
	t.Helper()
	if os.Getenv("MESHBED_INTEROP") != "1" {
		t.Skip("interop tests run with make interop (MESHBED_INTEROP=1)")
	}
	testenv.Privileged(t)
	bin := os.Getenv("CILIUM_CLUSTERMESH_APISERVER")
	if bin == "" {
		t.Fatal("CILIUM_CLUSTERMESH_APISERVER is not set (hack/interop.sh builds it)")
	}
	if _, err := os.Stat(bin); err != nil {
		t.Fatalf("Cilium's clustermesh-apiserver: %v", err)
	}
	return bin
}

// startMesh brings up two clusters of two nodes with kvstoremesh.
func startMesh(t *testing.T) *sim.Mesh {
	t.Helper()
	spec := sim.Spec{KVStoreMesh: true, Seed: 1, Logger: bufferedLogger(t, "mesh")}
	for i := 1; i <= 2; i++ {
		spec.Clusters = append(spec.Clusters, sim.ClusterSpec{
			Name: fmt.Sprintf("cluster%d", i), ID: uint32(i), Nodes: 2,
			PodCIDR:     netip.MustParsePrefix(fmt.Sprintf("10.%d.0.0/16", 10*i)),
			ServiceCIDR: netip.MustParsePrefix(fmt.Sprintf("10.%d.0.0/16", 10*i+1)),
		})
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	m, err := sim.New(ctx, spec)
	if err != nil {
		t.Fatalf("build mesh: %v", err)
	}
	t.Cleanup(func() {
		if err := m.Close(); err != nil {
			t.Errorf("close mesh: %v", err)
		}
	})
	return m
}

func deploy(t *testing.T, m *sim.Mesh, manifest string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	for _, c := range m.Clusters() {
		if err := m.Apply(ctx, c.Name(), []byte(manifest)); err != nil {
			t.Fatalf("apply to %s: %v", c.Name(), err)
		}
	}
	if err := m.Settle(ctx); err != nil {
		t.Fatalf("settle: %v", err)
	}
}

// localEtcd is the etcd Cilium's kvstoremesh writes its cache into.
type localEtcd struct {
	e   *embed.Etcd
	url string
}

// startLocalEtcd starts an embedded etcd listening on ns's loopback (its
// listeners are made inside ns; the test reads it through the server's
// store, not the network).
func startLocalEtcd(t *testing.T, ns *netns.NS) *localEtcd {
	t.Helper()
	dir := t.TempDir()
	cfg := embed.NewConfig()
	cfg.Name = "cilium-kvstoremesh"
	cfg.Dir = filepath.Join(dir, "data")
	cfg.Logger, cfg.LogLevel = "zap", "error"
	cfg.LogOutputs = []string{filepath.Join(dir, "etcd.log")}
	cfg.TickMs, cfg.ElectionMs = 10, 100
	client := mustURL(t, "http://127.0.0.1:23790")
	peer := mustURL(t, "http://127.0.0.1:23800")
	cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []urlT{client}, []urlT{client}
	cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []urlT{peer}, []urlT{peer}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	var e *embed.Etcd
	if err := ns.Do(func() (err error) { e, err = embed.StartEtcd(cfg); return err }); err != nil {
		t.Fatalf("local etcd: %v", err)
	}
	t.Cleanup(e.Close)
	select {
	case <-e.Server.ReadyNotify():
	case <-time.After(30 * time.Second):
		t.Fatal("local etcd not ready after 30s")
	}
	return &localEtcd{e: e, url: client.String()}
}

// scan reads every key under prefix from the store.
func (l *localEtcd) scan(prefix string) (map[string][]byte, error) {
	end := []byte(prefix)
	end[len(end)-1]++
	r, err := l.e.Server.KV().Range(context.Background(), []byte(prefix), end, mvcc.RangeOptions{})
	if err != nil {
		return nil, err
	}
	out := make(map[string][]byte, len(r.KVs))
	for _, kv := range r.KVs {
		out[string(kv.Key)] = kv.Value
	}
	return out, nil
}

// startCilium runs `clustermesh-apiserver kvstoremesh` for cluster c in ns,
// with c's kvstoremesh config directory (Cilium's format, written by the
// simulator for meshbed's own kvstoremesh) and local as its etcd. Its log
// is shown when the test fails.
func startCilium(t *testing.T, bin string, ns *netns.NS, c *sim.Cluster, local *localEtcd) {
	t.Helper()
	dir := t.TempDir()
	etcdConfig := filepath.Join(dir, "etcd-config.yaml")
	if err := os.WriteFile(etcdConfig, []byte("endpoints:\n- "+local.url+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	logPath := filepath.Join(dir, "kvstoremesh.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer logFile.Close()
	cmd := exec.Command(bin, "kvstoremesh",
		"--cluster-name="+c.Name(),
		fmt.Sprintf("--cluster-id=%d", c.Spec().ID),
		"--kvstore=etcd",
		"--kvstore-opt=etcd.config="+etcdConfig,
		"--clustermesh-config="+c.KVStoreMeshConfigDir(),
		"--enable-heartbeat=true",
		"--health-port=29881",
		"--api-serve-addr=127.0.0.1:29889",
		"--enable-gops=false",
	)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	// The child is forked from the thread that is inside ns, so it starts
	// there.
	if err := ns.Do(cmd.Start); err != nil {
		t.Fatalf("start Cilium's kvstoremesh: %v", err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	t.Cleanup(func() {
		select {
		case err := <-done:
			t.Errorf("Cilium's kvstoremesh exited during the test: %v", err)
		default:
			_ = cmd.Process.Signal(os.Interrupt)
			select {
			case <-done:
			case <-time.After(10 * time.Second):
				_ = cmd.Process.Kill()
				<-done
			}
		}
		if t.Failed() {
			out, _ := os.ReadFile(logPath)
			t.Logf("Cilium kvstoremesh log (last 8 KB):\n%s", tail(out, 8<<10))
		}
	})
}

// sameCaches waits until meshbed's kvstoremesh cache in c and Cilium's in
// local hold the same keys with the same values, and want holds for them;
// it fails with the difference otherwise.
func sameCaches(t *testing.T, c *sim.Cluster, local *localEtcd, want func(map[string][]byte) error) {
	t.Helper()
	start := time.Now()
	var ours map[string][]byte
	testenv.Eventually(t, 90*time.Second, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		var err error
		if ours, err = c.KVStoreScan(ctx, wire.CacheRoot); err != nil {
			return err
		}
		if err := want(ours); err != nil {
			return fmt.Errorf("meshbed's cache: %w", err)
		}
		theirs, err := local.scan(wire.CacheRoot)
		if err != nil {
			return err
		}
		return diff(ours, theirs)
	})
	t.Logf("caches equal after %v: %s", time.Since(start).Round(time.Millisecond), summary(ours))
}

// wantBackends checks the number of backends of the service value at key.
func wantBackends(cache map[string][]byte, key string, n int) error {
	v, ok := cache[key]
	if !ok {
		return fmt.Errorf("no %s", key)
	}
	var svc struct {
		Backends map[string]json.RawMessage `json:"backends"`
	}
	if err := json.Unmarshal(v, &svc); err != nil {
		return fmt.Errorf("%s: %w", key, err)
	}
	if len(svc.Backends) != n {
		return fmt.Errorf("%s has %d backends, want %d", key, len(svc.Backends), n)
	}
	return nil
}

// wantIPs checks the number of cluster2's ip entries (its pods: the echo
// backends and the client).
func wantIPs(cache map[string][]byte, n int) error {
	got := 0
	for k := range cache {
		if strings.HasPrefix(k, wire.CacheIPPrefix+"/cluster2/") {
			got++
		}
	}
	if got != n {
		return fmt.Errorf("%d ip entries of cluster2, want %d", got, n)
	}
	return nil
}

// diff describes how Cilium's cache differs from meshbed's, or is nil.
func diff(ours, theirs map[string][]byte) error {
	var lines []string
	for k, v := range ours {
		w, ok := theirs[k]
		switch {
		case !ok:
			lines = append(lines, "missing in Cilium's cache: "+k)
		case !bytes.Equal(v, w):
			lines = append(lines, fmt.Sprintf("differs: %s\n  meshbed: %s\n  Cilium:  %s", k, v, w))
		}
	}
	for k := range theirs {
		if _, ok := ours[k]; !ok {
			lines = append(lines, "only in Cilium's cache: "+k)
		}
	}
	if len(lines) == 0 {
		return nil
	}
	sort.Strings(lines)
	if len(lines) > 12 {
		lines = append(lines[:12], fmt.Sprintf("… and %d more", len(lines)-12))
	}
	return fmt.Errorf("caches differ (%d keys in meshbed's, %d in Cilium's):\n%s", len(ours), len(theirs), strings.Join(lines, "\n"))
}

// summary counts the cache's keys per kind (the path element after
// cilium/cache/).
func summary(cache map[string][]byte) string {
	count := map[string]int{}
	for k := range cache {
		kind, _, _ := strings.Cut(strings.TrimPrefix(k, wire.CacheRoot), "/")
		count[kind]++
	}
	var parts []string
	for k, n := range count {
		parts = append(parts, fmt.Sprintf("%s %d", k, n))
	}
	sort.Strings(parts)
	return fmt.Sprintf("%d keys (%s)", len(cache), strings.Join(parts, ", "))
}

func tail(b []byte, n int) []byte {
	if len(b) > n {
		return b[len(b)-n:]
	}
	return b
}

// bufferedLogger keeps a component's log in memory and shows it when the
// test fails.
func bufferedLogger(t *testing.T, name string) *slog.Logger {
	var mu sync.Mutex
	var buf bytes.Buffer
	t.Cleanup(func() {
		if t.Failed() {
			mu.Lock()
			defer mu.Unlock()
			t.Logf("%s log (last 16 KB):\n%s", name, tail(buf.Bytes(), 16<<10))
		}
	})
	return slog.New(slog.NewTextHandler(writerFunc(func(p []byte) (int, error) {
		mu.Lock()
		defer mu.Unlock()
		return buf.Write(p)
	}), nil))
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }

type urlT = url.URL

func mustURL(t *testing.T, s string) url.URL {
	u, err := url.Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return *u
}
