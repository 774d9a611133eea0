package identity

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"time"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/dynamic/dynamicinformer"
	"k8s.io/client-go/tools/cache"

	"github.com/meshbed/meshbed/mesh/wire"
)

// Config names the cluster whose identities a Cache holds.
type Config struct {
	// Cluster is the cluster name; every identity's
	// io.cilium.k8s.policy.cluster label must carry it.
	Cluster string
	// ClusterID and MaxConnectedClusters (255 or 511; zero means 255) set
	// the identity range.
	ClusterID            uint32
	MaxConnectedClusters uint32
	// Logger receives diagnostics about malformed resources; nil discards.
	Logger *slog.Logger
}

// Event is a change of the identities a Cache holds. Deleted is set when
// the identity is gone; Labels are then those it had.
type Event struct {
	Identity
	Deleted bool
}

// Cache mirrors the cluster's MeshIdentity resources: lookups by labels and
// by identity, and events to handlers. Resources outside the cluster's range,
// malformed, or labelled with another cluster are not served (they still
// block their number from allocation).
//
// It is safe for concurrent use.
type Cache struct {
	cfg      Config
	rng      Range
	logger   *slog.Logger
	informer cache.SharedIndexInformer

	// notifyMu serializes changes with their notification, so that
	// handlers see the changes of one identity in the order they happened
	// even when Allocate and the informer race. Taken before mu.
	notifyMu sync.Mutex
	mu       sync.RWMutex
	byID     map[uint32]wire.Labels
	byLabels map[string]map[uint32]struct{}
	// taken holds numbers in the range whose resource exists but is not
	// served; the allocator skips them.
	taken map[uint32]bool
	// unused holds the garbage collector's marks (AnnotationUnusedSince)
	// of served identities.
	unused   map[uint32]time.Time
	handlers []func(Event)
	started  bool
}

// NewCache returns a Cache over the MeshIdentity resources reachable
// through client. It does nothing until Run.
func NewCache(client dynamic.Interface, cfg Config) (*Cache, error) {
	if err := wire.ValidateClusterName(cfg.Cluster); err != nil {
		return nil, fmt.Errorf("identity cache: %w", err)
	}
	if cfg.MaxConnectedClusters == 0 {
		cfg.MaxConnectedClusters = wire.MaxConnectedClusters255
	}
	rng, err := NewRange(cfg.ClusterID, cfg.MaxConnectedClusters)
	if err != nil {
		return nil, fmt.Errorf("identity cache of cluster %q: %w", cfg.Cluster, err)
	}
	logger := cfg.Logger
	if logger == nil {
		logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	c := &Cache{
		cfg:      cfg,
		rng:      rng,
		logger:   logger,
		byID:     make(map[uint32]wire.Labels),
		byLabels: make(map[string]map[uint32]struct{}),
		taken:    make(map[uint32]bool),
		unused:   make(map[uint32]time.Time),
	}
	// No resync: identities change only when someone writes them.
	c.informer = dynamicinformer.NewFilteredDynamicInformer(client, GVR, "", 0, cache.Indexers{}, nil).Informer()
	_, err = c.informer.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { c.onUpsert(obj) },
		UpdateFunc: func(_, obj any) { c.onUpsert(obj) },
		DeleteFunc: c.onDelete,
	})
	if err != nil {
		return nil, fmt.Errorf("identity cache: add handler: %w", err)
	}
	return c, nil
}

// Range is the cluster's identity range.
func (c *Cache) Range() Range { return c.rng }

// Cluster is the cluster name.
func (c *Cache) Cluster() string { return c.cfg.Cluster }

// AddHandler registers fn to receive every change, in order, from the
// informer goroutine (and from Allocate, which records what it creates
// before the informer sees it). It must be called before Run; fn must not
// block for long.
func (c *Cache) AddHandler(fn func(Event)) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.started {
		panic("identity: Cache.AddHandler after Run")
	}
	c.handlers = append(c.handlers, fn)
}

// Run runs the informer until ctx is done, then returns nil.
func (c *Cache) Run(ctx context.Context) error {
	c.mu.Lock()
	c.started = true
	c.mu.Unlock()
	c.informer.RunWithContext(ctx)
	return nil
}

// Synced reports whether the initial list has been delivered.
func (c *Cache) Synced() bool { return c.informer.HasSynced() }

// WaitSynced blocks until the initial list has been delivered or ctx is done.
func (c *Cache) WaitSynced(ctx context.Context) error {
	if !cache.WaitForCacheSync(ctx.Done(), c.informer.HasSynced) {
		return fmt.Errorf("wait for %s informer of cluster %q: %w", Kind, c.cfg.Cluster, ctx.Err())
	}
	return nil
}

// LookupLabels returns the identity of labels. If, against the allocator's
// rules, several identities carry the same labels, the lowest is returned so
// that every reader agrees.
func (c *Cache) LookupLabels(labels wire.Labels) (uint32, bool) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return lowest(c.byLabels[labels.String()])
}

// LookupID returns the labels of identity id.
func (c *Cache) LookupID(id uint32) (wire.Labels, bool) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	l, ok := c.byID[id]
	return l, ok
}

// List returns every identity the cache serves, in no particular order.
func (c *Cache) List() []Identity {
	c.mu.RLock()
	defer c.mu.RUnlock()
	out := make([]Identity, 0, len(c.byID))
	for id, l := range c.byID {
		out = append(out, Identity{ID: id, Labels: l})
	}
	return out
}

// Len is the number of identities the cache serves.
func (c *Cache) Len() int {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return len(c.byID)
}

// WaitLabels blocks until labels have an identity (allocated by someone
// else, typically the mesh-apiserver) or ctx is done. Agents use it to
// resolve a pod's identity without allocating.
func (c *Cache) WaitLabels(ctx context.Context, labels wire.Labels) (uint32, error) {
	// Polling keeps the cache free of per-waiter bookkeeping; the wait is
	// rare (pod start before allocation) and short.
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	for {
		if id, ok := c.LookupLabels(labels); ok {
			return id, nil
		}
		select {
		case <-ctx.Done():
			return 0, fmt.Errorf("wait for identity of %q: %w", labels.String(), ctx.Err())
		case <-t.C:
		}
	}
}

func lowest(ids map[uint32]struct{}) (uint32, bool) {
	var best uint32
	for id := range ids {
		if best == 0 || id < best {
			best = id
		}
	}
	return best, best != 0
}

// errNotServed marks a resource that exists but is not served: it belongs
// to another cluster or another range.
var errNotServed = errors.New("not served")

// check decodes obj and decides whether the cache serves it.
func (c *Cache) check(u *unstructured.Unstructured) (Identity, error) {
	ident, err := FromObject(u)
	if err != nil {
		return Identity{}, err
	}
	if !c.rng.Contains(ident.ID) {
		return ident, fmt.Errorf("%s %d outside cluster %q's range %s: %w", Kind, ident.ID, c.cfg.Cluster, c.rng, errNotServed)
	}
	if v, ok := ident.Labels.Get(wire.PolicyClusterLabel); !ok || v != c.cfg.Cluster {
		return ident, fmt.Errorf("%s %d labelled with cluster %q, not %q: %w", Kind, ident.ID, v, c.cfg.Cluster, errNotServed)
	}
	return ident, nil
}

func (c *Cache) onUpsert(obj any) {
	u, ok := obj.(*unstructured.Unstructured)
	if !ok {
		return
	}
	ident, err := c.check(u)
	if err == nil {
		c.observe(ident)
		c.recordMark(ident.ID, u)
		return
	}
	c.logger.Warn("ignoring identity resource", "name", u.GetName(), "error", err)
	id, ok := parseName(u.GetName())
	if !ok {
		return
	}
	c.notifyMu.Lock()
	defer c.notifyMu.Unlock()
	c.mu.Lock()
	// An in-range number whose resource is unusable must not be handed
	// out again; if it used to be served, withdraw it.
	old, served := c.byID[id]
	if served {
		c.removeLocked(id, old)
	}
	if c.rng.Contains(id) {
		c.taken[id] = true
	}
	handlers := c.handlers
	c.mu.Unlock()
	if served {
		notify(handlers, Event{Identity: Identity{ID: id, Labels: old}, Deleted: true})
	}
}

// observe records a served identity and notifies handlers if it changed.
func (c *Cache) observe(ident Identity) {
	c.notifyMu.Lock()
	defer c.notifyMu.Unlock()
	c.mu.Lock()
	old, had := c.byID[ident.ID]
	if had && old.String() == ident.Labels.String() {
		c.mu.Unlock()
		return
	}
	if had {
		c.removeLocked(ident.ID, old)
	}
	delete(c.taken, ident.ID)
	c.byID[ident.ID] = ident.Labels
	key := ident.Labels.String()
	if c.byLabels[key] == nil {
		c.byLabels[key] = make(map[uint32]struct{}, 1)
	}
	c.byLabels[key][ident.ID] = struct{}{}
	handlers := c.handlers
	c.mu.Unlock()
	notify(handlers, Event{Identity: ident})
}

func (c *Cache) onDelete(obj any) {
	if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = d.Obj
	}
	u, ok := obj.(*unstructured.Unstructured)
	if !ok {
		return
	}
	id, ok := parseName(u.GetName())
	if !ok {
		return
	}
	c.notifyMu.Lock()
	defer c.notifyMu.Unlock()
	c.mu.Lock()
	delete(c.taken, id)
	old, had := c.byID[id]
	if had {
		c.removeLocked(id, old)
	}
	handlers := c.handlers
	c.mu.Unlock()
	if had {
		notify(handlers, Event{Identity: Identity{ID: id, Labels: old}, Deleted: true})
	}
}

// recordMark remembers the garbage collector's mark of served identity id
// as its resource u carries it.
func (c *Cache) recordMark(id uint32, u *unstructured.Unstructured) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, served := c.byID[id]; !served {
		return
	}
	if t, ok := unusedSinceOf(u); ok {
		c.unused[id] = t
	} else {
		delete(c.unused, id)
	}
}

// unusedSince returns the garbage collector's mark of id, if any.
func (c *Cache) unusedSince(id uint32) (time.Time, bool) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	t, ok := c.unused[id]
	return t, ok
}

// markOf says whether id is served and whether it carries the garbage
// collector's mark, in one look.
func (c *Cache) markOf(id uint32) (served, marked bool) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	_, served = c.byID[id]
	_, marked = c.unused[id]
	return served, marked
}

// forget drops id as if its resource had been deleted (an allocator found
// it gone before the informer did) and notifies handlers.
func (c *Cache) forget(id uint32) {
	c.notifyMu.Lock()
	defer c.notifyMu.Unlock()
	c.mu.Lock()
	old, had := c.byID[id]
	if had {
		c.removeLocked(id, old)
	}
	handlers := c.handlers
	c.mu.Unlock()
	if had {
		notify(handlers, Event{Identity: Identity{ID: id, Labels: old}, Deleted: true})
	}
}

func (c *Cache) removeLocked(id uint32, labels wire.Labels) {
	delete(c.unused, id)
	delete(c.byID, id)
	key := labels.String()
	delete(c.byLabels[key], id)
	if len(c.byLabels[key]) == 0 {
		delete(c.byLabels, key)
	}
}

// slot says what the cache knows about number id: served with labels,
// taken by an unusable resource, or (as far as it knows) free.
func (c *Cache) slot(id uint32) (labels wire.Labels, served, taken bool) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	labels, served = c.byID[id]
	return labels, served, c.taken[id]
}

func (c *Cache) markTaken(id uint32) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, served := c.byID[id]; !served {
		c.taken[id] = true
	}
}

func notify(handlers []func(Event), ev Event) {
	for _, h := range handlers {
		h(ev)
	}
}
