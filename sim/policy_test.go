package sim

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"

	"github.com/meshbed/meshbed/datapath"
	"github.com/meshbed/meshbed/datapath/netns/netnstest"
	"github.com/meshbed/meshbed/internal/testenv"
	"github.com/meshbed/meshbed/sim/workload"
)

// Issue 5's figure: a pod that starts in a remote cluster and newly matches
// a policy's selector is allowed within a bounded time. cluster1's x-wing
// may send only to rebel-base pods of cluster2 (a CiliumNetworkPolicy, so
// its egress is default-deny); cluster2 then starts pods, and the time from
// a pod being Ready in cluster2's API to the first request from x-wing
// straight to its pod IP that gets through is what is measured.

// remoteAllowBound is the bound the test holds the mesh to.
const remoteAllowBound = 10 * time.Second

const (
	// allowProbeTimeout bounds one probe request. A denied SYN is dropped,
	// so a probe of a denied pod fails only by timing out; an allowed one
	// answers in a millisecond or two.
	allowProbeTimeout = 100 * time.Millisecond
	// allowProbeEvery spaces probe starts (several are in flight at
	// once): it is the resolution of the measured figure.
	allowProbeEvery = 5 * time.Millisecond
)

// xwingPolicyManifest is cluster1's client and its policy; cluster2 starts
// with one rebel-base pod, whose identity the policy already allows.
const xwingPolicyManifest = `
apiVersion: apps/v1
kind: Deployment
metadata:
  name: x-wing
spec:
  replicas: 1
  selector:
    matchLabels: {name: x-wing}
  template:
    metadata:
      labels: {name: x-wing}
    spec:
      containers:
        - name: x-wing
          image: docker.io/curlimages/curl:8.10.1
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: x-wing-to-cluster2
spec:
  endpointSelector:
    matchLabels: {name: x-wing}
  egress:
    - toEndpoints:
        - matchLabels:
            name: rebel-base
            io.cilium.k8s.policy.cluster: cluster2
`

// echoDeployment is a one-replica echo server with the given pod labels.
func echoDeployment(name string, labels map[string]string) string {
	keys := make([]string, 0, len(labels))
	for k := range labels {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	l := ""
	for _, k := range keys {
		l += fmt.Sprintf("%s: %s, ", k, labels[k])
	}
	l = "{" + l[:len(l)-2] + "}"
	return fmt.Sprintf(`
apiVersion: apps/v1
kind: Deployment
metadata:
  name: %s
spec:
  replicas: 1
  selector:
    matchLabels: %s
  template:
    metadata:
      labels: %s
    spec:
      containers:
        - name: echo
          image: docker.io/cilium/json-mock:1.2
          ports:
            - {name: http, containerPort: 80}
`, name, l, l)
}

// policyMesh is two clusters of one node: cluster1 runs x-wing under its
// policy, cluster2 one rebel-base pod.
type policyMesh struct {
	m        *Mesh
	c1, c2   *Cluster
	xwing    *Pod
	client   *workload.Client
	closeAll func() error
}

func newPolicyMesh(tb testing.TB, kvstoremesh bool) *policyMesh {
	tb.Helper()
	spec := meshSpec(2, 1)
	spec.KVStoreMesh = kvstoremesh
	m, closeAll := startMesh(tb, spec)
	pm := &policyMesh{m: m, closeAll: closeAll}
	pm.c1, _ = m.Cluster("cluster1")
	pm.c2, _ = m.Cluster("cluster2")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := m.Apply(ctx, "cluster1", []byte(xwingPolicyManifest)); err != nil {
		tb.Fatal(err)
	}
	if err := m.Apply(ctx, "cluster2", []byte(echoDeployment("rebel-base", map[string]string{"name": "rebel-base"}))); err != nil {
		tb.Fatal(err)
	}
	if err := m.Settle(ctx); err != nil {
		tb.Fatal(err)
	}
	var err error
	if pm.client, pm.xwing, err = pm.c1.Client("default", "x-wing", allowProbeTimeout); err != nil {
		tb.Fatal(err)
	}
	// The policy is in force on x-wing before anything is measured, or a
	// pod would count as "allowed" merely because nothing was enforced yet.
	desired, _, _ := pm.c1.Nodes()[0].Agent().State()
	enforced := false
	for _, ep := range desired.Endpoints {
		if ep.IP == pm.xwing.IP {
			enforced = ep.Policy != nil && ep.Policy.EgressEnforced
		}
	}
	if !enforced {
		tb.Fatalf("x-wing (%s) has no enforced egress policy in cluster1's datapath state", pm.xwing.IP)
	}
	// And the path works for the pod the policy allowed from the start.
	base := pm.c2.Pods("default", "rebel-base")
	if len(base) != 1 {
		tb.Fatalf("cluster2 runs %d rebel-base pods, want 1", len(base))
	}
	netnstest.Eventually(tb, remoteAllowBound, func() error {
		return pm.get(ctx, base[0]).Err
	})
	return pm
}

func (pm *policyMesh) get(ctx context.Context, to *Pod) workload.Result {
	return pm.client.Get(ctx, "http://"+to.IP.String()+"/")
}

// readyPod is a pod as it turned Ready in its cluster's API.
type readyPod struct {
	name, deployment string
	ip               string
	at               time.Time
}

// watchReady reports every pod of c's default namespace the moment the API
// first shows it Ready, until ctx ends. It is started before the pods are
// created so no transition is missed; the time is when the watch event
// arrived, microseconds after the kubelet's status update.
func watchReady(ctx context.Context, c *Cluster) (<-chan readyPod, error) {
	w, err := c.API.Client.CoreV1().Pods("default").Watch(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("watch pods of %s: %w", c.Name(), err)
	}
	out := make(chan readyPod, 256)
	go func() {
		defer w.Stop()
		seen := map[string]bool{}
		for {
			select {
			case <-ctx.Done():
				return
			case ev, ok := <-w.ResultChan():
				if !ok {
					return
				}
				p, isPod := ev.Object.(*corev1.Pod)
				if !isPod || ev.Type == watch.Deleted || seen[p.Name] || !podIsReady(p) {
					continue
				}
				at := time.Now()
				seen[p.Name] = true
				// Never block: the fake clientset panics when a watcher
				// falls 100 events behind. Only Ready transitions are
				// sent, far fewer than the buffer holds.
				select {
				case out <- readyPod{name: p.Name, deployment: ownerDeployment(p), ip: p.Status.PodIP, at: at}:
				default:
				}
			}
		}
	}()
	return out, nil
}

func podIsReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue && p.Status.PodIP != ""
		}
	}
	return false
}

// awaitReady takes Ready pods from ch until one of each deployment in want
// has turned up.
func awaitReady(ctx context.Context, ch <-chan readyPod, want ...string) (map[string]readyPod, error) {
	got := map[string]readyPod{}
	for len(got) < len(want) {
		select {
		case p := <-ch:
			if slices.Contains(want, p.deployment) {
				got[p.deployment] = p
			}
		case <-ctx.Done():
			return got, fmt.Errorf("pods of %v not all ready (got %d): %w", want, len(got), ctx.Err())
		}
	}
	return got, nil
}

// firstAllowed probes url from client, a new probe every allowProbeEvery,
// until one is answered. It returns that probe's result (whose Start is
// when the policy let a SYN out, to within allowProbeEvery) and how many
// probes had started before it: those went unanswered, since an allowed
// probe is answered in a millisecond or two.
func firstAllowed(ctx context.Context, client *workload.Client, url string) (workload.Result, int, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	defer wg.Wait()
	results := make(chan workload.Result, 1024)
	tick := time.NewTicker(allowProbeEvery)
	defer tick.Stop()
	var starts []time.Time
	var lastErr error
	launch := func() {
		starts = append(starts, time.Now())
		wg.Go(func() { results <- client.Get(ctx, url) })
	}
	launch()
	for {
		select {
		case <-tick.C:
			launch()
		case r := <-results:
			if r.Err == nil {
				earlier := 0
				for _, s := range starts {
					if s.Before(r.Start) {
						earlier++
					}
				}
				return r, earlier, nil
			}
			lastErr = r.Err
		case <-ctx.Done():
			return workload.Result{}, 0, fmt.Errorf("no answer from %s after %d probes (last error: %v): %w", url, len(starts), lastErr, ctx.Err())
		}
	}
}

// policyDrops is the egress-policy drop count of cluster1's node.
func (pm *policyMesh) policyDrops(tb testing.TB) uint64 {
	tb.Helper()
	c, err := pm.c1.Nodes()[0].Datapath().Datapath().Counters()
	if err != nil {
		tb.Fatal(err)
	}
	return c[datapath.ReasonPolicyEgress].Packets
}

// allowedAfter starts deployment in cluster2 with labels and measures how
// long after its pod turned Ready x-wing's first request to it got through.
func (pm *policyMesh) allowedAfter(tb testing.TB, deployment string, labels map[string]string) (time.Duration, readyPod) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), remoteAllowBound+30*time.Second)
	defer cancel()
	ready, err := watchReady(ctx, pm.c2)
	if err != nil {
		tb.Fatal(err)
	}
	if err := pm.m.Apply(ctx, "cluster2", []byte(echoDeployment(deployment, labels))); err != nil {
		tb.Fatal(err)
	}
	pods, err := awaitReady(ctx, ready, deployment)
	if err != nil {
		tb.Fatal(err)
	}
	p := pods[deployment]
	pctx, pcancel := context.WithDeadline(ctx, p.at.Add(remoteAllowBound))
	defer pcancel()
	drops := pm.policyDrops(tb)
	r, earlier, err := firstAllowed(pctx, pm.client, "http://"+p.ip+"/")
	drops = pm.policyDrops(tb) - drops
	if err != nil {
		tb.Fatalf("%s (%s) not allowed within %v of Ready: %v", deployment, p.ip, remoteAllowBound, err)
	}
	if r.Cluster != "cluster2" || r.Pod != p.name {
		tb.Fatalf("request to %s answered by %s/%s, want cluster2/%s", p.ip, r.Cluster, r.Pod, p.name)
	}
	d := r.Start.Sub(p.at)
	tb.Logf("%s (%s): allowed %v after Ready (%d earlier probes unanswered, %d egress policy drops meanwhile)",
		deployment, p.ip, d.Round(time.Millisecond), earlier, drops)
	return d, p
}

// removeDeployment deletes a deployment of cluster2 and waits until its
// pod is gone from the cluster's runtime.
func (pm *policyMesh) removeDeployment(tb testing.TB, deployment string) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := pm.c2.API.Delete(ctx, "Deployment", "default", deployment); err != nil {
		tb.Fatal(err)
	}
	netnstest.Eventually(tb, 30*time.Second, func() error {
		if n := len(pm.c2.Pods("default", deployment)); n > 0 {
			return fmt.Errorf("%d pods of %s still run", n, deployment)
		}
		return nil
	})
}

func TestIntegrationRemotePodAllowedByPolicy(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test: skipped with -short")
	}
	testenv.Privileged(t)
	for _, tc := range []struct {
		name        string
		kvstoremesh bool
	}{
		{"kvstoremesh", true},
		{"direct", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pm := newPolicyMesh(t, tc.kvstoremesh)
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()

			// A pod that does not match starts alongside: it must stay
			// denied while the matching one becomes allowed.
			ready, err := watchReady(ctx, pm.c2)
			if err != nil {
				t.Fatal(err)
			}
			if err := pm.m.Apply(ctx, "cluster2", []byte(echoDeployment("tie-fighter", map[string]string{"name": "tie-fighter"}))); err != nil {
				t.Fatal(err)
			}
			// A new label set: a new identity, which cluster1 learns only
			// through the mesh.
			d, _ := pm.allowedAfter(t, "rebel-base-v2", map[string]string{"name": "rebel-base", "version": "v2"})
			if d < 0 || d > remoteAllowBound {
				t.Fatalf("allowed %v after Ready, want within [0, %v]", d, remoteAllowBound)
			}
			t.Logf("figure: remote pod with a new identity allowed %v after Ready (bound %v)", d.Round(time.Millisecond), remoteAllowBound)

			tie, err := awaitReady(ctx, ready, "tie-fighter")
			if err != nil {
				t.Fatal(err)
			}
			tiePod := &Pod{Name: tie["tie-fighter"].name}
			for _, p := range pm.c2.Pods("default", "tie-fighter") {
				if p.Name == tiePod.Name {
					tiePod = p
				}
			}
			if !tiePod.IP.IsValid() {
				t.Fatalf("tie-fighter pod %s is not running in cluster2", tiePod.Name)
			}
			// Once the mesh has converged, tie-fighter is known to
			// cluster1 and still denied, by the policy: every probe is
			// dropped and counted as an egress policy drop.
			if err := pm.m.Settle(ctx); err != nil {
				t.Fatal(err)
			}
			drops := pm.policyDrops(t)
			consistently(t, 2*time.Second, func() error {
				if r := pm.get(ctx, tiePod); r.Err == nil {
					return fmt.Errorf("x-wing reached tie-fighter (%s), which the policy does not select", tiePod.IP)
				}
				return nil
			})
			if after := pm.policyDrops(t); after == drops {
				t.Fatalf("tie-fighter probes failed but cluster1 counted no egress policy drop (%d)", drops)
			}

			// Without the policy the same pod is reachable: the denial was
			// the policy's doing, not a broken path.
			if err := pm.c1.API.Delete(ctx, "CiliumNetworkPolicy", "default", "x-wing-to-cluster2"); err != nil {
				t.Fatal(err)
			}
			netnstest.Eventually(t, remoteAllowBound, func() error {
				if r := pm.get(ctx, tiePod); r.Err != nil {
					return fmt.Errorf("tie-fighter (%s) unreachable after the policy was deleted: %w", tiePod.IP, r.Err)
				}
				return nil
			})
			if err := finalCheck(ctx, pm.m); err != nil {
				t.Fatalf("final check: %v", err)
			}
		})
	}
}

// BenchmarkRemotePodAllowed reports allowed-after-ms: from a new pod of
// cluster2 that x-wing's policy selects turning Ready to the first request
// from cluster1 that gets through, mean (and max) over the iterations. The
// pod either brings a new identity (new-identity: a label set no pod had,
// which cluster1 must learn through the mesh) or has the identity of pods
// already allowed (known-identity: only its address is new).
func BenchmarkRemotePodAllowed(b *testing.B) {
	if testing.Short() {
		b.Skip("builds a mesh per mode: skipped with -short")
	}
	testenv.Privileged(b)
	for _, mode := range []struct {
		name        string
		kvstoremesh bool
	}{
		{"kvstoremesh", true},
		{"direct", false},
	} {
		b.Run(mode.name, func(b *testing.B) {
			pm := newPolicyMesh(b, mode.kvstoremesh)
			var seq int
			for _, tc := range []struct {
				name   string
				labels func(i int) map[string]string
			}{
				{"new-identity", func(i int) map[string]string {
					return map[string]string{"name": "rebel-base", "version": fmt.Sprintf("v%d", i)}
				}},
				{"known-identity", func(int) map[string]string {
					return map[string]string{"name": "rebel-base"}
				}},
			} {
				b.Run(tc.name, func(b *testing.B) {
					var total, worst time.Duration
					n := 0
					for b.Loop() {
						seq++
						name := fmt.Sprintf("rebel-base-b%d", seq)
						d, _ := pm.allowedAfter(b, name, tc.labels(seq))
						b.StopTimer()
						pm.removeDeployment(b, name)
						b.StartTimer()
						total += d
						worst = max(worst, d)
						n++
					}
					b.ReportMetric(float64(total.Milliseconds())/float64(n), "allowed-after-ms")
					b.ReportMetric(float64(worst.Milliseconds()), "allowed-after-max-ms")
				})
			}
			if err := pm.closeAll(); err != nil {
				b.Error(err)
			}
		})
	}
}
