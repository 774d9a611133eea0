package kvstore

import (
	"context"
	"time"
)

// Defaults of HealthConfig: a loss is reported within Interval+Timeout
// (2.5 s), under the mesh's 3 s withdrawal bound.
const (
	DefaultHealthInterval = 500 * time.Millisecond
	DefaultHealthTimeout  = 2 * time.Second
)

// HealthConfig configures a Health.
type HealthConfig struct {
	// Interval between probes; zero means DefaultHealthInterval.
	Interval time.Duration
	// Timeout: the server is unreachable once no probe has succeeded for
	// this long. A loss is reported at most Interval+Timeout after it
	// happens. Zero means DefaultHealthTimeout.
	Timeout time.Duration
	// Key is read by each probe (linearizable Get, so it needs a leader
	// and a working transport); empty means wire.HeartbeatKey. It must be
	// readable by the client's user; it need not exist.
	Key string
	// OnChange, when set, is called from Run each time Reachable flips
	// (and on the first probe result).
	OnChange func(Status)
}

// Status is the health of a connection.
type Status struct {
	// Reachable: a probe succeeded within the last Timeout.
	Reachable bool
	// Known is false until the first probe completes or times out.
	Known bool
	// Since is when Reachable last changed.
	Since time.Time
	// LastSuccess is the time of the last successful probe (zero if none).
	LastSuccess time.Time
	// Err is the last probe error, nil after a success.
	Err error
}

// Health probes a Client periodically and reports whether its etcd is
// reachable, with a bounded detection time.
type Health struct {
}

// NewHealth returns a Health for c; it probes only while Run runs.
func NewHealth(c *Client, cfg HealthConfig) *Health {
	panic("not implemented")
}

// Run probes until ctx is done, then returns nil.
func (h *Health) Run(ctx context.Context) error {
	panic("not implemented")
}

// Status returns the current status.
func (h *Health) Status() Status {
	panic("not implemented")
}

// Changed returns a channel that is closed at the next change of
// Status().Reachable, for callers that select rather than use OnChange.
func (h *Health) Changed() <-chan struct{} {
	panic("not implemented")
}
