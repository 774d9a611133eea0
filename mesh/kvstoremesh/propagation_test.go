package kvstoremesh

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/meshbed/meshbed/mesh/apiserver"
	"github.com/meshbed/meshbed/mesh/pki"
)

// meshCluster is one cluster of a test mesh built from the real parts: an
// in-memory Kubernetes API, a mesh-apiserver exporting it into its
// embedded etcd (mTLS, etcd users), a kvstoremesh mirroring every other
// cluster into that etcd, and one agent reading only that etcd.
type meshCluster struct {
	name string
	id   uint32
	kube *fake.Clientset
	api  *apiserver.Server
	dp   *datapath
}

// testMesh starts n clusters cluster1..n, each exporting the global
// service rebel-base with one backend (10.<id>.1.5), and waits until every
// agent has merged every cluster's backend.
func testMesh(tb testing.TB, n int, logger *slog.Logger) []*meshCluster {
	tb.Helper()
	return testMeshWith(tb, n, logger, nil)
}

// testMeshWith is testMesh with each mesh-apiserver's Config passed
// through tweak (if not nil) before it starts.
func testMeshWith(tb testing.TB, n int, logger *slog.Logger, tweak func(*apiserver.Config)) []*meshCluster {
	tb.Helper()
	ca, err := pki.NewCA("test-mesh", time.Hour)
	if err != nil {
		tb.Fatal(err)
	}
	// One certificate directory per cluster, as each cluster's users are
	// its own: the apiserver's, its agents' and its remote reader's pairs,
	// each file named after the user.
	dirs := map[string]pki.Dir{}
	dirOf := func(cluster string) pki.Dir {
		if d, ok := dirs[cluster]; ok {
			return d
		}
		d := pki.Dir(tb.TempDir())
		if err := pki.IssueServerTLS(d, ca, cluster, []net.IP{net.ParseIP("127.0.0.1")}, time.Hour); err != nil {
			tb.Fatal(err)
		}
		for _, user := range []string{pki.LocalUser(cluster), pki.RemoteUser(cluster)} {
			pair, err := ca.IssueClient(user, time.Hour)
			if err != nil {
				tb.Fatal(err)
			}
			if err := d.WriteCert(user, pair); err != nil {
				tb.Fatal(err)
			}
		}
		dirs[cluster] = d
		return d
	}
	tlsFiles := func(cluster, user string) string {
		dir := dirOf(cluster)
		return fmt.Sprintf("trusted-ca-file: %s\ncert-file: %s\nkey-file: %s", dir.CAFile(), dir.CertFile(user), dir.KeyFile(user))
	}

	clusters := make([]*meshCluster, n)
	names := make([]string, n)
	for i := range clusters {
		id := uint32(i + 1)
		clusters[i] = &meshCluster{name: fmt.Sprintf("cluster%d", id), id: id}
		names[i] = clusters[i].name
	}
	ctx, cancel := context.WithCancel(context.Background())
	tb.Cleanup(cancel)
	for _, c := range clusters {
		c.kube = fake.NewClientset(kubeObjects(c.id, fmt.Sprintf("10.%d.1.5", c.id))...)
		dyn := dynamicClient()
		others := slices.DeleteFunc(slices.Clone(names), func(s string) bool { return s == c.name })
		cfg := apiserver.Config{
			ClusterName: c.name, ClusterID: c.id,
			Kube: c.kube, Dynamic: dyn,
			ListenAddress: "127.0.0.1:0", TLSDir: dirOf(c.name),
			RemoteClusters: others,
			TickMs:         10, ElectionMs: 50,
			Logger: logger,
		}
		if tweak != nil {
			tweak(&cfg)
		}
		api, err := apiserver.New(cfg)
		if err != nil {
			tb.Fatal(err)
		}
		if err := api.Start(ctx); err != nil {
			tb.Fatal(err)
		}
		c.api = api
		done := make(chan error, 1)
		go func() { done <- api.Run(ctx) }()
		tb.Cleanup(func() {
			// Registered before the kvstoremesh and agent cleanups, so it
			// runs after them (cleanups run last-in first-out).
			cancel()
			if err := <-done; err != nil {
				tb.Errorf("apiserver %s: %v", c.name, err)
			}
			api.Close()
		})
	}
	for _, c := range clusters {
		meshDir := tb.TempDir()
		for _, o := range clusters {
			if o != c {
				writeConfig(tb, meshDir, o.name, o.api.Endpoints(), tlsFiles(c.name, pki.RemoteUser(c.name)))
			}
		}
		m, err := New(Config{
			ClusterName: c.name, ClusterID: c.id,
			// The default poll interval: every poll re-reads each config
			// file and its certificates, which is CPU the mesh shares.
			ConfigDir: meshDir, Local: c.api.Client(),
			Logger: logger,
		})
		if err != nil {
			tb.Fatal(err)
		}
		done := make(chan error, 1)
		mctx, mcancel := context.WithCancel(ctx)
		go func() { done <- m.Run(mctx) }()
		tb.Cleanup(func() {
			mcancel()
			<-done
		})
		var remotes []string
		for _, o := range clusters {
			if o != c {
				remotes = append(remotes, o.name)
			}
		}
		c.dp = startAgent(tb, agentConfig{
			name: c.name, id: c.id, localEtcd: c.api.Endpoints(), remotes: remotes,
			tls: tlsFiles(c.name, pki.LocalUser(c.name)), pollInterval: time.Second, kube: c.kube, logger: logger,
		})
	}
	wctx, wcancel := context.WithTimeout(ctx, time.Minute)
	defer wcancel()
	for _, c := range clusters {
		if _, _, err := c.dp.waitFor(wctx, func(set string) bool { return len(clusterIDs(set)) == n }); err != nil {
			tb.Fatalf("agent of %s did not merge all %d clusters: %v", c.name, n, err)
		}
	}
	return clusters
}

// moveBackend replaces the address of the single rebel-base backend of c
// in its Kubernetes API.
func moveBackend(ctx context.Context, c *meshCluster, addr string) error {
	slices := c.kube.DiscoveryV1().EndpointSlices("default")
	s, err := slices.Get(ctx, "rebel-base-1", metav1.GetOptions{})
	if err != nil {
		return fmt.Errorf("get slice of %s: %w", c.name, err)
	}
	s = s.DeepCopy()
	s.Endpoints = []discoveryv1.Endpoint{{Addresses: []string{addr},
		Conditions: discoveryv1.EndpointConditions{Ready: ptr(true), Serving: ptr(true)}}}
	if _, err := slices.Update(ctx, s, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("update slice of %s: %w", c.name, err)
	}
	return nil
}

// TestIntegrationMeshPropagation checks the whole path with three real
// clusters: an EndpointSlice change in one cluster reaches the agents of
// the others through mesh-apiserver → kvstoremesh → local etcd → agent.
func TestIntegrationMeshPropagation(t *testing.T) {
	if testing.Short() {
		t.Skip("starts three mesh-apiservers, kvstoremeshes and agents")
	}
	clusters := testMesh(t, 3, testLogger(t))
	ctx := ctxT(t)
	if err := moveBackend(ctx, clusters[0], "10.1.2.9"); err != nil {
		t.Fatal(err)
	}
	for _, c := range clusters {
		set, _, err := c.dp.waitFor(ctx, func(set string) bool { return strings.Contains(set, "10.1.2.9@1") })
		if err != nil {
			t.Fatalf("agent of %s: %v", c.name, err)
		}
		if strings.Contains(set, "10.1.1.5@1") {
			t.Errorf("agent of %s kept the old backend: %s", c.name, set)
		}
	}
}

// BenchmarkPropagation measures, on a mesh of 8 clusters built from the
// real parts (see testMesh: real mesh-apiserver exporters reading an
// in-memory Kubernetes API through informers, etcd over mTLS, kvstoremesh
// in every cluster, one agent per cluster reading only its local etcd),
// the time from an EndpointSlice update in one cluster's Kubernetes API
// to the agent of another cluster handing the merged backend set with the
// new address to its datapath. Each iteration moves the backend of one
// cluster (round robin) and waits for the 7 other agents; each agent gives
// one sample. Reported: p50-ms, p99-ms and max-ms over all samples, and
// the number of samples (raise -benchtime for a steadier p99). Everything
// runs in one process on this machine's CPUs, over loopback; the agent
// coalesces changes for agent.DefaultCoalesce (5 ms).
func BenchmarkPropagation(b *testing.B) {
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	clusters := testMesh(b, 8, logger)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	var samples []time.Duration
	iter := 0
	for b.Loop() {
		src := clusters[iter%len(clusters)]
		addr := fmt.Sprintf("10.%d.%d.%d", src.id, 2+iter/250%200, 1+iter%250)
		want := addr + fmt.Sprintf("@%d", src.id)
		iter++
		start := time.Now()
		if err := moveBackend(ctx, src, addr); err != nil {
			b.Fatal(err)
		}
		for _, c := range clusters {
			if c == src {
				continue
			}
			wctx, wcancel := context.WithTimeout(ctx, 30*time.Second)
			_, at, err := c.dp.waitFor(wctx, func(set string) bool { return strings.Contains(set, want) })
			wcancel()
			if err != nil {
				b.Fatalf("agent of %s: %v", c.name, err)
			}
			samples = append(samples, at.Sub(start))
		}
	}
	slices.Sort(samples)
	pct := func(p float64) float64 {
		i := min(len(samples)-1, int(p*float64(len(samples))))
		return float64(samples[i].Microseconds()) / 1000
	}
	b.ReportMetric(pct(0.50), "p50-ms")
	b.ReportMetric(pct(0.99), "p99-ms")
	b.ReportMetric(float64(samples[len(samples)-1].Microseconds())/1000, "max-ms")
	b.ReportMetric(float64(len(samples)), "samples")
}
