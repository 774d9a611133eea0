package kvstore

import (
	"runtime"
	"sync"
	"testing"
	"time"
)

// TestWatchdogStalls drives the watchdog with injected wake-up times and
// scheduling latencies: on-time periods are never stalled, a late wake-up
// is stalled from its due time plus the tolerance, a period with a high
// scheduling latency is stalled whole, and a wake-up overdue right now
// counts before the watchdog has run.
func TestWatchdogStalls(t *testing.T) {
	const (
		period = 50 * time.Millisecond
		tol    = 20 * time.Millisecond
		thresh = 10 * time.Millisecond
	)
	t0 := time.Unix(1_000_000, 0)
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	ms := func(n int) time.Duration { return time.Duration(n) * time.Millisecond }
	type tick struct {
		at    int // ms
		sched time.Duration
	}
	tests := []struct {
		name     string
		ticks    []tick
		from, to int // the span asked about, ms
		want     time.Duration
	}{
		{"on time", []tick{{0, 0}, {50, 0}, {100, 0}, {150, 0}}, 0, 150, 0},
		{"jitter within tolerance", []tick{{0, 0}, {65, 0}, {130, 0}}, 0, 130, 0},
		{"late wake-up", []tick{{0, 0}, {50, 0}, {1100, 0}, {1150, 0}}, 0, 1150,
			// due at 100, stalled from 120 to 1100
			ms(980)},
		{"span cuts a stall", []tick{{0, 0}, {50, 0}, {1100, 0}, {1150, 0}}, 600, 800, ms(200)},
		{"span before the stall", []tick{{0, 0}, {50, 0}, {1100, 0}, {1150, 0}}, 0, 110, 0},
		{"busy scheduler", []tick{{0, 0}, {50, 0}, {100, ms(30)}, {150, 0}}, 0, 150,
			// the whole period 50..100
			ms(50)},
		{"busy scheduler below threshold", []tick{{0, 0}, {50, ms(9)}, {100, ms(9)}}, 0, 100, 0},
		{"busy and late merge", []tick{{0, 0}, {50, 0}, {100, ms(30)}, {400, ms(30)}}, 0, 400,
			// 50..100 busy, then the period due at 150 is late and busy:
			// 100..400
			ms(350)},
		{"overdue now", []tick{{0, 0}, {50, 0}}, 0, 600,
			// due at 100; from 120 to the question at 600
			ms(480)},
		{"overdue after a recorded stall", []tick{{0, 0}, {50, 0}, {1100, 0}}, 0, 1500,
			// 120..1100 recorded; due at 1150, overdue from 1170 to 1500
			ms(980) + ms(330)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w := NewWatchdog(WatchdogConfig{Period: period, Tolerance: tol, SchedThreshold: thresh})
			for _, tk := range tt.ticks {
				w.tick(at(tk.at), tk.sched)
			}
			if got := w.Stalled(at(tt.from), at(tt.to)); got != tt.want {
				t.Errorf("Stalled(%d ms, %d ms) = %v, want %v (stalls %v)", tt.from, tt.to, got, tt.want, w.stalls)
			}
		})
	}
}

func TestWatchdogForgetsPastHorizon(t *testing.T) {
	w := NewWatchdog(WatchdogConfig{Period: 50 * time.Millisecond, Tolerance: 10 * time.Millisecond, Horizon: time.Second})
	t0 := time.Unix(1_000_000, 0)
	w.tick(t0, 0)
	w.tick(t0.Add(500*time.Millisecond), 0) // stalled 60..500
	now := t0.Add(500 * time.Millisecond)
	for i := 1; i <= 40; i++ {
		now = t0.Add(500*time.Millisecond + time.Duration(i)*50*time.Millisecond)
		w.tick(now, 0)
	}
	if len(w.stalls) != 0 {
		t.Fatalf("stalls %v kept past the horizon", w.stalls)
	}
	if got := w.Stalled(t0, now); got != 0 {
		t.Fatalf("Stalled = %v after the horizon", got)
	}
}

// TestHealthVerdict: the silence of a connection is the time since its last
// answer less the process's own stalls, capped by MaxDiscount, so that a
// starved process waits longer but never longer than the bound.
func TestHealthVerdict(t *testing.T) {
	cfg := HealthConfig{Interval: 500 * time.Millisecond, Timeout: 2 * time.Second, MaxDiscount: 750 * time.Millisecond}.withDefaults()
	now := time.Unix(1_000_000, 0)
	ago := func(d time.Duration) time.Time { return now.Add(-d) }
	tests := []struct {
		name    string
		last    time.Time
		stalled time.Duration
		want    bool // unreachable
	}{
		{"never answered", time.Time{}, 0, true},
		{"recent answer", ago(time.Second), 0, false},
		{"silent for the timeout", ago(2 * time.Second), 0, true},
		{"silent, but the process was stalled", ago(2500 * time.Millisecond), 600 * time.Millisecond, false},
		{"stall discounted up to the cap only", ago(2800 * time.Millisecond), 2 * time.Second, true},
		{"within timeout plus the cap", ago(2700 * time.Millisecond), 2 * time.Second, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := cfg.unreachable(now, tt.last, tt.stalled); got != tt.want {
				t.Errorf("unreachable = %v, want %v", got, tt.want)
			}
		})
	}
	if b := (HealthConfig{}).Bound(); b > 3*time.Second {
		t.Errorf("default bound %v exceeds the mesh's 3 s", b)
	}
	if b := (HealthConfig{MaxDiscount: -1}).Bound(); b != DefaultHealthTimeout+healthEvalPeriod {
		t.Errorf("bound without discount %v", b)
	}
}

// TestWatchdogSeesABusyScheduler runs the real watchdog while more
// goroutines want to run than there are processors: the goroutines wait to
// be scheduled, and the watchdog reports that time as stalled.
func TestWatchdogSeesABusyScheduler(t *testing.T) {
	if testing.Short() {
		t.Skip("keeps every CPU busy for a second")
	}
	w := NewWatchdog(WatchdogConfig{})
	release := w.Acquire()
	defer release()
	start := time.Now()
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range 8 * runtime.GOMAXPROCS(0) {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				// Spin without yielding; the runtime preempts every 10 ms.
				for i := 0; i < 1_000_000; i++ {
					_ = i * i
				}
			}
		})
	}
	time.Sleep(time.Second)
	close(stop)
	wg.Wait()
	end := time.Now()
	got := w.Stalled(start, end)
	t.Logf("stalled %v of %v with %d spinning goroutines on %d processors", got.Round(time.Millisecond),
		end.Sub(start).Round(time.Millisecond), 8*runtime.GOMAXPROCS(0), runtime.GOMAXPROCS(0))
	if got < 200*time.Millisecond {
		t.Errorf("stalled %v while the scheduler was saturated, want most of the second", got)
	}
}
