package identity

import (
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	dynamicfake "k8s.io/client-go/dynamic/fake"
	k8stesting "k8s.io/client-go/testing"
)

// newVersionedFake is newFake plus what the real API server adds and the
// fake lacks: every write gives the object a new resourceVersion, an
// update with a stale one is a Conflict, and a deletion's resourceVersion
// precondition is enforced. The collector's safety rests on these.
func newVersionedFake() *dynamicfake.FakeDynamicClient {
	f := newFake()
	var rv atomic.Int64
	rv.Store(100)
	next := func() string { return strconv.FormatInt(rv.Add(1), 10) }
	current := func(name string) (*unstructured.Unstructured, error) {
		o, err := f.Tracker().Get(GVR, "", name)
		if err != nil {
			return nil, err
		}
		return o.(*unstructured.Unstructured), nil
	}
	f.PrependReactor("create", Resource, func(a k8stesting.Action) (bool, runtime.Object, error) {
		a.(k8stesting.CreateAction).GetObject().(*unstructured.Unstructured).SetResourceVersion(next())
		return false, nil, nil
	})
	f.PrependReactor("update", Resource, func(a k8stesting.Action) (bool, runtime.Object, error) {
		u := a.(k8stesting.UpdateAction).GetObject().(*unstructured.Unstructured)
		cur, err := current(u.GetName())
		if err != nil {
			return true, nil, err
		}
		if u.GetResourceVersion() != "" && u.GetResourceVersion() != cur.GetResourceVersion() {
			return true, nil, apierrors.NewConflict(GVR.GroupResource(), u.GetName(), fmt.Errorf("stale resourceVersion %s, have %s", u.GetResourceVersion(), cur.GetResourceVersion()))
		}
		u.SetResourceVersion(next())
		return false, nil, nil
	})
	f.PrependReactor("delete", Resource, func(a k8stesting.Action) (bool, runtime.Object, error) {
		d := a.(k8stesting.DeleteAction)
		pre := d.GetDeleteOptions().Preconditions
		if pre == nil || pre.ResourceVersion == nil {
			return false, nil, nil
		}
		cur, err := current(d.GetName())
		if err != nil {
			return true, nil, err
		}
		if cur.GetResourceVersion() != *pre.ResourceVersion {
			return true, nil, apierrors.NewConflict(GVR.GroupResource(), d.GetName(), fmt.Errorf("precondition resourceVersion %s, have %s", *pre.ResourceVersion, cur.GetResourceVersion()))
		}
		return false, nil, nil
	})
	return f
}

// gcEnv is a cache, an allocator and a collector over one fake API, with
// the collector's clock and the set of labels in use under the test's
// control.
type gcEnv struct {
	client *dynamicfake.FakeDynamicClient
	cache  *Cache
	alloc  *Allocator
	gc     *Collector

	mu    sync.Mutex
	now   time.Time
	inUse map[string]bool
}

func newGCEnv(t *testing.T) *gcEnv {
	e := &gcEnv{client: newVersionedFake(), now: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC), inUse: map[string]bool{}}
	e.cache = startCache(t, e.client, nil)
	e.alloc = NewAllocator(e.client, e.cache)
	gc, err := NewCollector(e.client, e.cache, GCConfig{
		HeartbeatTimeout: time.Minute,
		InUse: func() map[string]bool {
			e.mu.Lock()
			defer e.mu.Unlock()
			out := make(map[string]bool, len(e.inUse))
			for k, v := range e.inUse {
				out[k] = v
			}
			return out
		},
		Logger: testLogger(t),
	})
	if err != nil {
		t.Fatal(err)
	}
	gc.now = func() time.Time {
		e.mu.Lock()
		defer e.mu.Unlock()
		return e.now
	}
	e.gc = gc
	return e
}

func (e *gcEnv) advance(d time.Duration) {
	e.mu.Lock()
	e.now = e.now.Add(d)
	e.mu.Unlock()
}

func (e *gcEnv) use(l string, used bool) {
	e.mu.Lock()
	e.inUse[l] = used
	e.mu.Unlock()
}

func (e *gcEnv) object(t *testing.T, id uint32) (*unstructured.Unstructured, bool) {
	t.Helper()
	u, err := e.client.Resource(GVR).Get(t.Context(), strconv.FormatUint(uint64(id), 10), metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil, false
	}
	if err != nil {
		t.Fatal(err)
	}
	return u, true
}

// waitMark waits until the cache has seen id's mark come (want) or go.
func (e *gcEnv) waitMark(t *testing.T, id uint32, want bool) {
	t.Helper()
	eventually(t, fmt.Sprintf("cache sees the mark of %d = %v", id, want), func() bool {
		_, marked := e.cache.unusedSince(id)
		return marked == want
	})
}

func (e *gcEnv) collect(t *testing.T) []uint32 {
	t.Helper()
	deleted, err := e.gc.Collect(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	return deleted
}

// An identity in use is kept; one unused is marked, kept through the
// heartbeat timeout, then deleted (and gone from the cache); one that is
// used again before the timeout is unmarked and kept.
func TestCollectorLifecycle(t *testing.T) {
	e := newGCEnv(t)
	ctx := ctxT(t)
	ids := map[string]uint32{}
	for _, name := range []string{"used", "unused", "back"} {
		id, err := e.alloc.Allocate(ctx, app(name))
		if err != nil {
			t.Fatal(err)
		}
		ids[name] = id
	}
	e.use(app("used").String(), true)

	if d := e.collect(t); len(d) != 0 {
		t.Fatalf("first collection deleted %v; it only marks", d)
	}
	for name, want := range map[string]bool{"used": false, "unused": true, "back": true} {
		u, _ := e.object(t, ids[name])
		if _, marked := unusedSinceOf(u); marked != want {
			t.Errorf("%s: marked = %v, want %v", name, marked, want)
		}
	}
	e.waitMark(t, ids["unused"], true)
	e.waitMark(t, ids["back"], true)

	e.advance(30 * time.Second)
	e.use(app("back").String(), true)
	if d := e.collect(t); len(d) != 0 {
		t.Fatalf("collection before the timeout deleted %v", d)
	}
	if u, _ := e.object(t, ids["back"]); u.GetAnnotations()[AnnotationUnusedSince] != "" {
		t.Error("an identity used again kept its mark")
	}
	e.waitMark(t, ids["back"], false)

	e.advance(31 * time.Second)
	d := e.collect(t)
	if len(d) != 1 || d[0] != ids["unused"] {
		t.Fatalf("collection after the timeout deleted %v, want [%d]", d, ids["unused"])
	}
	if _, ok := e.object(t, ids["unused"]); ok {
		t.Error("deleted identity still exists")
	}
	eventually(t, "cache drops the deleted identity", func() bool {
		_, ok := e.cache.LookupID(ids["unused"])
		return !ok
	})
	for _, name := range []string{"used", "back"} {
		if _, ok := e.object(t, ids[name]); !ok {
			t.Errorf("%s was deleted", name)
		}
	}
}

// Reusing a marked identity (an allocation for a label set whose last pod
// went) removes the mark, so the deletion due after the timeout does not
// happen; the collector's stale view of the mark does not matter.
func TestCollectorSparesReusedIdentity(t *testing.T) {
	e := newGCEnv(t)
	ctx := ctxT(t)
	id, err := e.alloc.Allocate(ctx, app("reused"))
	if err != nil {
		t.Fatal(err)
	}
	e.collect(t)
	e.waitMark(t, id, true)
	got, err := e.alloc.Allocate(ctx, app("reused"))
	if err != nil || got != id {
		t.Fatalf("re-allocation = %d, %v; want %d", got, err, id)
	}
	if u, _ := e.object(t, id); u.GetAnnotations()[AnnotationUnusedSince] != "" {
		t.Fatal("re-allocation left the mark")
	}
	// The collector may still see the old mark (its informer lags); the
	// deletion checks the object itself.
	e.advance(2 * time.Minute)
	if d := e.collect(t); len(d) != 0 {
		t.Fatalf("collected %v right after it was reused", d)
	}
	if _, ok := e.object(t, id); !ok {
		t.Fatal("reused identity deleted")
	}
}

// The collector and an allocator reusing the identity race: whichever way
// it goes, the allocator returns an identity that exists with its labels
// (deletion first: the allocator allocates it anew; unmark first: the
// deletion's precondition fails).
func TestCollectorAllocateRace(t *testing.T) {
	e := newGCEnv(t)
	ctx := ctxT(t)
	var collected, kept int
	for i := range 30 {
		labels := app(fmt.Sprintf("race-%d", i))
		id, err := e.alloc.Allocate(ctx, labels)
		if err != nil {
			t.Fatal(err)
		}
		e.collect(t)
		e.waitMark(t, id, true)
		e.advance(2 * time.Minute)
		since, _ := e.cache.unusedSince(id)
		var wg sync.WaitGroup
		var got uint32
		var aerr, derr error
		var gone bool
		wg.Go(func() { got, aerr = e.alloc.Allocate(ctx, labels) })
		wg.Go(func() { gone, derr = e.gc.delete(ctx, Identity{ID: id, Labels: labels}, since) })
		wg.Wait()
		if aerr != nil || derr != nil {
			t.Fatalf("round %d: allocate %v, delete %v", i, aerr, derr)
		}
		if gone {
			collected++
		} else {
			kept++
		}
		u, ok := e.object(t, got)
		if !ok {
			for _, act := range e.client.Actions() {
				name := ""
				switch a := act.(type) {
				case k8stesting.DeleteAction:
					name = a.GetName()
				case k8stesting.GetAction:
					name = a.GetName()
				case k8stesting.UpdateAction: // also every CreateAction: same methods
					u := a.GetObject().(*unstructured.Unstructured)
					name = u.GetName() + " rv=" + u.GetResourceVersion() + fmt.Sprint(u.GetAnnotations())
				}
				if strings.HasPrefix(name, strconv.FormatUint(uint64(got), 10)) {
					t.Logf("%s %s", act.GetVerb(), name)
				}
			}
			t.Fatalf("round %d: Allocate returned %d, which does not exist (collector deleted it: %v)", i, got, gone)
		}
		if cur, err := FromObject(u); err != nil || cur.Labels.String() != labels.String() {
			t.Fatalf("round %d: identity %d has labels %v (%v), want %s", i, got, cur.Labels, err, labels)
		}
		e.use(labels.String(), true) // done with it
	}
	t.Logf("30 races: %d deleted first (re-allocated), %d unmarked first (kept)", collected, kept)
}

func TestCollectorConfig(t *testing.T) {
	c := startCache(t, newFake(), nil)
	if _, err := NewCollector(newFake(), c, GCConfig{}); err == nil {
		t.Error("collector without InUse accepted")
	}
	if _, err := NewCollector(newFake(), c, GCConfig{InUse: func() map[string]bool { return nil }, HeartbeatTimeout: -time.Second}); err == nil {
		t.Error("negative heartbeat timeout accepted")
	}
	g, err := NewCollector(newFake(), c, GCConfig{InUse: func() map[string]bool { return nil }})
	if err != nil {
		t.Fatal(err)
	}
	if g.cfg.Interval != DefaultGCInterval || g.cfg.HeartbeatTimeout != DefaultHeartbeatTimeout {
		t.Errorf("defaults = %v/%v, want %v/%v", g.cfg.Interval, g.cfg.HeartbeatTimeout, DefaultGCInterval, DefaultHeartbeatTimeout)
	}
}
