package kvstore

import (
	"context"
	"math/rand/v2"
	"time"
)

// Default retry bounds. The jitter matters more than the numbers: without
// it every agent of a cluster retries in lock step after a blip.
const (
	defaultMinBackoff = 50 * time.Millisecond
	defaultMaxBackoff = 5 * time.Second
)

// backoff is a jittered exponential delay; not safe for concurrent use.
type backoff struct {
	min, max, cur time.Duration
}

func newBackoff(lo, hi time.Duration) *backoff {
	if lo <= 0 {
		lo = defaultMinBackoff
	}
	if hi < lo {
		hi = max(defaultMaxBackoff, lo)
	}
	return &backoff{min: lo, max: hi}
}

// next returns the delay before the next attempt, in [d/2, d) where d
// doubles from min up to max.
func (b *backoff) next() time.Duration {
	if b.cur == 0 {
		b.cur = b.min
	} else {
		b.cur = min(2*b.cur, b.max)
	}
	return b.cur/2 + rand.N(b.cur/2+1)
}

func (b *backoff) reset() { b.cur = 0 }

// wait sleeps for the next delay; false if ctx ended first.
func (b *backoff) wait(ctx context.Context) bool {
	t := time.NewTimer(b.next())
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
