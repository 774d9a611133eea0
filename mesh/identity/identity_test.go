package identity

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"strconv"
	"sync"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/dynamic"
	dynamicfake "k8s.io/client-go/dynamic/fake"

	"github.com/meshbed/meshbed/internal/testenv"
	"github.com/meshbed/meshbed/mesh/wire"
)

func newFake(objs ...runtime.Object) *dynamicfake.FakeDynamicClient {
	return dynamicfake.NewSimpleDynamicClientWithCustomListKinds(runtime.NewScheme(), ListKinds(), objs...)
}

type testLogWriter struct{ t testing.TB }

func (w testLogWriter) Write(p []byte) (int, error) {
	w.t.Log(string(p))
	return len(p), nil
}

func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(testLogWriter{t}, nil))
}

// startCache runs a cache of cluster1 (ID 1) until the test ends.
func startCache(t *testing.T, client dynamic.Interface, tweak func(*Cache)) *Cache {
	t.Helper()
	c, err := NewCache(client, Config{Cluster: "cluster1", ClusterID: 1, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	if tweak != nil {
		tweak(c)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); c.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	wctx, wcancel := context.WithTimeout(ctx, 10*time.Second)
	defer wcancel()
	if err := c.WaitSynced(wctx); err != nil {
		t.Fatal(err)
	}
	return c
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// eventually polls cond until it holds or 10 s pass.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	testenv.Eventually(t, 10*time.Second, func() error {
		if !cond() {
			return fmt.Errorf("%s: not yet", what)
		}
		return nil
	})
}

func app(name string) wire.Labels {
	return PodLabels("cluster1", "default", map[string]string{"app": name})
}

func TestPodLabels(t *testing.T) {
	tests := []struct {
		name    string
		cluster string
		ns      string
		pod     map[string]string
		want    string
	}{
		{"plain", "cluster1", "default", map[string]string{"app": "rebel-base"},
			"k8s:app=rebel-base;k8s:io.cilium.k8s.policy.cluster=cluster1;k8s:io.kubernetes.pod.namespace=default;"},
		{"no labels", "c2", "kube-system", nil,
			"k8s:io.cilium.k8s.policy.cluster=c2;k8s:io.kubernetes.pod.namespace=kube-system;"},
		{"noisy labels dropped", "cluster1", "default", map[string]string{
			"app": "x", "pod-template-hash": "6d4f8", "controller-revision-hash": "abc",
			"statefulset.kubernetes.io/pod-name": "x-0", "batch.kubernetes.io/controller-uid": "u",
			"apps.kubernetes.io/pod-index": "0", "pod-template-generation": "3", "controller-uid": "u",
		}, "k8s:app=x;k8s:io.cilium.k8s.policy.cluster=cluster1;k8s:io.kubernetes.pod.namespace=default;"},
		{"pod cannot claim another cluster or namespace", "cluster1", "default", map[string]string{
			"app": "x", "io.cilium.k8s.policy.cluster": "cluster2", "io.kubernetes.pod.namespace": "kube-system",
		}, "k8s:app=x;k8s:io.cilium.k8s.policy.cluster=cluster1;k8s:io.kubernetes.pod.namespace=default;"},
		{"sorted by key", "cluster1", "ns", map[string]string{"zeta": "1", "alpha": "2", "app.kubernetes.io/name": "n"},
			"k8s:alpha=2;k8s:app.kubernetes.io/name=n;k8s:io.cilium.k8s.policy.cluster=cluster1;k8s:io.kubernetes.pod.namespace=ns;k8s:zeta=1;"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := PodLabels(tt.cluster, tt.ns, tt.pod).String(); got != tt.want {
				t.Fatalf("PodLabels = %q, want %q", got, tt.want)
			}
		})
	}
}

func TestRange(t *testing.T) {
	tests := []struct {
		id, max  uint32
		min, top uint32
		wantErr  bool
	}{
		{1, 255, 65537, 131071, false},
		{2, 255, 131073, 196607, false},
		{255, 255, 255<<16 | 1, 1<<24 - 1, false},
		{1, 511, 32769, 65535, false},
		{511, 511, 511<<15 | 1, 1<<24 - 1, false},
		{0, 255, 0, 0, true},
		{256, 255, 0, 0, true},
		{1, 100, 0, 0, true},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%d/%d", tt.id, tt.max), func(t *testing.T) {
			r, err := NewRange(tt.id, tt.max)
			if (err != nil) != tt.wantErr {
				t.Fatalf("err = %v, want error %v", err, tt.wantErr)
			}
			if err == nil && (r.Min != tt.min || r.Max != tt.top) {
				t.Fatalf("range %s, want [%d, %d]", r, tt.min, tt.top)
			}
		})
	}
}

func objectJSON(t testing.TB, u *unstructured.Unstructured) []byte {
	b, err := json.Marshal(u.Object)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestFromObject(t *testing.T) {
	good := newObject("cluster1", 65537, app("x"))
	tests := []struct {
		name    string
		mutate  func(map[string]any)
		wantErr bool
	}{
		{"valid", func(map[string]any) {}, false},
		{"leading zero name", func(o map[string]any) { o["metadata"].(map[string]any)["name"] = "065537" }, true},
		{"zero", func(o map[string]any) { o["metadata"].(map[string]any)["name"] = "0" }, true},
		{"above 24 bits", func(o map[string]any) { o["metadata"].(map[string]any)["name"] = "16777216" }, true},
		{"not a number", func(o map[string]any) { o["metadata"].(map[string]any)["name"] = "abc" }, true},
		{"no labels", func(o map[string]any) { delete(o, "spec") }, true},
		{"label without source", func(o map[string]any) {
			o["spec"].(map[string]any)["securityLabels"].(map[string]any)["app"] = "y"
		}, true},
		{"label value not a string", func(o map[string]any) {
			o["spec"].(map[string]any)["securityLabels"].(map[string]any)["k8s:app"] = int64(3)
		}, true},
		{"semicolon in value", func(o map[string]any) {
			o["spec"].(map[string]any)["securityLabels"].(map[string]any)["k8s:app"] = "a;b"
		}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			u := good.DeepCopy()
			tt.mutate(u.Object)
			got, err := FromObject(u)
			if (err != nil) != tt.wantErr {
				t.Fatalf("err = %v, want error %v", err, tt.wantErr)
			}
			if err == nil && (got.ID != 65537 || got.Labels.String() != app("x").String()) {
				t.Fatalf("got %d %q", got.ID, got.Labels)
			}
		})
	}
}

func FuzzFromObject(f *testing.F) {
	f.Add(objectJSON(f, newObject("cluster1", 65537, app("x"))))
	f.Add([]byte(`{"metadata":{"name":"7"},"spec":{"securityLabels":{"a:b":"c","d:e=f":"g"}}}`))
	f.Add([]byte(`{"metadata":{"name":"1"},"spec":{"securityLabels":{"k8s:":""}}}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		var obj map[string]any
		if json.Unmarshal(data, &obj) != nil {
			return
		}
		got, err := FromObject(&unstructured.Unstructured{Object: obj})
		if err != nil {
			return
		}
		// What is accepted must survive the wire: write and read back.
		back, err := wire.ParseLabels(got.Labels.String())
		if err != nil || back.String() != got.Labels.String() {
			t.Fatalf("labels %q do not round-trip: %v", got.Labels.String(), err)
		}
		if got.ID == 0 || got.ID > wire.MaxIdentity {
			t.Fatalf("accepted identity %d", got.ID)
		}
		// And through the resource form again.
		again, err := FromObject(newObject("c", got.ID, got.Labels))
		if err != nil || again.Labels.String() != got.Labels.String() {
			t.Fatalf("resource of %q does not round-trip: %v", got.Labels.String(), err)
		}
	})
}

func TestAllocateStableAndUnique(t *testing.T) {
	client := newFake()
	c := startCache(t, client, nil)
	a := NewAllocator(client, c)
	ctx := ctxT(t)

	ids := map[uint32]string{}
	for i := range 20 {
		l := app(fmt.Sprintf("app-%d", i))
		id, err := a.Allocate(ctx, l)
		if err != nil {
			t.Fatal(err)
		}
		if !c.Range().Contains(id) {
			t.Fatalf("identity %d outside %s", id, c.Range())
		}
		if prev, dup := ids[id]; dup {
			t.Fatalf("identity %d given to %q and %q", id, prev, l)
		}
		ids[id] = l.String()
		again, err := a.Allocate(ctx, l)
		if err != nil || again != id {
			t.Fatalf("second Allocate(%q) = %d, %v; want %d", l, again, err, id)
		}
	}
	list, err := client.Resource(GVR).List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(list.Items) != 20 {
		t.Fatalf("%d resources, want 20", len(list.Items))
	}

	// A new cache and allocator over the same API (an apiserver or agent
	// restart) find the same identities, and allocate nothing new.
	c2 := startCache(t, client, nil)
	a2 := NewAllocator(client, c2)
	for id, l := range ids {
		labels, err := wire.ParseLabels(l)
		if err != nil {
			t.Fatal(err)
		}
		if got, ok := c2.LookupLabels(labels); !ok || got != id {
			t.Fatalf("after restart LookupLabels(%q) = %d, %v; want %d", l, got, ok, id)
		}
		if got, err := a2.Allocate(ctx, labels); err != nil || got != id {
			t.Fatalf("after restart Allocate(%q) = %d, %v; want %d", l, got, err, id)
		}
		if got, ok := c2.LookupID(id); !ok || got.String() != l {
			t.Fatalf("LookupID(%d) = %q, %v", id, got, ok)
		}
	}
	list, err = client.Resource(GVR).List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(list.Items) != 20 {
		t.Fatalf("%d resources after restart, want 20", len(list.Items))
	}
}

// TestAllocateRace runs two allocators, each with its own cache, over one
// API, on a deliberately tiny range so that label sets collide on slots.
func TestAllocateRace(t *testing.T) {
	const sets, slots = 12, 16
	for round := range 5 {
		t.Run(strconv.Itoa(round), func(t *testing.T) {
			client := newFake()
			small := func(c *Cache) { c.rng.Max = c.rng.Min + slots - 1 }
			allocs := []*Allocator{
				NewAllocator(client, startCache(t, client, small)),
				NewAllocator(client, startCache(t, client, small)),
				NewAllocator(client, startCache(t, client, small)),
			}
			ctx := ctxT(t)
			var mu sync.Mutex
			got := map[string]map[uint32]bool{}
			var wg sync.WaitGroup
			errs := make(chan error, len(allocs)*sets)
			for ai, a := range allocs {
				wg.Go(func() {
					for i := range sets {
						// Each allocator walks the sets in another order.
						l := app(fmt.Sprintf("app-%d", (i*(ai+1)+ai)%sets))
						id, err := a.Allocate(ctx, l)
						if err != nil {
							errs <- err
							return
						}
						mu.Lock()
						if got[l.String()] == nil {
							got[l.String()] = map[uint32]bool{}
						}
						got[l.String()][id] = true
						mu.Unlock()
					}
				})
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				t.Fatal(err)
			}
			owner := map[uint32]string{}
			for l, ids := range got {
				if len(ids) != 1 {
					t.Fatalf("labels %q got identities %v", l, ids)
				}
				for id := range ids {
					if o, dup := owner[id]; dup {
						t.Fatalf("identity %d given to %q and %q", id, o, l)
					}
					owner[id] = l
				}
			}
			list, err := client.Resource(GVR).List(ctx, metav1.ListOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if len(list.Items) != len(got) {
				t.Fatalf("%d resources for %d label sets", len(list.Items), len(got))
			}
		})
	}
}

func startSlot(c *Cache, l wire.Labels) uint32 {
	h := fnv.New32a()
	h.Write([]byte(l.String()))
	return c.Range().Min + h.Sum32()%c.Range().Size()
}

func TestAllocateSkipsForeignAndMalformed(t *testing.T) {
	l := app("x-wing")
	probe := startCache(t, newFake(), nil)
	first := startSlot(probe, l)
	if first+3 > probe.Range().Max {
		t.Skip("label hash too close to the range end for this layout")
	}
	malformed := newObject("cluster1", first, app("x"))
	delete(malformed.Object, "spec")
	objs := []runtime.Object{
		// The first slot holds an unusable resource, the second another
		// cluster's labels, the third a different label set.
		malformed,
		newObject("cluster2", first+1, PodLabels("cluster2", "default", map[string]string{"app": "x-wing"})),
		newObject("cluster1", first+2, app("other")),
		// Out of range: another cluster's identity. Never served.
		newObject("cluster2", 131073, PodLabels("cluster2", "default", map[string]string{"app": "x-wing"})),
	}
	client := newFake(objs...)
	c := startCache(t, client, nil)
	if c.Len() != 1 {
		t.Fatalf("cache serves %d identities, want 1: %v", c.Len(), c.List())
	}
	if _, ok := c.LookupID(131073); ok {
		t.Fatal("out-of-range identity served")
	}
	id, err := NewAllocator(client, c).Allocate(ctxT(t), l)
	if err != nil {
		t.Fatal(err)
	}
	if id != first+3 {
		t.Fatalf("allocated %d, want %d (after three taken slots)", id, first+3)
	}
}

func TestAllocateErrors(t *testing.T) {
	client := newFake()
	tiny := func(c *Cache) { c.rng.Max = c.rng.Min + 1 }
	a := NewAllocator(client, startCache(t, client, tiny))
	ctx := ctxT(t)
	tests := []struct {
		name   string
		labels wire.Labels
		want   error
	}{
		{"first", app("a"), nil},
		{"second", app("b"), nil},
		{"exhausted", app("c"), ErrRangeExhausted},
		{"existing still served when full", app("a"), nil},
		{"other cluster", PodLabels("cluster2", "default", map[string]string{"app": "a"}), ErrForeignLabels},
		{"no cluster label", wire.NewLabels("k8s", map[string]string{"app": "a"}), ErrForeignLabels},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id, err := a.Allocate(ctx, tt.labels)
			if !errors.Is(err, tt.want) {
				t.Fatalf("Allocate = %d, %v; want %v", id, err, tt.want)
			}
			if err == nil && !a.cache.Range().Contains(id) {
				t.Fatalf("identity %d outside %s", id, a.cache.Range())
			}
		})
	}
}

func TestCacheEvents(t *testing.T) {
	client := newFake(newObject("cluster1", 65600, app("pre")))
	c, err := NewCache(client, Config{Cluster: "cluster1", ClusterID: 1, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var events []string
	c.AddHandler(func(ev Event) {
		mu.Lock()
		defer mu.Unlock()
		events = append(events, fmt.Sprintf("%d deleted=%v %s", ev.ID, ev.Deleted, ev.Labels))
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); c.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	if err := c.WaitSynced(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	res := client.Resource(GVR)
	if _, err := res.Create(ctx, newObject("cluster1", 65601, app("new")), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "identity 65601", func() bool { _, ok := c.LookupID(65601); return ok })
	// Corrupting a served identity withdraws it.
	bad := newObject("cluster1", 65600, app("pre"))
	delete(bad.Object, "spec")
	if _, err := res.Update(ctx, bad, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "identity 65600 withdrawn", func() bool { _, ok := c.LookupID(65600); return !ok })
	if err := res.Delete(ctx, "65601", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "identity 65601 deleted", func() bool { _, ok := c.LookupID(65601); return !ok })
	want := []string{
		"65600 deleted=false " + app("pre").String(),
		"65601 deleted=false " + app("new").String(),
		"65600 deleted=true " + app("pre").String(),
		"65601 deleted=true " + app("new").String(),
	}
	mu.Lock()
	defer mu.Unlock()
	if fmt.Sprint(events) != fmt.Sprint(want) {
		t.Fatalf("events\n%q\nwant\n%q", events, want)
	}
	if _, _, taken := c.slot(65600); !taken {
		t.Fatal("slot of the corrupted identity is not held back from allocation")
	}
}

func BenchmarkAllocateExisting(b *testing.B) {
	client := newFake()
	c, err := NewCache(client, Config{Cluster: "cluster1", ClusterID: 1})
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go c.Run(ctx)
	a := NewAllocator(client, c)
	sets := make([]wire.Labels, 1000)
	for i := range sets {
		sets[i] = app(fmt.Sprintf("app-%d", i))
		if _, err := a.Allocate(ctx, sets[i]); err != nil {
			b.Fatal(err)
		}
		drainFakeWatch(b, c, i+1)
	}
	i := 0
	for b.Loop() {
		if _, err := a.Allocate(ctx, sets[i%len(sets)]); err != nil {
			b.Fatal(err)
		}
		i++
	}
	b.ReportMetric(float64(c.Len()), "identities")
}

func BenchmarkAllocateNew(b *testing.B) {
	client := newFake()
	c, err := NewCache(client, Config{Cluster: "cluster1", ClusterID: 1})
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go c.Run(ctx)
	a := NewAllocator(client, c)
	i := 0
	for b.Loop() {
		if _, err := a.Allocate(ctx, app(fmt.Sprintf("app-%d", i))); err != nil {
			b.Fatal(err)
		}
		i++
		b.StopTimer()
		drainFakeWatch(b, c, i)
		b.StartTimer()
	}
	b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(b.N), "µs/allocation")
}

// drainFakeWatch waits, every 50 creations, until the informer has seen
// them: the fake API's watch channel holds 100 events and panics when a
// burst of creations outruns its consumer.
func drainFakeWatch(b *testing.B, c *Cache, created int) {
	if created%50 != 0 {
		return
	}
	for len(c.informer.GetStore().ListKeys()) < created {
		time.Sleep(time.Millisecond)
	}
}
