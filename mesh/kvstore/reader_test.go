package kvstore_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/meshbed/meshbed/internal/testenv"
	"github.com/meshbed/meshbed/mesh/etcdtest"
	"github.com/meshbed/meshbed/mesh/kvstore"
)

// put writes kvs with a plain client (no lease), as a foreign writer would.
func put(t *testing.T, s *etcdtest.Server, kvs map[string]string) {
	t.Helper()
	for k, v := range kvs {
		if _, err := s.Client().Put(ctxT(t), k, v); err != nil {
			t.Fatal(err)
		}
	}
}

func del(t *testing.T, s *etcdtest.Server, keys ...string) {
	t.Helper()
	for _, k := range keys {
		if _, err := s.Client().Delete(ctxT(t), k); err != nil {
			t.Fatal(err)
		}
	}
}

// waitView waits until the reader's view equals want.
func waitView(t *testing.T, rec *recorder, want map[string]string) {
	t.Helper()
	testenv.Eventually(t, 15*time.Second, func() error {
		v, synced := rec.state()
		if !synced {
			return fmt.Errorf("not synced")
		}
		return equalState(v, want)
	})
}

func startReader(t *testing.T, s *etcdtest.Server, cfg kvstore.ReaderConfig, rec *recorder) *kvstore.Reader {
	t.Helper()
	r := kvstore.NewReader(connect(t, s), cfg, rec.handle)
	run(t, r.Run)
	return r
}

func TestReaderInitialSyncAndWatch(t *testing.T) {
	s := etcdtest.Start(t)
	put(t, s, map[string]string{
		"p/c1/a":  "1",
		"p/c1/b":  "2",
		"p/c10/x": "other cluster", // must not match p/c1
		"p/c1":    "not under the directory",
	})
	rec := newRecorder()
	startReader(t, s, kvstore.ReaderConfig{Prefix: "p/c1"}, rec)
	waitView(t, rec, map[string]string{"p/c1/a": "1", "p/c1/b": "2"})
	// Synced comes after the initial upserts.
	evs := rec.eventsSince(0)
	if len(evs) != 3 || evs[2].Kind != kvstore.EventSynced {
		t.Fatalf("initial events %v", evs)
	}

	put(t, s, map[string]string{"p/c1/c": "3", "p/c1/a": "1b", "p/c10/y": "no"})
	del(t, s, "p/c1/b")
	waitView(t, rec, map[string]string{"p/c1/a": "1b", "p/c1/c": "3"})

	// An identical rewrite is not re-emitted.
	n := rec.count()
	put(t, s, map[string]string{"p/c1/c": "3"})
	put(t, s, map[string]string{"p/c1/d": "4"}) // a marker after it
	waitView(t, rec, map[string]string{"p/c1/a": "1b", "p/c1/c": "3", "p/c1/d": "4"})
	if evs := rec.eventsSince(n); len(evs) != 1 || evs[0].Key != "p/c1/d" {
		t.Errorf("events after identical rewrite: %v", evs)
	}
}

func TestReaderWaitsForCanary(t *testing.T) {
	s := etcdtest.Start(t)
	put(t, s, map[string]string{"p/a": "1"})
	rec := newRecorder()
	startReader(t, s, kvstore.ReaderConfig{Prefix: "p", Canary: "synced/p"}, rec)
	put(t, s, map[string]string{"p/b": "2"})
	// Without the canary nothing is listed: give the reader a chance to
	// misbehave, then check (this is the one place a negative needs time).
	time.Sleep(300 * time.Millisecond)
	if v, synced := rec.state(); synced || len(v) != 0 {
		t.Fatalf("reader listed before the canary: synced=%v %v", synced, v)
	}
	put(t, s, map[string]string{"synced/p": "now"})
	waitView(t, rec, map[string]string{"p/a": "1", "p/b": "2"})
}

func TestReaderResyncsAfterRestart(t *testing.T) {
	s := etcdtest.Start(t)
	put(t, s, map[string]string{"p/same": "s", "p/changed": "old", "p/gone": "g", "synced/p": "t0"})
	rec := newRecorder()
	r := startReader(t, s, kvstore.ReaderConfig{Prefix: "p", Canary: "synced/p"}, rec)
	waitView(t, rec, map[string]string{"p/same": "s", "p/changed": "old", "p/gone": "g"})
	n := rec.count()

	// An ephemeral etcd comes back empty and is refilled by its owner, who
	// writes the canary last; the reader waits for it before relisting.
	s.Restart()
	put(t, s, map[string]string{"p/same": "s", "p/changed": "new", "p/added": "a"})
	put(t, s, map[string]string{"synced/p": "t1"})
	want := map[string]string{"p/same": "s", "p/changed": "new", "p/added": "a"}
	waitView(t, rec, want)
	if r.Resyncs() == 0 {
		t.Error("no resync recorded")
	}
	// Exactly the differences: no re-emitted unchanged key, one delete.
	got := map[string]kvstore.EventKind{}
	for _, ev := range rec.eventsSince(n) {
		if _, dup := got[ev.Key]; dup {
			t.Errorf("second event for %s: %v", ev.Key, ev.Kind)
		}
		got[ev.Key] = ev.Kind
	}
	wantEvents := map[string]kvstore.EventKind{"p/changed": kvstore.EventUpsert, "p/added": kvstore.EventUpsert, "p/gone": kvstore.EventDelete}
	for k, kind := range wantEvents {
		if got[k] != kind {
			t.Errorf("event for %s = %v, want %v", k, got[k], kind)
		}
	}
	if _, ok := got["p/same"]; ok {
		t.Error("unchanged key re-emitted")
	}
}

func TestReaderResyncsAfterPartition(t *testing.T) {
	tests := []struct {
		name string
		// drop: the connections die during the partition (a keepalive
		// timeout after 10 s or more in real life), so the reader must
		// relist after reconnecting; a short partition is bridged by TCP
		// and the watch simply catches up.
		drop       bool
		wantResync bool
	}{
		{"short, watch catches up", false, false},
		{"long, transport dropped", true, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := etcdtest.Start(t)
			put(t, s, map[string]string{"p/a": "1", "p/b": "2"})
			rec := newRecorder()
			r := startReader(t, s, kvstore.ReaderConfig{Prefix: "p"}, rec)
			waitView(t, rec, map[string]string{"p/a": "1", "p/b": "2"})

			s.Partition()
			// Changes on the server side the reader cannot see yet.
			put(t, s, map[string]string{"p/c": "3"})
			del(t, s, "p/a")
			if tt.drop {
				s.DropConnections()
			}
			s.Heal()
			waitView(t, rec, map[string]string{"p/b": "2", "p/c": "3"})
			if tt.wantResync {
				// The resumed watch may catch up before the relist the
				// reconnect causes: wait for the relist, not the view.
				testenv.Eventually(t, 15*time.Second, func() error {
					if r.Resyncs() == 0 {
						return fmt.Errorf("no resync after the transport was dropped")
					}
					return nil
				})
			} else if n := r.Resyncs(); n != 0 {
				t.Errorf("%d resyncs, want none: the watch should have caught up", n)
			}
		})
	}
}

func TestReaderRecoversFromCompaction(t *testing.T) {
	s := etcdtest.Start(t)
	put(t, s, map[string]string{"p/a": "1", "p/b": "2"})
	rec := newRecorder()
	// Hold the reader inside its initial list so that its watch starts
	// from a revision that is compacted by then.
	rec.block, rec.blocked = make(chan struct{}), make(chan struct{})
	r := startReader(t, s, kvstore.ReaderConfig{Prefix: "p"}, rec)
	select {
	case <-rec.blocked:
	case <-ctxT(t).Done():
		t.Fatal("reader did not list")
	}
	put(t, s, map[string]string{"p/c": "3", "p/a": "1b"})
	del(t, s, "p/b")
	if _, err := s.Compact(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	close(rec.block)
	waitView(t, rec, map[string]string{"p/a": "1b", "p/c": "3"})
	if r.Resyncs() == 0 {
		t.Error("compaction did not cause a resync")
	}
}
