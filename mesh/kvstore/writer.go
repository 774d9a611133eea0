package kvstore

import (
	"bytes"
	"container/list"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/meshbed/meshbed/mesh/wire"
)

// DefaultLeaseTTL is the lease TTL of written keys (Cilium's choice): keys
// outlive a restarting writer but vanish if it is gone for good.
const DefaultLeaseTTL = 15 * time.Minute

// WriterConfig configures a Writer.
type WriterConfig struct {
	// LeaseTTL of the lease every key is attached to; zero means
	// DefaultLeaseTTL. The lease is renewed every LeaseTTL/3, which is also
	// how late an externally revoked lease may be noticed.
	LeaseTTL time.Duration
	// MinBackoff and MaxBackoff bound the (jittered, exponential) wait
	// between retries after an etcd error; zero means 50ms and 5s.
	MinBackoff, MaxBackoff time.Duration
	// Now returns the time written into canaries; nil means time.Now.
	Now func() time.Time
}

// Writer owns a set of keys in one etcd and keeps them written: it is the
// only way the mesh writes state.
//
// Upsert and Delete only record the desired state and never block; Run
// writes it. A burst of updates to one key is one write of the last value,
// a Delete cancels a pending Upsert, and an Upsert of the value already
// written is not written again. Every key is attached to a lease that Run
// keeps alive; if the lease is lost (expired, revoked, or the etcd
// restarted empty) Run grants a new one and rewrites every key. Errors are
// retried with backoff until ctx is done.
//
// Keys are written in the order of their oldest unwritten operation, in
// transactions of up to 128. Enqueueing, coalescing and taking the next
// batch cost O(1) per key whatever the backlog, so one Writer can hold the
// hundreds of thousands of keys of many remote clusters.
//
// A Writer is safe for concurrent use. Operations made before Run starts are
// written once it does.
type Writer struct {
	c      *Client
	cfg    WriterConfig
	logger *slog.Logger
	wake   chan struct{}

	mu sync.Mutex
	// seq numbers every operation; it orders canaries after the keys
	// enqueued before them.
	seq uint64
	// desired is what the store must hold (canaries excluded).
	desired map[string][]byte
	// queue holds every key whose desired state is not yet written (or
	// being written), as *pendingKey, ordered by the seq of its oldest
	// unwritten operation: the front is the oldest, which is what both the
	// next batch and every canary barrier need. pending indexes it by key,
	// so that a further operation on a queued key coalesces in place.
	queue   list.List
	pending map[string]*list.Element
	// inflight is the seq of the oldest operation of the batch being
	// written (taken off the queue, not yet committed), 0 if none.
	inflight uint64
	// written is what was committed under the current lease.
	written  map[string][]byte
	canaries map[string]*canary
	lease    clientv3.LeaseID
	flushes  []flushWaiter
}

// canary is a sync canary and the barrier it waits for.
type canary struct {
	// barrier: every operation with seq <= barrier must be committed first.
	barrier uint64
	// seq of the Synced call (or lease re-grant) that made it pending.
	seq     uint64
	prune   []string
	pending bool
}

// pendingKey is a queued key and the seq of its oldest unwritten
// operation.
type pendingKey struct {
	key string
	seq uint64
}

type flushWaiter struct {
	seq  uint64
	done chan struct{}
}

// NewWriter returns a Writer on c. Nothing is written until Run.
func NewWriter(c *Client, cfg WriterConfig) *Writer {
	if cfg.LeaseTTL <= 0 {
		cfg.LeaseTTL = DefaultLeaseTTL
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &Writer{
		c:        c,
		cfg:      cfg,
		logger:   c.logger,
		wake:     make(chan struct{}, 1),
		desired:  make(map[string][]byte),
		pending:  make(map[string]*list.Element),
		written:  make(map[string][]byte),
		canaries: make(map[string]*canary),
	}
}

func (w *Writer) signal() {
	select {
	case w.wake <- struct{}{}:
	default:
	}
}

// enqueueLocked records an operation on key. A key already queued keeps
// its place: its oldest unwritten operation is still the one there, and
// the batch that takes it writes the latest desired state.
func (w *Writer) enqueueLocked(key string) {
	w.seq++
	if _, ok := w.pending[key]; !ok {
		w.pending[key] = w.queue.PushBack(&pendingKey{key: key, seq: w.seq})
	}
}

// Upsert sets key to value. The Writer keeps its own copy of value.
func (w *Writer) Upsert(key string, value []byte) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if old, ok := w.desired[key]; ok && bytes.Equal(old, value) {
		return
	}
	w.desired[key] = bytes.Clone(value)
	w.enqueueLocked(key)
	w.signal()
}

// Delete removes key.
func (w *Writer) Delete(key string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if _, ok := w.desired[key]; !ok {
		if _, pending := w.pending[key]; !pending {
			// Not ours and nothing pending: still delete it, it may be a
			// leftover of a previous owner the caller knows about.
			w.enqueueLocked(key)
			w.signal()
		}
		return
	}
	delete(w.desired, key)
	w.enqueueLocked(key)
	w.signal()
}

// Synced declares that every initial key has been enqueued (Upsert or
// Delete called before Synced). Once all of them are committed, Run first
// deletes every key under each prune prefix (trailing "/" added) that this
// Writer does not hold — leftovers of a previous owner, so that an owner
// restarting on a non-empty store replaces the prefix's content — and then
// writes canaryKey (typically wire.SyncedKey(cluster, prefix)) with an RFC
// 3339 timestamp, on the lease like every other key. After a lease loss the
// canary is rewritten only after every other key is rewritten. Calling
// Synced again for the same canary rewrites it after the keys enqueued
// since.
func (w *Writer) Synced(canaryKey string, prune ...string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	barrier := w.seq
	w.seq++
	w.canaries[canaryKey] = &canary{barrier: barrier, seq: w.seq, prune: slices.Clone(prune), pending: true}
	w.signal()
}

// Unsynced withdraws a sync canary: the key is deleted (after the
// operations enqueued before the call, like a Delete) and is no longer
// rewritten after a lease loss, until the next Synced for it. kvstoremesh
// uses it to tell agents that a remote cluster was lost while the cache
// it vouched for stays in place.
func (w *Writer) Unsynced(canaryKey string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	delete(w.canaries, canaryKey)
	w.enqueueLocked(canaryKey)
	w.signal()
}

// keysThroughLocked returns the lowest seq of a key operation not yet
// committed (w.seq+1 if none): every key operation below it is committed.
// It is O(1): the oldest is at the front of the queue or in flight.
func (w *Writer) keysThroughLocked() uint64 {
	low := w.seq + 1
	if e := w.queue.Front(); e != nil {
		low = min(low, e.Value.(*pendingKey).seq)
	}
	if w.inflight != 0 {
		low = min(low, w.inflight)
	}
	return low
}

// committedThroughLocked returns the highest seq s such that every
// operation with seq <= s is committed.
func (w *Writer) committedThroughLocked() uint64 {
	low := w.keysThroughLocked()
	for _, cn := range w.canaries {
		if cn.pending {
			low = min(low, cn.seq)
		}
	}
	return low - 1
}

// Flush blocks until every operation enqueued before the call is committed
// (including canaries of earlier Synced calls), or ctx is done.
func (w *Writer) Flush(ctx context.Context) error {
	w.mu.Lock()
	target := w.seq
	if w.committedThroughLocked() >= target {
		w.mu.Unlock()
		return nil
	}
	done := make(chan struct{})
	w.flushes = append(w.flushes, flushWaiter{seq: target, done: done})
	w.mu.Unlock()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("flush writes: %w", ctx.Err())
	}
}

func (w *Writer) notifyFlushesLocked() {
	if len(w.flushes) == 0 {
		return
	}
	through := w.committedThroughLocked()
	kept := w.flushes[:0]
	for _, f := range w.flushes {
		if f.seq <= through {
			close(f.done)
		} else {
			kept = append(kept, f)
		}
	}
	w.flushes = kept
}

// Keys returns the number of keys the Writer currently holds (desired),
// canaries excluded.
func (w *Writer) Keys() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.desired)
}

// LeaseID is the lease the keys are currently attached to, 0 before Run
// granted one. For tests and diagnostics.
func (w *Writer) LeaseID() clientv3.LeaseID {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.lease
}

// errLeaseLost makes Run grant a new lease and rewrite everything.
var errLeaseLost = errors.New("lease lost")

// Run writes the desired state until ctx is done, then returns nil. The
// lease is not revoked on return: the keys stay until the lease expires,
// so a restarting owner does not make them flap. Run must be called once.
func (w *Writer) Run(ctx context.Context) error {
	bo := newBackoff(w.cfg.MinBackoff, w.cfg.MaxBackoff)
	for ctx.Err() == nil {
		err := w.runLease(ctx, bo)
		if ctx.Err() != nil {
			break
		}
		w.logger.Info("kvstore writer: new lease", "reason", err)
		if !bo.wait(ctx) {
			break
		}
	}
	return nil
}

// runLease grants a lease, rewrites every key on it, and keeps writing
// until the lease is lost or ctx ends.
func (w *Writer) runLease(ctx context.Context, bo *backoff) error {
	lctx, cancel := context.WithCancel(ctx)
	defer cancel()
	lease, err := w.grant(lctx)
	if err != nil {
		return err
	}
	ka, err := w.c.etcd.KeepAlive(lctx, lease)
	if err != nil {
		return fmt.Errorf("keep lease %x alive: %w", lease, err)
	}
	reconnected := w.c.Reconnects(lctx)
	var retry <-chan time.Time
	for {
		err := w.process(lctx)
		switch {
		case errors.Is(err, errLeaseLost):
			return err
		case err != nil:
			if lctx.Err() != nil {
				return lctx.Err()
			}
			w.logger.Warn("kvstore write failed, retrying", "error", err)
			retry = time.After(bo.next())
		default:
			bo.reset()
			retry = nil
		}
		select {
		case <-lctx.Done():
			return lctx.Err()
		case <-w.wake:
		case <-retry:
		case _, ok := <-ka:
			if !ok {
				return fmt.Errorf("lease %x expired or revoked", lease)
			}
		case <-reconnected:
			// The server may have restarted empty, taking the lease along;
			// the keepalive would only notice at its next renewal.
			reconnected = w.c.Reconnects(lctx)
			if err := w.checkLease(lctx, lease); err != nil {
				return err
			}
		}
	}
}

func (w *Writer) checkLease(ctx context.Context, lease clientv3.LeaseID) error {
	rctx, cancel := w.c.requestContext(ctx)
	defer cancel()
	resp, err := w.c.etcd.TimeToLive(rctx, lease)
	if err != nil {
		if errors.Is(err, rpctypes.ErrLeaseNotFound) {
			return fmt.Errorf("lease %x: %w", lease, errLeaseLost)
		}
		// Unknown: the next write tells.
		return nil
	}
	if resp.TTL <= 0 {
		return fmt.Errorf("lease %x not found after reconnect: %w", lease, errLeaseLost)
	}
	return nil
}

// grant obtains a new lease and marks everything for rewriting on it.
func (w *Writer) grant(ctx context.Context) (clientv3.LeaseID, error) {
	bo := newBackoff(w.cfg.MinBackoff, w.cfg.MaxBackoff)
	ttl := int64(w.cfg.LeaseTTL / time.Second)
	for {
		rctx, cancel := w.c.requestContext(ctx)
		resp, err := w.c.etcd.Grant(rctx, max(ttl, 1))
		cancel()
		if err == nil {
			w.mu.Lock()
			w.lease = resp.ID
			w.written = make(map[string][]byte)
			w.seq++
			for k := range w.desired {
				if _, ok := w.pending[k]; !ok {
					w.pending[k] = w.queue.PushBack(&pendingKey{key: k, seq: w.seq})
				}
			}
			// Written canaries go again, after every key is rewritten;
			// pending ones keep their own barrier.
			w.seq++
			for _, cn := range w.canaries {
				if !cn.pending {
					cn.barrier, cn.seq, cn.prune, cn.pending = w.seq-1, w.seq, nil, true
				}
			}
			w.mu.Unlock()
			return resp.ID, nil
		}
		w.logger.Warn("kvstore: grant lease failed, retrying", "error", err)
		if !bo.wait(ctx) {
			return 0, fmt.Errorf("grant lease: %w", ctx.Err())
		}
	}
}

type op struct {
	key    string
	value  []byte
	delete bool
	// seq of the key's oldest operation the op writes, to requeue it.
	seq uint64
}

// process writes the keys queued before the call, oldest first, in
// batches, then every canary whose barrier is passed. It stops at the
// first error and leaves the rest queued. Keys queued during the call wait
// for the next one, so that a steady stream of updates does not hold the
// canaries back.
func (w *Writer) process(ctx context.Context) error {
	w.mu.Lock()
	lease := w.lease
	limit := w.seq
	w.mu.Unlock()
	for {
		w.mu.Lock()
		batch := w.popLocked(limit)
		w.notifyFlushesLocked()
		w.mu.Unlock()
		if len(batch) == 0 {
			break
		}
		if err := w.writeTxn(ctx, lease, batch); err != nil {
			w.mu.Lock()
			w.requeueLocked(batch)
			w.mu.Unlock()
			return err
		}
		w.mu.Lock()
		for _, o := range batch {
			if o.delete {
				delete(w.written, o.key)
			} else {
				w.written[o.key] = o.value
			}
		}
		w.inflight = 0
		w.notifyFlushesLocked()
		w.mu.Unlock()
	}
	return w.processCanaries(ctx, lease)
}

// popLocked takes up to maxTxnOps keys off the front of the queue, those
// with an operation at or before limit, with their desired state. A key
// set back to the value already written is dropped without a write. An
// operation on a taken key while it is written queues it again, at the
// back, with that operation's seq.
func (w *Writer) popLocked(limit uint64) []op {
	var ops []op
	for len(ops) < maxTxnOps {
		e := w.queue.Front()
		if e == nil {
			break
		}
		pk := e.Value.(*pendingKey)
		if pk.seq > limit {
			break
		}
		w.queue.Remove(e)
		delete(w.pending, pk.key)
		v, ok := w.desired[pk.key]
		if ok && bytes.Equal(w.written[pk.key], v) {
			continue
		}
		if len(ops) == 0 {
			w.inflight = pk.seq
		}
		ops = append(ops, op{key: pk.key, value: v, delete: !ok, seq: pk.seq})
	}
	return ops
}

// requeueLocked puts a batch that was not committed back at the front, in
// its order: its operations are older than anything queued since. A key
// queued again meanwhile moves back to the front with its older seq.
func (w *Writer) requeueLocked(batch []op) {
	for _, o := range slices.Backward(batch) {
		if e, ok := w.pending[o.key]; ok {
			e.Value.(*pendingKey).seq = o.seq
			w.queue.MoveToFront(e)
		} else {
			w.pending[o.key] = w.queue.PushFront(&pendingKey{key: o.key, seq: o.seq})
		}
	}
	w.inflight = 0
}

// maxTxnOps is how many writes go in one transaction: etcd's default
// --max-txn-ops. Batching makes the initial write of thousands of ipcache
// keys take a few round trips instead of thousands.
const maxTxnOps = 128

func (w *Writer) writeTxn(ctx context.Context, lease clientv3.LeaseID, ops []op) error {
	if len(ops) == 1 {
		return w.write(ctx, lease, ops[0])
	}
	eops := make([]clientv3.Op, len(ops))
	for i, o := range ops {
		if o.delete {
			eops[i] = clientv3.OpDelete(o.key)
		} else {
			eops[i] = clientv3.OpPut(o.key, string(o.value), clientv3.WithLease(lease))
		}
	}
	rctx, cancel := w.c.requestContext(ctx)
	defer cancel()
	_, err := w.c.etcd.Txn(rctx).Then(eops...).Commit()
	if errors.Is(err, rpctypes.ErrLeaseNotFound) {
		return fmt.Errorf("write %d keys from %q: %w", len(ops), ops[0].key, errLeaseLost)
	}
	if err != nil {
		return fmt.Errorf("write %d keys from %q: %w", len(ops), ops[0].key, err)
	}
	return nil
}

func (w *Writer) write(ctx context.Context, lease clientv3.LeaseID, o op) error {
	rctx, cancel := w.c.requestContext(ctx)
	defer cancel()
	var err error
	if o.delete {
		_, err = w.c.etcd.Delete(rctx, o.key)
	} else {
		_, err = w.c.etcd.Put(rctx, o.key, string(o.value), clientv3.WithLease(lease))
	}
	if errors.Is(err, rpctypes.ErrLeaseNotFound) {
		return fmt.Errorf("write %q: %w", o.key, errLeaseLost)
	}
	if err != nil {
		if o.delete {
			return fmt.Errorf("delete %q: %w", o.key, err)
		}
		return fmt.Errorf("put %q: %w", o.key, err)
	}
	return nil
}

// readyCanary is a canary whose barrier is passed, as processCanaries
// found it.
type readyCanary struct {
	key   string
	seq   uint64
	prune []string
}

// processCanaries writes every pending canary whose barrier is passed:
// prunes first, then the canaries in batched transactions.
func (w *Writer) processCanaries(ctx context.Context, lease clientv3.LeaseID) error {
	for {
		w.mu.Lock()
		through := w.keysThroughLocked()
		var ready []readyCanary
		for k, c := range w.canaries {
			if c.pending && c.barrier < through {
				ready = append(ready, readyCanary{key: k, seq: c.seq, prune: c.prune})
			}
		}
		w.mu.Unlock()
		if len(ready) == 0 {
			return nil
		}
		slices.SortFunc(ready, func(a, b readyCanary) int { return strings.Compare(a.key, b.key) })
		for _, r := range ready {
			for _, p := range r.prune {
				if err := w.prune(ctx, p); err != nil {
					return err
				}
			}
		}
		for chunk := range slices.Chunk(ready, maxTxnOps) {
			value := []byte(wire.Timestamp(w.cfg.Now()))
			ops := make([]op, len(chunk))
			for i, r := range chunk {
				ops[i] = op{key: r.key, value: value}
			}
			if err := w.writeTxn(ctx, lease, ops); err != nil {
				return err
			}
			w.mu.Lock()
			for _, r := range chunk {
				// An Unsynced meanwhile removed the canary (or a Synced
				// replaced it): its own operation follows this write.
				if c := w.canaries[r.key]; c != nil && c.seq == r.seq {
					c.pending, c.prune = false, nil
				}
			}
			w.notifyFlushesLocked()
			w.mu.Unlock()
		}
	}
}

// prune deletes the keys under prefix this Writer does not hold, in
// batched transactions.
func (w *Writer) prune(ctx context.Context, prefix string) error {
	prefix = DirPrefix(prefix)
	rctx, cancel := w.c.requestContext(ctx)
	resp, err := w.c.etcd.Get(rctx, prefix, clientv3.WithPrefix(), clientv3.WithKeysOnly())
	cancel()
	if err != nil {
		return fmt.Errorf("list %q to prune: %w", prefix, err)
	}
	var stale []op
	w.mu.Lock()
	for _, kv := range resp.Kvs {
		k := string(kv.Key)
		_, held := w.desired[k]
		_, isCanary := w.canaries[k]
		if held || isCanary {
			continue
		}
		// Forgotten now, so that an Upsert of the value it had, made
		// before the delete lands, is still written afterwards.
		delete(w.written, k)
		stale = append(stale, op{key: k, delete: true})
	}
	w.mu.Unlock()
	for chunk := range slices.Chunk(stale, maxTxnOps) {
		if err := w.writeTxn(ctx, 0, chunk); err != nil {
			return fmt.Errorf("prune %q: %w", prefix, err)
		}
	}
	return nil
}
