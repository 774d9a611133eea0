package kvstore_test

import (
	"context"
	"fmt"
	"runtime"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"

	"github.com/meshbed/meshbed/internal/testenv"
	"github.com/meshbed/meshbed/mesh/etcdtest"
	"github.com/meshbed/meshbed/mesh/kvstore"
	"github.com/meshbed/meshbed/mesh/wire"
)

// TestHealthDetectsLoss checks the detection bound with the default
// configuration (the agent's), for a crashed server and for a black-holed
// one, and that recovery is reported.
func TestHealthDetectsLoss(t *testing.T) {
	bound := kvstore.HealthConfig{}.Bound()
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
			// Dialed opaquely: etcdtest's partition is a silence, as a
			// black hole is, not a hung server (see etcdtest.Server.Dial).
			c, err := kvstore.Connect(context.Background(), kvstore.Config{Endpoints: s.Endpoints(), Dialer: etcdtest.Dial, Logger: testLogger(t)})
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
			testenv.Eventually(t, 5*time.Second, func() error {
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
			testenv.Eventually(t, 10*time.Second, func() error {
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
	testenv.Eventually(t, 2*time.Second, func() error {
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
	testenv.Eventually(t, 10*time.Second, func() error {
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
	testenv.Eventually(t, 10*time.Second, func() error {
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
	testenv.Eventually(t, 5*time.Second, func() error {
		if st := h.Status(); !st.Reachable {
			return fmt.Errorf("status %+v", st)
		}
		return nil
	})
}

// slowKey returns a unary interceptor that holds every read of key until
// the call's deadline (a probe that takes longer than its timeout, as on a
// CPU-starved machine), counting them; other calls pass.
func slowKey(key string, held *atomic.Int64) grpc.UnaryClientInterceptor {
	return func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		if r, ok := req.(*etcdserverpb.RangeRequest); ok && string(r.Key) == key {
			held.Add(1)
			<-ctx.Done()
			return ctx.Err()
		}
		return invoker(ctx, method, req, reply, cc, opts...)
	}
}

// TestHealthCountsActivity: a probe that never answers in time is no loss
// while watch events keep arriving on the connection, and a black-holed
// connection is still declared lost within the bound even though
// events were flowing until the cut. Without events, the same slow probe
// is a loss (which is what makes the first case meaningful).
func TestHealthCountsActivity(t *testing.T) {
	const (
		interval = 200 * time.Millisecond
		timeout  = time.Second
		observe  = 4 * timeout
		// Events come slower than Interval, so that probes are sent in the
		// gaps (and all time out), and well within Timeout.
		eventEvery = 250 * time.Millisecond
	)
	bound := kvstore.HealthConfig{Interval: interval, Timeout: timeout}.Bound()
	tests := []struct {
		name   string
		events bool
	}{
		{"watch events flowing", true},
		{"silent connection", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := etcdtest.Start(t)
			var held atomic.Int64
			c, err := kvstore.Connect(context.Background(), kvstore.Config{
				Endpoints:   s.Endpoints(),
				Dialer:      etcdtest.Dial, // a partition is a silence (etcdtest.Server.Dial)
				Logger:      testLogger(t),
				DialOptions: []grpc.DialOption{grpc.WithChainUnaryInterceptor(slowKey(wire.HeartbeatKey, &held))},
			})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { c.Close() })
			if tt.events {
				rec := newRecorder()
				run(t, kvstore.NewReader(c, kvstore.ReaderConfig{Prefix: "busy"}, rec.handle).Run)
				// The server's own client writes, so that the events reach
				// the Reader through the relay while a partition cuts it.
				run(t, func(ctx context.Context) error {
					tick := time.NewTicker(eventEvery)
					defer tick.Stop()
					for i := 0; ; i++ {
						select {
						case <-ctx.Done():
							return nil
						case <-tick.C:
							if _, err := s.Client().Put(ctx, "busy/k", strconv.Itoa(i)); err != nil && ctx.Err() == nil {
								return err
							}
						}
					}
				})
			} else if err := c.Put(ctxT(t), "warm", []byte("up")); err != nil {
				t.Fatal(err)
			}

			var mu sync.Mutex
			var changes []kvstore.Status
			h := kvstore.NewHealth(c, kvstore.HealthConfig{Interval: interval, Timeout: timeout, OnChange: func(st kvstore.Status) {
				mu.Lock()
				defer mu.Unlock()
				changes = append(changes, st)
			}})
			run(t, h.Run)
			changeLog := func() []kvstore.Status {
				mu.Lock()
				defer mu.Unlock()
				return slices.Clone(changes)
			}

			if !tt.events {
				testenv.Eventually(t, 2*bound, func() error {
					if st := h.Status(); !st.Known || st.Reachable {
						return fmt.Errorf("slow probe on a silent connection not a loss: %+v", st)
					}
					return nil
				})
				if held.Load() == 0 {
					t.Fatal("no probe was held")
				}
				return
			}

			// Over several timeouts, every probe times out and the status
			// stays reachable (one OnChange: the first verdict).
			deadline := time.Now().Add(observe)
			for time.Now().Before(deadline) {
				if st := h.Status(); st.Known && !st.Reachable {
					t.Fatalf("declared lost while events flow: %+v (%d probes held)", st, held.Load())
				}
				time.Sleep(interval / 4)
			}
			st := h.Status()
			if !st.Reachable || !st.LastSuccess.IsZero() || st.Err == nil {
				t.Fatalf("status %+v, want reachable with no successful probe and a probe error", st)
			}
			if n := held.Load(); n < 2 {
				t.Fatalf("%d probes held in %v, want the slow probe exercised", n, observe)
			}
			if log := changeLog(); len(log) != 1 || !log[0].Reachable {
				t.Fatalf("OnChange calls %+v, want one (reachable)", log)
			}

			// A black hole delivers nothing: detected within the bound.
			changed := h.Changed()
			lost := time.Now()
			s.Partition()
			select {
			case <-changed:
			case <-time.After(bound + time.Second):
				t.Fatalf("partition not detected within %v", bound+time.Second)
			}
			detected := time.Since(lost)
			t.Logf("partition detected after %v (bound %v), %d probes held", detected, bound, held.Load())
			if detected > bound+300*time.Millisecond {
				t.Errorf("detected after %v, bound %v", detected, bound)
			}
			if st := h.Status(); st.Reachable {
				t.Fatalf("after change: %+v", st)
			}
			// Events arriving again (the probe is still slow) are recovery.
			s.Heal()
			testenv.Eventually(t, 10*time.Second, func() error {
				if !h.Status().Reachable {
					return fmt.Errorf("not reachable after heal: %+v", h.Status())
				}
				return nil
			})
		})
	}
}

// TestHealthDiscountsOwnStalls cuts the connection off (a black hole)
// while the process's watchdog reports it starved: the silence is not
// taken for a loss while it is the process's own, up to MaxDiscount, so
// the loss comes later but still within Bound; with a process that runs,
// it comes after Timeout, as without a watchdog.
func TestHealthDiscountsOwnStalls(t *testing.T) {
	const (
		interval    = 100 * time.Millisecond
		timeout     = 500 * time.Millisecond
		maxDiscount = 400 * time.Millisecond
	)
	cfg := kvstore.HealthConfig{Interval: interval, Timeout: timeout, MaxDiscount: maxDiscount}
	bound := cfg.Bound()
	for _, starved := range []bool{false, true} {
		t.Run(fmt.Sprintf("starved=%v", starved), func(t *testing.T) {
			s := etcdtest.Start(t)
			c := connect(t, s)
			// The test runs the watchdog: every 20 ms, with a scheduling
			// latency above the threshold while the process is to look
			// starved.
			w := kvstore.NewWatchdog(kvstore.WatchdogConfig{Period: 20 * time.Millisecond, Tolerance: time.Hour, SchedThreshold: 10 * time.Millisecond})
			var starve atomic.Bool
			run(t, func(ctx context.Context) error {
				tick := time.NewTicker(20 * time.Millisecond)
				defer tick.Stop()
				for {
					select {
					case <-ctx.Done():
						return nil
					case now := <-tick.C:
						var sched time.Duration
						if starve.Load() {
							sched = time.Second
						}
						w.Tick(now, sched)
					}
				}
			})
			cfg := cfg
			cfg.Watchdog = w
			h := kvstore.NewHealth(c, cfg)
			run(t, h.Run)
			testenv.Eventually(t, 5*time.Second, func() error {
				if st := h.Status(); !st.Known || !st.Reachable {
					return fmt.Errorf("status %+v", st)
				}
				return nil
			})

			// The test process's real stalls (a loaded machine): the
			// injected watchdog ignores them, so the detection may be late
			// by as much, and the upper bounds allow for it.
			own := kvstore.NewWatchdog(kvstore.WatchdogConfig{})
			defer own.Acquire()()
			changed := h.Changed()
			starve.Store(starved)
			lost := time.Now()
			s.Partition()
			t.Cleanup(s.Heal)
			select {
			case <-changed:
			case <-time.After(bound + 2*time.Second):
				t.Fatalf("loss not detected within %v", bound+2*time.Second)
			}
			detected := time.Since(lost)
			if st := h.Status(); st.Reachable {
				t.Fatalf("after change: %+v", st)
			}
			stalled := own.Stalled(lost, time.Now())
			t.Logf("loss detected after %v (timeout %v, max discount %v, bound %v; the test process stalled %v)",
				detected.Round(time.Millisecond), timeout, maxDiscount, bound, stalled.Round(time.Millisecond))
			// The last answer came at most one probe interval before the
			// cut, so with a starved process the silence is discounted by
			// all of MaxDiscount: never reported before timeout+maxDiscount
			// less that interval.
			if early := timeout + maxDiscount - interval; starved && detected < early {
				t.Errorf("starved process reported the loss after %v, before %v: its own stall was taken for silence", detected, early)
			}
			if !starved && detected-stalled >= timeout+maxDiscount {
				t.Errorf("a process that runs reported the loss after %v: a stall was discounted that did not happen", detected)
			}
			// Scheduling on a loaded machine earns a little slack.
			if detected-stalled > bound+300*time.Millisecond {
				t.Errorf("detected after %v (%v of it stalled), bound %v", detected, stalled, bound)
			}
		})
	}
}

// TestHealthVouchesForHungServer checks the kernel's part of the verdict:
// a server that stops answering while its host still acknowledges what it
// is sent (etcdtest's Partition, seen through the client's own socket) is
// a slow peer, not a cut link. It stays reachable, vouched for, beyond
// Timeout, and is reported lost once VouchFor has run out too. A cut link
// is not vouched for: TestHealthDetectsLoss dials opaquely so that only
// the silence counts, and the simulator's partitions are black holes in
// the kernel, detected within Bound (sim's partition tests).
func TestHealthVouchesForHungServer(t *testing.T) {
	cfg := kvstore.HealthConfig{Interval: 100 * time.Millisecond, Timeout: 500 * time.Millisecond, VouchFor: time.Second}
	s := etcdtest.Start(t)
	c, err := kvstore.Connect(context.Background(), kvstore.Config{Endpoints: s.Endpoints(), Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	h := kvstore.NewHealth(c, cfg)
	run(t, h.Run)
	testenv.Eventually(t, 5*time.Second, func() error {
		if st := h.Status(); !st.Known || !st.Reachable || st.Vouched {
			return fmt.Errorf("status %+v, want reachable on its own answers", st)
		}
		return nil
	})

	changed := h.Changed()
	hung := time.Now()
	s.Partition()
	testenv.Eventually(t, cfg.HungBound(), func() error {
		if st := h.Status(); !st.Vouched || !st.Reachable {
			return fmt.Errorf("status %+v, want reachable, vouched for by the kernel", st)
		}
		return nil
	})
	vouched := time.Since(hung)
	select {
	case <-changed:
	case <-time.After(cfg.HungBound() + time.Second):
		t.Fatalf("hung server not reported lost within %v", cfg.HungBound()+time.Second)
	}
	detected := time.Since(hung)
	st := h.Status()
	t.Logf("vouched for after %v, lost after %v (timeout %v, hung bound %v): %+v", vouched, detected, cfg.Timeout, cfg.HungBound(), st)
	if st.Reachable || st.Vouched {
		t.Fatalf("after the change: %+v, want unreachable", st)
	}
	// The last answer came at most an Interval or so before the cut.
	if min := cfg.Timeout + cfg.VouchFor - 2*cfg.Interval; detected < min {
		t.Errorf("lost after %v: the kernel's word should have held for %v", detected, min)
	}
	if detected > cfg.HungBound()+300*time.Millisecond {
		t.Errorf("lost after %v, hung bound %v", detected, cfg.HungBound())
	}

	s.Heal()
	testenv.Eventually(t, 10*time.Second, func() error {
		if st := h.Status(); !st.Reachable || st.Vouched {
			return fmt.Errorf("not reachable on its own answers again: %+v", st)
		}
		return nil
	})
}

// TestTCPVerdict checks the verdict on one connection's TCP state.
func TestTCPVerdict(t *testing.T) {
	const stall = 500 // ms
	est := uint8(unix.BPF_TCP_ESTABLISHED)
	tests := []struct {
		name string
		info unix.TCPInfo
		lost bool
	}{
		{"idle", unix.TCPInfo{State: est, Last_ack_recv: 5000}, false},
		{"bytes in flight, no timer fired yet", unix.TCPInfo{State: est, Unacked: 2, Last_ack_recv: 5000}, false},
		{"retransmitting, acknowledged lately", unix.TCPInfo{State: est, Unacked: 1, Retransmits: 1, Last_ack_recv: 100}, false},
		{"retransmitting, nothing acknowledged", unix.TCPInfo{State: est, Unacked: 1, Retransmits: 2, Backoff: 2, Last_ack_recv: 900}, true},
		{"probing a window, nothing acknowledged", unix.TCPInfo{State: est, Probes: 1, Backoff: 1, Last_ack_recv: 900}, true},
		{"closing", unix.TCPInfo{State: unix.BPF_TCP_CLOSE_WAIT}, true},
	}
	for _, tt := range tests {
		if got := kvstore.TCPLost(&tt.info, stall*time.Millisecond); got != tt.lost {
			t.Errorf("%s: lost %v, want %v", tt.name, got, tt.lost)
		}
	}
}
