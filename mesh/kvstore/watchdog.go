package kvstore

import (
	"context"
	"math"
	"runtime"
	"runtime/metrics"
	"sync"
	"time"
)

// A Watchdog keeps the process's own clock: how much of a stretch of wall
// time this process spent unable to run, so that a loss detector does not
// take the silence of its own starved process for the silence of a
// connection.
//
// It wakes every Period. A wake-up later than Tolerance means the process
// was not scheduled in between (CPU starvation by other processes, a
// stop-the-world pause, a frozen VM): that lateness is stalled time. A
// process can also be scheduled yet unable to keep up with its own
// goroutines; then every goroutine, including those that read the network,
// waits in the run queue. When the runtime's scheduling latency over a
// period (runtime/metrics /sched/latencies:seconds, at the quantile
// SchedQuantile) reaches SchedThreshold, the whole period is stalled.
//
// Time in which the process ran normally is never stalled, so a real
// partition of a process that runs is detected exactly as without a
// watchdog; callers cap the discount they take (HealthConfig.MaxDiscount)
// so that even a starved process detects one within a known bound.
type Watchdog struct {
	cfg WatchdogConfig

	mu      sync.Mutex
	stalls  []span    // disjoint, oldest first, none ended before the horizon
	due     time.Time // the pending wake-up; zero while not running
	users   int
	cancel  context.CancelFunc
	done    chan struct{}
	sampler *schedSampler
}

// WatchdogConfig configures a Watchdog; zero fields take the defaults.
type WatchdogConfig struct {
	// Period between wake-ups (default 50 ms).
	Period time.Duration
	// Tolerance: lateness up to this is scheduling jitter, not a stall
	// (default 50 ms).
	Tolerance time.Duration
	// SchedThreshold: a period in which goroutines waited this long to
	// run (at SchedQuantile) counts as stalled (default 20 ms; an idle
	// process schedules in microseconds). Negative disables the check.
	SchedThreshold time.Duration
	// SchedQuantile of the scheduling latencies over one period compared
	// with SchedThreshold (default 0.9).
	SchedQuantile float64
	// Horizon: stalls older than this are forgotten (default 1 minute);
	// Stalled is exact for spans within it.
	Horizon time.Duration
}

type span struct{ from, to time.Time }

// NewWatchdog returns a Watchdog; it measures only between Acquire and the
// matching release.
func NewWatchdog(cfg WatchdogConfig) *Watchdog {
	if cfg.Period <= 0 {
		cfg.Period = 50 * time.Millisecond
	}
	if cfg.Tolerance <= 0 {
		cfg.Tolerance = 50 * time.Millisecond
	}
	if cfg.SchedThreshold == 0 {
		cfg.SchedThreshold = 20 * time.Millisecond
	}
	if cfg.SchedQuantile <= 0 || cfg.SchedQuantile >= 1 {
		cfg.SchedQuantile = 0.9
	}
	if cfg.Horizon <= 0 {
		cfg.Horizon = time.Minute
	}
	return &Watchdog{cfg: cfg}
}

// processWatchdog is shared by every Health of the process: the process
// has one clock, and one ticker costs less than one per connection.
var processWatchdog = NewWatchdog(WatchdogConfig{})

// Acquire starts the watchdog if it is not running and returns the
// function that releases it; the last release stops it.
func (w *Watchdog) Acquire() (release func()) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.users++
	if w.users == 1 {
		ctx, cancel := context.WithCancel(context.Background())
		w.cancel, w.done = cancel, make(chan struct{})
		w.due = time.Now().Add(w.cfg.Period)
		if w.cfg.SchedThreshold > 0 {
			w.sampler = newSchedSampler()
		}
		go w.run(ctx, w.done)
	}
	var once sync.Once
	return func() { once.Do(w.release) }
}

func (w *Watchdog) release() {
	w.mu.Lock()
	w.users--
	if w.users > 0 {
		w.mu.Unlock()
		return
	}
	cancel, done := w.cancel, w.done
	w.cancel, w.done, w.due, w.sampler = nil, nil, time.Time{}, nil
	w.mu.Unlock()
	cancel()
	<-done
}

func (w *Watchdog) run(ctx context.Context, done chan struct{}) {
	defer close(done)
	t := time.NewTimer(w.cfg.Period)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		// Go through the run queue, as a goroutine woken by the network
		// does: a timer wake-up alone jumps the queue.
		runtime.Gosched()
		w.mu.Lock()
		var sched time.Duration
		if w.sampler != nil {
			sched = w.sampler.sample(w.cfg.SchedQuantile)
		}
		w.tickLocked(time.Now(), sched)
		w.mu.Unlock()
		t.Reset(w.cfg.Period)
	}
}

// tick records a wake-up at now, with sched the scheduling latency
// measured over the period that ends; it is Run's step, exported to tests
// in the package through tickLocked.
func (w *Watchdog) tick(now time.Time, sched time.Duration) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.tickLocked(now, sched)
}

func (w *Watchdog) tickLocked(now time.Time, sched time.Duration) {
	due := w.due
	if due.IsZero() {
		due = now
	}
	start := due.Add(-w.cfg.Period) // when the period began
	switch {
	case w.cfg.SchedThreshold > 0 && sched >= w.cfg.SchedThreshold:
		w.addLocked(start, now)
	case now.Sub(due) > w.cfg.Tolerance:
		w.addLocked(due.Add(w.cfg.Tolerance), now)
	}
	w.due = now.Add(w.cfg.Period)
	horizon := now.Add(-w.cfg.Horizon)
	i := 0
	for i < len(w.stalls) && w.stalls[i].to.Before(horizon) {
		i++
	}
	w.stalls = w.stalls[i:]
}

func (w *Watchdog) addLocked(from, to time.Time) {
	if !to.After(from) {
		return
	}
	if n := len(w.stalls); n > 0 && !from.After(w.stalls[n-1].to) {
		if to.After(w.stalls[n-1].to) {
			w.stalls[n-1].to = to
		}
		return
	}
	w.stalls = append(w.stalls, span{from, to})
}

// Stalled returns how much of [from, to] the process spent stalled,
// including a wake-up that is overdue right now: a detector that runs
// after a stall may run before the watchdog has, and must not see the
// stall as silence.
func (w *Watchdog) Stalled(from, to time.Time) time.Duration {
	w.mu.Lock()
	defer w.mu.Unlock()
	var d time.Duration
	overlap := func(s span) {
		a, b := s.from, s.to
		if a.Before(from) {
			a = from
		}
		if b.After(to) {
			b = to
		}
		if b.After(a) {
			d += b.Sub(a)
		}
	}
	last := time.Time{}
	for _, s := range w.stalls {
		overlap(s)
		last = s.to
	}
	if !w.due.IsZero() {
		// The overdue part of the pending wake-up, after any stall
		// already recorded.
		open := w.due.Add(w.cfg.Tolerance)
		if open.Before(last) {
			open = last
		}
		overlap(span{open, to})
	}
	return d
}

// schedSampler reads the runtime's scheduling-latency histogram and
// returns a quantile of the latencies recorded since the last sample.
type schedSampler struct {
	samples []metrics.Sample
	prev    []uint64
}

const schedLatencies = "/sched/latencies:seconds"

func newSchedSampler() *schedSampler {
	s := &schedSampler{samples: []metrics.Sample{{Name: schedLatencies}}}
	metrics.Read(s.samples)
	if s.samples[0].Value.Kind() != metrics.KindFloat64Histogram {
		return nil
	}
	s.prev = append([]uint64(nil), s.samples[0].Value.Float64Histogram().Counts...)
	return s
}

func (s *schedSampler) sample(q float64) time.Duration {
	if s == nil {
		return 0
	}
	metrics.Read(s.samples)
	h := s.samples[0].Value.Float64Histogram()
	delta := make([]uint64, len(h.Counts))
	var total uint64
	for i, c := range h.Counts {
		if i < len(s.prev) {
			delta[i] = c - s.prev[i]
		} else {
			delta[i] = c
		}
		total += delta[i]
	}
	s.prev = append(s.prev[:0], h.Counts...)
	return histogramQuantile(h.Buckets, delta, total, q)
}

// histogramQuantile returns the lower bound of the bucket that holds the
// q-quantile (a lower bound keeps the estimate from overstating a stall).
func histogramQuantile(buckets []float64, counts []uint64, total uint64, q float64) time.Duration {
	if total == 0 {
		return 0
	}
	rank := uint64(math.Ceil(q * float64(total)))
	var seen uint64
	for i, c := range counts {
		seen += c
		if seen >= rank {
			lo := buckets[i]
			if math.IsInf(lo, -1) || lo < 0 {
				return 0
			}
			return time.Duration(lo * float64(time.Second))
		}
	}
	return 0
}
