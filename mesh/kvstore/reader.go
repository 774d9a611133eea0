package kvstore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// EventKind is the kind of a Reader event.
type EventKind int

const (
	// EventUpsert: Key now has Value (new or changed).
	EventUpsert EventKind = iota + 1
	// EventDelete: Key is gone (deleted, expired, or not found again after a
	// resync).
	EventDelete
	// EventSynced: the initial list is complete; every key that existed
	// has been delivered. Emitted once per Run.
	EventSynced
)

func (k EventKind) String() string {
	switch k {
	case EventUpsert:
		return "upsert"
	case EventDelete:
		return "delete"
	case EventSynced:
		return "synced"
	}
	return "unknown"
}

// Event is a change of a key under the Reader's prefix. Key is the full
// etcd key. Value is set for EventUpsert only; the handler may keep it but
// must not modify it (the Reader compares later values against it).
type Event struct {
	Kind  EventKind
	Key   string
	Value []byte
	// CanaryRevision, on EventSynced of a Reader with a Canary, is the
	// ModRevision of the canary found before the list: the canary was
	// written at that revision (and existed until at least the list).
	CanaryRevision int64
}

// ReaderConfig configures a Reader.
type ReaderConfig struct {
	// Prefix to mirror; a trailing "/" is added if missing.
	Prefix string
	// Canary, when set, is a key (a sync canary) that must exist before the
	// Reader lists the prefix, initially and after every reconnect, so that
	// a writer's partial initial state is never taken as complete.
	Canary string
	// MinBackoff and MaxBackoff bound the (jittered, exponential) wait
	// between attempts after an error; zero means 50ms and 5s.
	MinBackoff, MaxBackoff time.Duration
}

// Reader mirrors every key under a prefix into events delivered to a
// handler, in order, from the Run goroutine.
//
// Run lists the prefix, emits an upsert per key and EventSynced, then
// watches. On every recovery — reconnect of the transport, watch error,
// compaction — it marks every known key stale, relists, emits upserts for
// new or changed keys only, and then deletes what is still stale: no stale
// key survives a recovery, and an unchanged key is not re-emitted.
type Reader struct {
	c       *Client
	cfg     ReaderConfig
	handler func(Event)
	logger  *slog.Logger
	known   map[string][]byte
	synced  bool
	resyncs atomic.Int64
}

// NewReader returns a Reader on c delivering to handler.
func NewReader(c *Client, cfg ReaderConfig, handler func(Event)) *Reader {
	cfg.Prefix = DirPrefix(cfg.Prefix)
	return &Reader{
		c:       c,
		cfg:     cfg,
		handler: handler,
		logger:  c.logger.With("prefix", cfg.Prefix),
		known:   make(map[string][]byte),
	}
}

// Run mirrors the prefix until ctx is done, then returns nil. Known keys
// are kept (no deletes are emitted) when Run returns: what to do with them
// is the caller's policy. Run must be called once.
func (r *Reader) Run(ctx context.Context) error {
	bo := newBackoff(r.cfg.MinBackoff, r.cfg.MaxBackoff)
	for ctx.Err() == nil {
		listed, err := r.session(ctx)
		if ctx.Err() != nil {
			break
		}
		if listed {
			// A session that got as far as a list was a working
			// connection: start the backoff over.
			bo.reset()
		}
		r.logger.Debug("kvstore reader: resync", "reason", err)
		if !bo.wait(ctx) {
			break
		}
	}
	return nil
}

// Resyncs is the number of relists after the initial one, for tests and
// metrics.
func (r *Reader) Resyncs() int { return int(r.resyncs.Load()) }

var errReconnected = errors.New("connection re-established")

// session waits for the canary, lists, reconciles and watches until an
// error or a reconnect. listed tells whether it got past the list.
func (r *Reader) session(ctx context.Context) (listed bool, err error) {
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	reconnected := r.c.Reconnects(sctx)
	var canaryRev int64
	if r.cfg.Canary != "" {
		var err error
		if _, canaryRev, err = r.c.WaitKeyRev(sctx, r.cfg.Canary); err != nil {
			return false, err
		}
	}
	rctx, rcancel := r.c.requestContext(sctx)
	resp, err := r.c.etcd.Get(rctx, r.cfg.Prefix, clientv3.WithPrefix())
	rcancel()
	if err != nil {
		return false, fmt.Errorf("list %q: %w", r.cfg.Prefix, err)
	}
	r.reconcile(resp.Kvs, canaryRev)

	wch := r.c.etcd.Watch(clientv3.WithRequireLeader(sctx), r.cfg.Prefix,
		clientv3.WithPrefix(), clientv3.WithRev(resp.Header.Revision+1))
	for {
		select {
		case <-reconnected:
			return true, errReconnected
		case wr, ok := <-wch:
			if !ok {
				return true, fmt.Errorf("watch %q: closed", r.cfg.Prefix)
			}
			if err := wr.Err(); err != nil {
				// Compaction, leader loss, cancellation: all mean events
				// may be missing, so relist.
				return true, fmt.Errorf("watch %q: %w", r.cfg.Prefix, err)
			}
			for _, ev := range wr.Events {
				key := string(ev.Kv.Key)
				switch ev.Type {
				case clientv3.EventTypePut:
					r.upsert(key, ev.Kv.Value)
				case clientv3.EventTypeDelete:
					if _, ok := r.known[key]; ok {
						delete(r.known, key)
						r.handler(Event{Kind: EventDelete, Key: key})
					}
				}
			}
		}
	}
}

func (r *Reader) upsert(key string, value []byte) {
	if old, ok := r.known[key]; ok && bytes.Equal(old, value) {
		return
	}
	r.known[key] = value
	r.handler(Event{Kind: EventUpsert, Key: key, Value: value})
}

// reconcile makes known equal to a fresh list: upserts for new and changed
// keys first, then deletes for the stale ones, so that a consumer never
// sees a gap where a key it had is missing before its replacement arrives.
func (r *Reader) reconcile(kvs []*mvccpb.KeyValue, canaryRev int64) {
	stale := make(map[string]struct{}, len(r.known))
	for k := range r.known {
		stale[k] = struct{}{}
	}
	for _, kv := range kvs {
		key := string(kv.Key)
		delete(stale, key)
		r.upsert(key, kv.Value)
	}
	keys := make([]string, 0, len(stale))
	for k := range stale {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		delete(r.known, k)
		r.handler(Event{Kind: EventDelete, Key: k})
	}
	if !r.synced {
		r.synced = true
		r.handler(Event{Kind: EventSynced, CanaryRevision: canaryRev})
	} else {
		r.resyncs.Add(1)
	}
}
