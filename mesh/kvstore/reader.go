package kvstore

import (
	"context"
	"time"
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
// etcd key. Value is set for EventUpsert only; the handler may keep it.
type Event struct {
	Kind  EventKind
	Key   string
	Value []byte
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
}

// NewReader returns a Reader on c delivering to handler.
func NewReader(c *Client, cfg ReaderConfig, handler func(Event)) *Reader {
	panic("not implemented")
}

// Run mirrors the prefix until ctx is done, then returns nil. Known keys
// are kept (no deletes are emitted) when Run returns: what to do with them
// is the caller's policy.
func (r *Reader) Run(ctx context.Context) error {
	panic("not implemented")
}

// Resyncs is the number of relists after the initial one, for tests and
// metrics.
func (r *Reader) Resyncs() int {
	panic("not implemented")
}
