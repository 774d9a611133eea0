package kvstore_test

import (
	"context"
	"fmt"
	"runtime"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/meshbed/meshbed/mesh/etcdtest"
	"github.com/meshbed/meshbed/mesh/kvstore"
)

// TestHealthDetectsLoss checks the detection bound with the default
// configuration (the agent's), for a crashed server and for a black-holed
// one, and that recovery is reported.
func TestHealthDetectsLoss(t *testing.T) {
	bound := kvstore.DefaultHealthInterval + kvstore.DefaultHealthTimeout
	tests := []struct {
		name    string
		lose    func(*etcdtest.Server)
		recover func(*etcdtest.Server)
	}{
		{"crash", (*etcdtest.Server).Stop, (*etcdtest.Server).Restart},
		{"partition", (*etcdtest.Server).Partition, (*etcdtest.Server).Heal},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := etcdtest.Start(t)
			c, err := kvstore.Connect(context.Background(), kvstore.Config{Endpoints: s.Endpoints(), Logger: testLogger(t)})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { c.Close() })
			var mu sync.Mutex
			var changes []kvstore.Status
			h := kvstore.NewHealth(c, kvstore.HealthConfig{OnChange: func(st kvstore.Status) {
				mu.Lock()
				defer mu.Unlock()
				changes = append(changes, st)
			}})
			run(t, h.Run)
			eventually(t, 5*time.Second, func() error {
				if st := h.Status(); !st.Known || !st.Reachable {
					return fmt.Errorf("status %+v", st)
				}
				return nil
			})

			changed := h.Changed()
			lost := time.Now()
			tt.lose(s)
			select {
			case <-changed:
			case <-time.After(bound + time.Second):
				t.Fatalf("loss not detected within %v", bound+time.Second)
			}
			detected := time.Since(lost)
			st := h.Status()
			if st.Reachable || st.Err == nil {
				t.Fatalf("after change: %+v", st)
			}
			t.Logf("loss detected after %v (bound %v), err: %v", detected, bound, st.Err)
			// Scheduling on a loaded machine earns a little slack.
			if detected > bound+300*time.Millisecond {
				t.Errorf("detected after %v, bound %v", detected, bound)
			}

			tt.recover(s)
			eventually(t, 10*time.Second, func() error {
				if !h.Status().Reachable {
					return fmt.Errorf("not reachable again: %+v", h.Status())
				}
				return nil
			})
			mu.Lock()
			defer mu.Unlock()
			if len(changes) != 3 || !changes[0].Reachable || changes[1].Reachable || !changes[2].Reachable {
				t.Errorf("OnChange calls: %+v", changes)
			}
		})
	}
}

func TestHealthUnknownUntilTimeout(t *testing.T) {
	s := etcdtest.Start(t)
	s.Stop()
	c := connect(t, s)
	h := kvstore.NewHealth(c, kvstore.HealthConfig{Interval: 50 * time.Millisecond, Timeout: 300 * time.Millisecond})
	if st := h.Status(); st.Known {
		t.Fatalf("known before Run: %+v", st)
	}
	run(t, h.Run)
	eventually(t, 2*time.Second, func() error {
		if st := h.Status(); !st.Known || st.Reachable {
			return fmt.Errorf("status %+v", st)
		}
		return nil
	})
}

// TestNoGoroutineLeak runs every component through a loss and recovery,
// stops them, and checks that their goroutines are gone.
func TestNoGoroutineLeak(t *testing.T) {
	s := etcdtest.Start(t)
	// Warm up the server's own goroutines (and the direct client's).
	put(t, s, map[string]string{"warm": "up"})
	before := runtime.NumGoroutine()

	ctx, cancel := context.WithCancel(context.Background())
	c, err := kvstore.Connect(ctx, kvstore.Config{Endpoints: s.Endpoints(), KeepAliveTime: 500 * time.Millisecond, KeepAliveTimeout: 500 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	w := kvstore.NewWriter(c, kvstore.WriterConfig{})
	rec := newRecorder()
	r := kvstore.NewReader(c, kvstore.ReaderConfig{Prefix: "p", Canary: "synced/p"}, rec.handle)
	h := kvstore.NewHealth(c, kvstore.HealthConfig{})
	var wg sync.WaitGroup
	for _, fn := range []func(context.Context) error{w.Run, r.Run, h.Run} {
		wg.Go(func() { fn(ctx) })
	}
	w.Upsert("p/a", []byte("1"))
	w.Synced("synced/p")
	waitView(t, rec, map[string]string{"p/a": "1"})
	lease := w.LeaseID()
	s.Restart()
	eventually(t, 10*time.Second, func() error {
		switch {
		case w.LeaseID() == lease:
			return fmt.Errorf("writer did not re-grant")
		case r.Resyncs() == 0:
			return fmt.Errorf("reader did not resync")
		case !h.Status().Reachable:
			return fmt.Errorf("not reachable")
		}
		return nil
	})
	waitView(t, rec, map[string]string{"p/a": "1"})

	cancel()
	wg.Wait()
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	const tolerance = 2
	eventually(t, 10*time.Second, func() error {
		if n := runtime.NumGoroutine(); n > before+tolerance {
			buf := make([]byte, 1<<20)
			return fmt.Errorf("%d goroutines, %d before:\n%s", n, before, buf[:runtime.Stack(buf, true)])
		}
		return nil
	})
}

// TestReadOnlyRemoteUser connects as a user that may read cilium/state/
// only, as remote clusters do: readers work, and the health probe of a key
// it may not read still counts the server as reachable.
func TestReadOnlyRemoteUser(t *testing.T) {
	s := etcdtest.Start(t)
	ctx := ctxT(t)
	ec := s.Client()
	put(t, s, map[string]string{"cilium/state/nodes/v1/c1/n1": "x", "cilium/other": "secret"})
	steps := []func() error{
		func() error { _, err := ec.RoleAdd(ctx, "remote"); return err },
		func() error {
			_, err := ec.RoleGrantPermission(ctx, "remote", "cilium/state/", clientv3.GetPrefixRangeEnd("cilium/state/"), clientv3.PermissionType(clientv3.PermRead))
			return err
		},
		func() error { _, err := ec.UserAdd(ctx, "remote", "remote-pw"); return err },
		func() error { _, err := ec.UserGrantRole(ctx, "remote", "remote"); return err },
		func() error { _, err := ec.UserAdd(ctx, "root", "root-pw"); return err },
		func() error { _, err := ec.UserGrantRole(ctx, "root", "root"); return err },
		func() error { _, err := ec.AuthEnable(ctx); return err },
	}
	for i, step := range steps {
		if err := step(); err != nil {
			t.Fatalf("auth setup step %d: %v", i, err)
		}
	}
	c, err := kvstore.Connect(ctx, kvstore.Config{Endpoints: s.Endpoints(), Username: "remote", Password: "remote-pw", Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if _, _, err := c.Get(ctx, "cilium/other"); err == nil {
		t.Fatal("read-only user read outside cilium/state/")
	}
	rec := newRecorder()
	r := kvstore.NewReader(c, kvstore.ReaderConfig{Prefix: "cilium/state/nodes/v1/c1"}, rec.handle)
	run(t, r.Run)
	waitView(t, rec, map[string]string{"cilium/state/nodes/v1/c1/n1": "x"})

	h := kvstore.NewHealth(c, kvstore.HealthConfig{Interval: 50 * time.Millisecond})
	run(t, h.Run)
	eventually(t, 5*time.Second, func() error {
		if st := h.Status(); !st.Reachable {
			return fmt.Errorf("status %+v", st)
		}
		return nil
	})
}
