package kvstore

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/meshbed/meshbed/mesh/wire"
)

// Defaults of HealthConfig: a loss is reported within 2.1 s, or 2.85 s
// when the process itself was starved meanwhile (HealthConfig.Bound), under
// the mesh's 3 s withdrawal bound.
const (
	DefaultHealthInterval    = 500 * time.Millisecond
	DefaultHealthTimeout     = 2 * time.Second
	DefaultHealthMaxDiscount = 750 * time.Millisecond
)

// DefaultHealthVouchFactor: unless HealthConfig.VouchFor says otherwise, the
// kernel's word keeps a silent connection reachable for up to this many
// Timeouts beyond the first.
const DefaultHealthVouchFactor = 2

// healthEvalPeriod is how often the verdict is re-evaluated at most (it is
// cheap: no request), so that detection does not wait for the next probe.
const healthEvalPeriod = 100 * time.Millisecond

// HealthConfig configures a Health.
type HealthConfig struct {
	// Interval between probes; zero means DefaultHealthInterval.
	Interval time.Duration
	// Timeout: the server is unreachable once nothing has arrived from it
	// for this long: no probe succeeded and no other successful response or
	// stream message (watch event, write, lease keepalive) of any user of
	// the Client was received (Client.LastActivity). A loss is reported at
	// most Bound after it happens. Zero means DefaultHealthTimeout.
	//
	// Counting every answer, not only the probe's, is what keeps a busy
	// machine from declaring losses: when CPUs are starved a probe can take
	// longer than Timeout while the connection is plainly working, and each
	// false loss costs a relist that makes the machine busier still. A lost
	// connection (partition, crashed server) delivers nothing at all, so
	// the bound for a real loss is the same.
	//
	// Time in which this process itself could not run (its Watchdog) is
	// not silence of the connection: it is discounted, up to MaxDiscount.
	Timeout time.Duration
	// MaxDiscount caps the stalled time of the process discounted from a
	// silence; zero means DefaultHealthMaxDiscount, negative none. It
	// keeps a real loss detected within Bound even in a starved process.
	MaxDiscount time.Duration
	// VouchFor is how much longer than Timeout a silence is tolerated
	// while the kernel vouches for the connection: it is established and
	// every byte this side sent was acknowledged by the peer's kernel, or
	// no retransmission is pending (transport.go). That is a live link to
	// a live host whose process is slow, such as a starved one on a busy
	// machine, not a partition: a cut link leaves sent bytes
	// unacknowledged, and a crashed server resets the connection, both
	// reported within Bound as before. A server process that hangs while
	// its kernel runs is reported after Timeout + VouchFor. An answered
	// probe error (other than a timeout) is not vouched for. Zero means
	// DefaultHealthVouchFactor × Timeout, negative never.
	VouchFor time.Duration
	// Watchdog measures the process's own stalls; nil means the process's
	// shared one, which Run starts and stops. A Watchdog given here is
	// the caller's to run.
	Watchdog *Watchdog
	// Key is read by each probe (linearizable Get, so it needs a leader
	// and a working transport); empty means wire.HeartbeatKey. It need not
	// exist, and a permission-denied answer counts as reachable.
	Key string
	// OnChange, when set, is called from Run each time Reachable flips,
	// and once when the first verdict is known.
	OnChange func(Status)
}

// Status is the health of a connection.
type Status struct {
	// Reachable: a probe succeeded, or another response arrived on the
	// connection, within the last Timeout.
	Reachable bool
	// Known is false until the first answer (probe or other) arrives or
	// Timeout passes.
	Known bool
	// Since is when Reachable (or Known) last changed.
	Since time.Time
	// LastSuccess is the time of the last successful probe (zero if none).
	LastSuccess time.Time
	// LastActivity is Client.LastActivity as of the last evaluation: when
	// any successful response last arrived (zero if none).
	LastActivity time.Time
	// Vouched: Reachable only because the kernel vouches for a silent
	// connection (HealthConfig.VouchFor).
	Vouched bool
	// Err is the last probe error, nil after a success. A connection can be
	// reachable with a failed (timed out) probe while other answers arrive.
	Err error
}

// ErrUnreachable is Status.Err when probes have not completed within the
// timeout (they hang rather than fail in a black-holed partition).
var ErrUnreachable = errors.New("etcd unreachable")

// Health probes a Client periodically and reports whether its etcd is
// reachable, with a bounded detection time.
type Health struct {
	c   *Client
	cfg HealthConfig

	mu     sync.Mutex
	wd     *Watchdog // while Run runs
	status Status
	// answered: the last probe failed with an error the server sent (not
	// a timeout or a broken transport), which the kernel cannot vouch for.
	answered bool
	changed  chan struct{}
}

// NewHealth returns a Health for c; it probes only while Run runs.
func NewHealth(c *Client, cfg HealthConfig) *Health {
	if cfg.Key == "" {
		cfg.Key = wire.HeartbeatKey
	}
	cfg = cfg.withDefaults()
	return &Health{c: c, cfg: cfg, changed: make(chan struct{})}
}

func (cfg HealthConfig) withDefaults() HealthConfig {
	if cfg.Interval <= 0 {
		cfg.Interval = DefaultHealthInterval
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultHealthTimeout
	}
	switch {
	case cfg.MaxDiscount == 0:
		cfg.MaxDiscount = DefaultHealthMaxDiscount
	case cfg.MaxDiscount < 0:
		cfg.MaxDiscount = 0
	}
	switch {
	case cfg.VouchFor == 0:
		cfg.VouchFor = DefaultHealthVouchFactor * cfg.Timeout
	case cfg.VouchFor < 0:
		cfg.VouchFor = 0
	}
	return cfg
}

// evalPeriod is how often Run re-evaluates the verdict.
func (cfg HealthConfig) evalPeriod() time.Duration {
	return min(cfg.withDefaults().Interval, healthEvalPeriod)
}

// Bound is the longest a loss of the link or the server can take to be
// reported: Timeout, plus at most MaxDiscount of the process's own stalls,
// plus the evaluation period. A process that was not starved reports within
// Timeout plus the evaluation period. A hung server whose host still
// acknowledges takes up to HungBound.
func (cfg HealthConfig) Bound() time.Duration {
	d := cfg.withDefaults()
	return d.Timeout + d.MaxDiscount + d.evalPeriod()
}

// HungBound is the longest a server that hangs while its host's kernel
// still acknowledges can take to be reported lost.
func (cfg HealthConfig) HungBound() time.Duration {
	d := cfg.withDefaults()
	return d.Timeout + d.VouchFor + d.evalPeriod()
}

// unreachable is the verdict: whether a connection whose last answer
// arrived at last is silent at now, with stalled of the time in between
// spent by this process unable to run.
func (cfg HealthConfig) unreachable(now, last time.Time, stalled time.Duration) bool {
	if last.IsZero() {
		return true
	}
	silence := now.Sub(last) - min(stalled, cfg.MaxDiscount)
	return silence >= cfg.Timeout
}

// Run probes until ctx is done, then returns nil. At most one probe is in
// flight, one per Interval at most; the verdict is re-evaluated every
// Interval (every 100 ms at most) even while a probe hangs, which is what
// bounds the detection time. No probe is sent while
// other answers keep arriving (activity within the last Interval): they
// prove as much, and a loaded server is spared the extra reads.
func (h *Health) Run(ctx context.Context) error {
	wd := h.cfg.Watchdog
	if wd == nil {
		wd = processWatchdog
		release := wd.Acquire()
		defer release()
	}
	h.mu.Lock()
	h.wd = wd
	h.mu.Unlock()
	start := time.Now()
	ticker := time.NewTicker(h.cfg.evalPeriod())
	defer ticker.Stop()
	var lastProbe time.Time
	results := make(chan error, 1)
	inFlight := false
	probe := func() {
		inFlight = true
		lastProbe = time.Now()
		go func() {
			pctx, cancel := context.WithTimeout(ctx, h.cfg.Timeout)
			defer cancel()
			// A member without a leader answers at once rather than
			// letting the probe time out: a loss the kernel cannot vouch
			// against.
			_, err := h.c.etcd.Get(clientv3.WithRequireLeader(pctx), h.cfg.Key)
			if errors.Is(err, rpctypes.ErrPermissionDenied) {
				// The server answered; the key is just not ours to read
				// (a remote cluster's read-only user).
				err = nil
			}
			if err != nil {
				err = fmt.Errorf("probe %q: %w", h.cfg.Key, err)
			}
			results <- err
		}()
	}
	probe()
	for {
		select {
		case <-ctx.Done():
			if inFlight {
				<-results
			}
			return nil
		case err := <-results:
			inFlight = false
			now := time.Now()
			h.mu.Lock()
			if err == nil {
				h.status.LastSuccess = now
			}
			h.status.Err = err
			h.answered = answeredError(err)
			h.evaluateLocked(now, start)
			h.mu.Unlock()
		case <-ticker.C:
			now := time.Now()
			h.mu.Lock()
			h.evaluateLocked(now, start)
			quiet := now.Sub(h.status.LastActivity) >= h.cfg.Interval
			h.mu.Unlock()
			if !inFlight && quiet && now.Sub(lastProbe) >= h.cfg.Interval {
				probe()
			}
		}
	}
}

// evaluateLocked sets Reachable from the age of the last answer (probe or
// any other) and notifies on a change.
func (h *Health) evaluateLocked(now, start time.Time) {
	h.status.LastActivity = h.c.LastActivity()
	last := h.status.LastSuccess
	if h.status.LastActivity.After(last) {
		last = h.status.LastActivity
	}
	var stalled time.Duration
	if !last.IsZero() {
		stalled = h.wd.Stalled(last, now)
	}
	reachable := !h.cfg.unreachable(now, last, stalled)
	vouched := false
	if !reachable && !last.IsZero() && !h.answered && now.Sub(last) < h.cfg.Timeout+h.cfg.VouchFor {
		vouched = h.c.transport.verdict(h.cfg.Interval) == transportAlive
		reachable = vouched
	}
	h.status.Vouched = vouched
	known := reachable || now.Sub(start) >= h.cfg.Timeout
	if !known {
		return
	}
	if !reachable && h.status.Err == nil {
		h.status.Err = ErrUnreachable
	}
	if h.status.Known && h.status.Reachable == reachable {
		return
	}
	h.status.Known, h.status.Reachable, h.status.Since = true, reachable, now
	close(h.changed)
	h.changed = make(chan struct{})
	if h.cfg.OnChange != nil {
		// Called under the lock so that callbacks are serialized and in
		// order; OnChange must not call back into h.
		h.cfg.OnChange(h.status)
	}
}

// answeredError reports whether a probe's error came from the server
// rather than from waiting for it: a timeout, a cancellation or a broken
// transport are not answers.
func answeredError(err error) bool {
	if errors.Is(err, rpctypes.ErrNoLeader) {
		return true
	}
	if err == nil || errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
		return false
	}
	switch status.Code(err) {
	case codes.DeadlineExceeded, codes.Canceled, codes.Unavailable:
		return false
	}
	return true
}

// Status returns the current status.
func (h *Health) Status() Status {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.status
}

// Changed returns a channel that is closed at the next change of
// Status().Reachable (or Known), for callers that select rather than use
// OnChange.
func (h *Health) Changed() <-chan struct{} {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.changed
}
