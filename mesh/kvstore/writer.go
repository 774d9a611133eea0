package kvstore

import (
	"context"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// DefaultLeaseTTL is the lease TTL of written keys (Cilium's choice): keys
// outlive a restarting writer but vanish if it is gone for good.
const DefaultLeaseTTL = 15 * time.Minute

// WriterConfig configures a Writer.
type WriterConfig struct {
	// LeaseTTL of the lease every key is attached to; zero means
	// DefaultLeaseTTL.
	LeaseTTL time.Duration
	// MinBackoff and MaxBackoff bound the (jittered, exponential) wait
	// between retries after an etcd error; zero means 50ms and 5s.
	MinBackoff, MaxBackoff time.Duration
}

// Writer owns a set of keys in one etcd and keeps them written: it is the
// only way the mesh writes state.
//
// Upsert and Delete only record the desired state and never block; Run
// writes it. A burst of updates to one key is one write of the last value,
// a Delete cancels a pending Upsert, and an Upsert of the value already
// written is not written again. Every key is attached to a lease that Run
// keeps alive; if the lease is lost (expired, revoked, or the etcd restarted
// empty) Run grants a new one and rewrites every key. Errors are retried
// with backoff until ctx is done.
//
// A Writer is safe for concurrent use. Operations made before Run starts are
// written once it does.
type Writer struct {
}

// NewWriter returns a Writer on c. Nothing is written until Run.
func NewWriter(c *Client, cfg WriterConfig) *Writer {
	panic("not implemented")
}

// Run writes the desired state until ctx is done, then returns nil. It
// returns an error only if it cannot start. The lease is not revoked on
// return: the keys stay until the lease expires, so a restarting owner does
// not make them flap. Run must be called once.
func (w *Writer) Run(ctx context.Context) error {
	panic("not implemented")
}

// Upsert sets key to value.
func (w *Writer) Upsert(key string, value []byte) {
	panic("not implemented")
}

// Delete removes key.
func (w *Writer) Delete(key string) {
	panic("not implemented")
}

// Synced declares that every initial key has been enqueued (Upsert or
// Delete called before Synced). Once all of them are committed, Run first
// deletes every key under each prune prefix (trailing "/" added) that this
// Writer does not hold — leftovers of a previous owner, so that an owner
// restarting on a non-empty store replaces the prefix's content — and then
// writes canaryKey (typically wire.SyncedKey(cluster, prefix)) with an RFC
// 3339 timestamp, on the lease like every other key. After a lease loss the
// canary is rewritten only after every other key is rewritten.
func (w *Writer) Synced(canaryKey string, prune ...string) {
	panic("not implemented")
}

// Flush blocks until every operation enqueued before the call is committed
// (including canaries whose barrier it covers), or ctx is done.
func (w *Writer) Flush(ctx context.Context) error {
	panic("not implemented")
}

// Keys returns the number of keys the Writer currently holds (desired).
func (w *Writer) Keys() int {
	panic("not implemented")
}

// LeaseID is the lease the keys are currently attached to, 0 before Run
// granted one. For tests and diagnostics.
func (w *Writer) LeaseID() clientv3.LeaseID {
	panic("not implemented")
}
