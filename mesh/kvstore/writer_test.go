package kvstore_test

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/meshbed/meshbed/internal/testenv"
	"github.com/meshbed/meshbed/mesh/etcdtest"
	"github.com/meshbed/meshbed/mesh/kvstore"
	"github.com/meshbed/meshbed/mesh/wire"
)

func TestWriterCoalesces(t *testing.T) {
	tests := []struct {
		name      string
		beforeRun bool
		// maxVersion bounds how many times the key may have been written.
		maxVersion int64
	}{
		// Enqueued before Run: exactly one write of the last value.
		{"before run", true, 1},
		// While running, the first write may be in flight; the rest of the
		// burst collapses.
		{"while running", false, 5},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := etcdtest.Start(t)
			c := connect(t, s)
			w := kvstore.NewWriter(c, kvstore.WriterConfig{})
			if !tt.beforeRun {
				run(t, w.Run)
			}
			const burst = 1000
			for i := range burst {
				w.Upsert("k", []byte(strconv.Itoa(i)))
			}
			if tt.beforeRun {
				run(t, w.Run)
			}
			if err := w.Flush(ctxT(t)); err != nil {
				t.Fatal(err)
			}
			resp, err := s.Client().Get(ctxT(t), "k")
			if err != nil {
				t.Fatal(err)
			}
			kv := resp.Kvs[0]
			if string(kv.Value) != strconv.Itoa(burst-1) {
				t.Errorf("value = %q, want the last one", kv.Value)
			}
			if kv.Version > tt.maxVersion {
				t.Errorf("key written %d times for a burst of %d, want <= %d", kv.Version, burst, tt.maxVersion)
			}
			if clientv3.LeaseID(kv.Lease) != w.LeaseID() || kv.Lease == 0 {
				t.Errorf("key on lease %x, writer lease %x", kv.Lease, w.LeaseID())
			}
		})
	}
}

func TestWriterDeleteCancelsUpsert(t *testing.T) {
	s := etcdtest.Start(t)
	c := connect(t, s)
	ctx := ctxT(t)
	resp, err := s.Client().Get(ctx, "probe")
	if err != nil {
		t.Fatal(err)
	}
	rev0 := resp.Header.Revision

	w := kvstore.NewWriter(c, kvstore.WriterConfig{})
	w.Upsert("gone", []byte("1"))
	w.Upsert("gone", []byte("2"))
	w.Delete("gone")
	w.Upsert("kept", []byte("1"))
	w.Delete("kept")
	w.Upsert("kept", []byte("2"))
	run(t, w.Run)
	if err := w.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if w.Keys() != 1 {
		t.Errorf("Keys = %d, want 1", w.Keys())
	}
	// A put of "gone" would show as a store revision; "kept" is one.
	resp, err = s.Client().Get(ctx, "", clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Kvs) != 1 || string(resp.Kvs[0].Key) != "kept" || string(resp.Kvs[0].Value) != "2" {
		t.Errorf("store = %v", resp.Kvs)
	}
	if got := resp.Header.Revision - rev0; got != 1 {
		t.Errorf("%d revisions written, want 1 (the put of kept)", got)
	}
}

func TestWriterSkipsUnchanged(t *testing.T) {
	s := etcdtest.Start(t)
	c := connect(t, s)
	w := kvstore.NewWriter(c, kvstore.WriterConfig{})
	run(t, w.Run)
	ctx := ctxT(t)
	w.Upsert("k", []byte("a"))
	if err := w.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	// Set away and back before the writer runs again would be racy to
	// provoke; an identical upsert is the common case (a resync).
	w.Upsert("k", []byte("a"))
	if err := w.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	resp, err := s.Client().Get(ctx, "k")
	if err != nil {
		t.Fatal(err)
	}
	if v := resp.Kvs[0].Version; v != 1 {
		t.Errorf("version = %d, want 1", v)
	}
}

func TestWriterCanaryAfterInitialKeys(t *testing.T) {
	s := etcdtest.Start(t)
	writerClient, readerClient := connect(t, s), connect(t, s)
	const prefix = "cilium/state/nodes/v1/c1"
	canaryKey := wire.SyncedKey("c1", wire.NodesPrefix)

	// The reader starts first and must not list before the canary.
	rec := newRecorder()
	r := kvstore.NewReader(readerClient, kvstore.ReaderConfig{Prefix: prefix, Canary: canaryKey}, func(ev kvstore.Event) {
		if ev.Kind == kvstore.EventSynced {
			rec.mu.Lock()
			n := len(rec.view)
			rec.mu.Unlock()
			if n != 500 {
				t.Errorf("synced with %d keys, want 500", n)
			}
		}
		rec.handle(ev)
	})
	run(t, r.Run)

	w := kvstore.NewWriter(writerClient, kvstore.WriterConfig{})
	run(t, w.Run)
	for i := range 500 {
		w.Upsert(fmt.Sprintf("%s/n%03d", prefix, i), []byte("x"))
	}
	w.Synced(canaryKey)
	if err := w.Flush(ctxT(t)); err != nil {
		t.Fatal(err)
	}

	resp, err := s.Client().Get(ctxT(t), prefix+"/", clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	var maxRev int64
	for _, kv := range resp.Kvs {
		maxRev = max(maxRev, kv.ModRevision)
	}
	cresp, err := s.Client().Get(ctxT(t), canaryKey)
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Kvs) != 500 || len(cresp.Kvs) != 1 {
		t.Fatalf("%d keys, %d canaries", len(resp.Kvs), len(cresp.Kvs))
	}
	if cresp.Kvs[0].ModRevision <= maxRev {
		t.Errorf("canary at revision %d, keys up to %d", cresp.Kvs[0].ModRevision, maxRev)
	}
	if _, err := time.Parse(time.RFC3339, string(cresp.Kvs[0].Value)); err != nil {
		t.Errorf("canary value %q: %v", cresp.Kvs[0].Value, err)
	}
	testenv.Eventually(t, 10*time.Second, func() error {
		if v, synced := rec.state(); !synced || len(v) != 500 {
			return fmt.Errorf("reader synced=%v with %d keys", synced, len(v))
		}
		return nil
	})
}

func TestWriterPrunesOnSync(t *testing.T) {
	s := etcdtest.Start(t)
	c := connect(t, s)
	ctx := ctxT(t)
	const prefix = "cilium/state/services/v1/c1"
	// Leftovers of a previous owner, and a neighbour that must survive.
	for _, k := range []string{prefix + "/ns/old", prefix + "/ns/kept", prefix + "0/ns/neighbour"} {
		if err := c.Put(ctx, k, []byte("old")); err != nil {
			t.Fatal(err)
		}
	}
	w := kvstore.NewWriter(c, kvstore.WriterConfig{})
	w.Upsert(prefix+"/ns/kept", []byte("new"))
	w.Upsert(prefix+"/ns/added", []byte("new"))
	w.Synced(wire.SyncedKey("c1", wire.ServicesPrefix), prefix)
	run(t, w.Run)
	if err := w.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		prefix + "/ns/kept":       "new",
		prefix + "/ns/added":      "new",
		prefix + "0/ns/neighbour": "old",
	}
	if err := equalState(list(t, s, "cilium/state/services/v1/"), want); err != nil {
		t.Error(err)
	}
}

func TestWriterRegrantsLostLease(t *testing.T) {
	tests := []struct {
		name string
		lose func(t *testing.T, s *etcdtest.Server, w *kvstore.Writer)
	}{
		{"revoked", func(t *testing.T, s *etcdtest.Server, w *kvstore.Writer) {
			if _, err := s.Client().Revoke(ctxT(t), w.LeaseID()); err != nil {
				t.Fatal(err)
			}
		}},
		{"etcd restarted empty", func(t *testing.T, s *etcdtest.Server, w *kvstore.Writer) {
			s.Restart()
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := etcdtest.Start(t)
			c := connect(t, s)
			// A short TTL makes the keepalive (every TTL/3) notice a
			// revocation within a second.
			w := kvstore.NewWriter(c, kvstore.WriterConfig{LeaseTTL: 3 * time.Second})
			canaryKey := wire.SyncedKey("c1", "p")
			want := map[string]string{}
			for i := range 50 {
				k := fmt.Sprintf("p/k%02d", i)
				w.Upsert(k, []byte("v"))
				want[k] = "v"
			}
			w.Synced(canaryKey)
			run(t, w.Run)
			if err := w.Flush(ctxT(t)); err != nil {
				t.Fatal(err)
			}
			lease := w.LeaseID()

			tt.lose(t, s, w)
			testenv.Eventually(t, 15*time.Second, func() error {
				if w.LeaseID() == lease {
					return fmt.Errorf("lease %x not replaced", lease)
				}
				if err := equalState(list(t, s, "p/"), want); err != nil {
					return err
				}
				if len(list(t, s, canaryKey)) != 1 {
					return fmt.Errorf("canary not rewritten")
				}
				return nil
			})
			// Everything is on the new lease, the canary last.
			resp, err := s.Client().Get(ctxT(t), "", clientv3.WithPrefix())
			if err != nil {
				t.Fatal(err)
			}
			var maxKey, canaryRev int64
			for _, kv := range resp.Kvs {
				if clientv3.LeaseID(kv.Lease) != w.LeaseID() {
					t.Errorf("%s on lease %x, want %x", kv.Key, kv.Lease, w.LeaseID())
				}
				if string(kv.Key) == canaryKey {
					canaryRev = kv.ModRevision
				} else {
					maxKey = max(maxKey, kv.ModRevision)
				}
			}
			if canaryRev <= maxKey {
				t.Errorf("canary rewritten at %d before keys (up to %d)", canaryRev, maxKey)
			}
		})
	}
}

func TestWriterRetriesWhileDown(t *testing.T) {
	s := etcdtest.Start(t)
	c := connect(t, s)
	w := kvstore.NewWriter(c, kvstore.WriterConfig{})
	run(t, w.Run)
	w.Upsert("a", []byte("1"))
	if err := w.Flush(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	s.Stop()
	w.Upsert("b", []byte("2"))
	w.Delete("a")
	s.Restart()
	if err := w.Flush(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	if err := equalState(list(t, s, ""), map[string]string{"b": "2"}); err != nil {
		t.Error(err)
	}
}

func TestWriterUnsynced(t *testing.T) {
	s := etcdtest.Start(t)
	c := connect(t, s)
	w := kvstore.NewWriter(c, kvstore.WriterConfig{LeaseTTL: 3 * time.Second})
	canaryKey := wire.SyncedKey("c1", "p")
	w.Upsert("p/k", []byte("v"))
	w.Synced(canaryKey)
	run(t, w.Run)
	if err := w.Flush(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	if len(list(t, s, canaryKey)) != 1 {
		t.Fatal("canary not written")
	}

	w.Unsynced(canaryKey)
	if err := w.Flush(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	if err := equalState(list(t, s, ""), map[string]string{"p/k": "v"}); err != nil {
		t.Fatalf("after Unsynced: %v", err)
	}

	// A lease loss rewrites the keys but not the withdrawn canary.
	lease := w.LeaseID()
	if _, err := s.Client().Revoke(ctxT(t), lease); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 15*time.Second, func() error {
		if w.LeaseID() == lease {
			return fmt.Errorf("lease %x not replaced", lease)
		}
		return equalState(list(t, s, "p/"), map[string]string{"p/k": "v"})
	})
	if err := w.Flush(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	if got := list(t, s, canaryKey); len(got) != 0 {
		t.Fatalf("withdrawn canary rewritten after lease loss: %v", got)
	}

	// Synced brings it back.
	w.Synced(canaryKey)
	if err := w.Flush(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	if len(list(t, s, canaryKey)) != 1 {
		t.Fatal("canary not rewritten by Synced")
	}
}

// failingTxns returns a unary interceptor that fails every third
// transaction, alternately before sending it (nothing written) and after
// (written, but the answer lost), counting the failures.
func failingTxns(failed *atomic.Int64) grpc.UnaryClientInterceptor {
	var n atomic.Int64
	return func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		if _, ok := req.(*etcdserverpb.TxnRequest); !ok {
			return invoker(ctx, method, req, reply, cc, opts...)
		}
		i := n.Add(1)
		if i%3 != 0 {
			return invoker(ctx, method, req, reply, cc, opts...)
		}
		failed.Add(1)
		if i%2 == 0 {
			if err := invoker(ctx, method, req, reply, cc, opts...); err != nil {
				return err
			}
		}
		return status.Error(codes.Unavailable, "injected failure")
	}
}

// TestWriterBacklogSurvivesFailures writes a backlog of many batches for
// several owners, each with a canary that prunes a leftover, through a
// connection that fails a third of the transactions (before or after they
// are applied): everything is written, leftovers pruned, and each canary
// after every key of its owner. Then updates and deletes of keys while
// batches are in flight, with the failures going on, end in exactly the
// desired state.
func TestWriterBacklogSurvivesFailures(t *testing.T) {
	s := etcdtest.Start(t)
	var failed atomic.Int64
	c, err := kvstore.Connect(context.Background(), kvstore.Config{
		Endpoints:   s.Endpoints(),
		Logger:      testLogger(t),
		DialOptions: []grpc.DialOption{grpc.WithChainUnaryInterceptor(failingTxns(&failed))},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	const owners, perOwner = 8, 300 // 2,400 keys: 19 batches
	ctx := ctxT(t)
	for o := range owners {
		if _, err := s.Client().Put(ctx, fmt.Sprintf("o%d/leftover", o), "old"); err != nil {
			t.Fatal(err)
		}
	}
	w := kvstore.NewWriter(c, kvstore.WriterConfig{MinBackoff: time.Millisecond, MaxBackoff: 10 * time.Millisecond})
	want := map[string]string{}
	for o := range owners {
		for k := range perOwner {
			key := fmt.Sprintf("o%d/k%03d", o, k)
			w.Upsert(key, []byte("v1"))
			want[key] = "v1"
		}
		w.Synced(fmt.Sprintf("synced/o%d", o), fmt.Sprintf("o%d", o))
	}
	run(t, w.Run)
	if err := w.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if failed.Load() == 0 {
		t.Fatal("no transaction failed: the test tests nothing")
	}
	resp, err := s.Client().Get(ctx, "", clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	maxRev, canaryRev := map[string]int64{}, map[string]int64{}
	for _, kv := range resp.Kvs {
		k := string(kv.Key)
		if owner, ok := strings.CutPrefix(k, "synced/"); ok {
			canaryRev[owner] = kv.ModRevision
			continue
		}
		got[k] = string(kv.Value)
		owner, _, _ := strings.Cut(k, "/")
		maxRev[owner] = max(maxRev[owner], kv.ModRevision)
	}
	if err := equalState(got, want); err != nil {
		t.Fatalf("after the backlog (%d failed transactions): %v", failed.Load(), err)
	}
	for o := range owners {
		owner := fmt.Sprintf("o%d", o)
		if canaryRev[owner] <= maxRev[owner] {
			t.Errorf("canary of %s at revision %d, its keys up to %d", owner, canaryRev[owner], maxRev[owner])
		}
	}

	// Changes racing with the batches being written.
	before := failed.Load()
	for round := range 5 {
		for o := range owners {
			for k := round; k < perOwner; k += 7 {
				key := fmt.Sprintf("o%d/k%03d", o, k)
				if (k+round)%3 == 0 {
					w.Delete(key)
					delete(want, key)
				} else {
					v := fmt.Sprintf("v%d", round+2)
					w.Upsert(key, []byte(v))
					want[key] = v
				}
			}
		}
	}
	if err := w.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if failed.Load() == before {
		t.Fatal("no transaction failed during the updates")
	}
	got = list(t, s, "o")
	if err := equalState(got, want); err != nil {
		t.Fatalf("after the updates: %v", err)
	}
	t.Logf("%d transactions failed on the way", failed.Load())
}
