package identity

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/util/retry"
)

// Defaults of the garbage collector, Cilium's (the operator's
// identity-gc-interval and identity-heartbeat-timeout).
const (
	DefaultGCInterval       = 15 * time.Minute
	DefaultHeartbeatTimeout = 30 * time.Minute
)

// AnnotationUnusedSince on a MeshIdentity records when the garbage
// collector first found it unused (RFC 3339). An allocator that hands the
// identity out again removes it, and so restarts the grace period: this is
// the heartbeat of an identity in use.
const AnnotationUnusedSince = "meshbed.io/unused-since"

// GCConfig configures a Collector.
type GCConfig struct {
	// Interval between two collections; zero means DefaultGCInterval.
	Interval time.Duration
	// HeartbeatTimeout is how long an identity must stay unused (marked,
	// and not re-allocated) before it is deleted; zero means
	// DefaultHeartbeatTimeout.
	HeartbeatTimeout time.Duration
	// InUse returns the label sets (wire.Labels.String) that some pod of
	// the cluster has now. It is called once per collection and again
	// right before each deletion.
	InUse func() map[string]bool
	// Logger receives what is collected; nil discards.
	Logger *slog.Logger
}

// Collector deletes the identities no pod uses any more, as Cilium's
// operator does, in two phases so that a concurrent allocation is safe:
//
//  1. An identity no pod uses is marked: AnnotationUnusedSince = now.
//  2. An identity still marked HeartbeatTimeout later, and still unused
//     when checked again, is deleted, with the resourceVersion of the
//     marked object as precondition.
//
// An allocator that reuses a marked identity removes the mark first
// (Allocator.Allocate), which changes the resourceVersion: the deletion
// then fails, or, if the deletion came first, the allocator's update fails
// and it allocates anew. An identity allocated for a pod that exists is
// never deleted while the pod is visible to InUse; the timeout only has to
// exceed how late the collector's and the allocators' informers can be.
//
// Deleting the resource removes the identity from the cache, whose
// handlers (the mesh-apiserver's export) withdraw it from the kvstore, and
// from there from every remote cache (kvstoremesh).
type Collector struct {
	res   dynamic.ResourceInterface
	cache *Cache
	cfg   GCConfig
	log   *slog.Logger
	now   func() time.Time
}

// NewCollector returns a collector of the identities of cache, writing
// through client.
func NewCollector(client dynamic.Interface, cache *Cache, cfg GCConfig) (*Collector, error) {
	if cfg.InUse == nil {
		return nil, errors.New("identity collector: GCConfig.InUse is required")
	}
	if cfg.Interval < 0 || cfg.HeartbeatTimeout < 0 {
		return nil, fmt.Errorf("identity collector: negative interval %v or heartbeat timeout %v", cfg.Interval, cfg.HeartbeatTimeout)
	}
	if cfg.Interval == 0 {
		cfg.Interval = DefaultGCInterval
	}
	if cfg.HeartbeatTimeout == 0 {
		cfg.HeartbeatTimeout = DefaultHeartbeatTimeout
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Collector{res: client.Resource(GVR), cache: cache, cfg: cfg, log: log, now: time.Now}, nil
}

// Run collects every Interval until ctx is done, then returns nil. The
// cache must be running; the caller's InUse must be synced before Run.
func (g *Collector) Run(ctx context.Context) error {
	if err := g.cache.WaitSynced(ctx); err != nil {
		return nil
	}
	t := time.NewTicker(g.cfg.Interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		if _, err := g.Collect(ctx); err != nil && ctx.Err() == nil {
			g.log.Warn("Identity garbage collection incomplete", "err", err)
		}
	}
}

// Collect runs one collection: it marks the unused identities, unmarks
// those in use again, and deletes those marked for HeartbeatTimeout. It
// returns the identities it deleted.
func (g *Collector) Collect(ctx context.Context) ([]uint32, error) {
	inUse := g.cfg.InUse()
	now := g.now()
	var deleted []uint32
	var errs []error
	for _, ident := range g.cache.List() {
		since, marked := g.cache.unusedSince(ident.ID)
		used := inUse[ident.Labels.String()]
		var err error
		switch {
		case used && marked:
			_, err = g.update(ctx, ident, func(u *unstructured.Unstructured) bool { return setUnusedSince(u, time.Time{}) })
		case used:
		case !marked:
			_, err = g.update(ctx, ident, func(u *unstructured.Unstructured) bool { return setUnusedSince(u, now) })
		case now.Sub(since) >= g.cfg.HeartbeatTimeout:
			var gone bool
			gone, err = g.delete(ctx, ident, since)
			if gone {
				deleted = append(deleted, ident.ID)
			}
		}
		if err != nil {
			errs = append(errs, err)
		}
	}
	return deleted, errors.Join(errs...)
}

// update applies change to the current resource of ident (if it still
// carries ident's labels) and writes it if change says so.
func (g *Collector) update(ctx context.Context, ident Identity, change func(*unstructured.Unstructured) bool) (bool, error) {
	name := strconv.FormatUint(uint64(ident.ID), 10)
	var changed bool
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		u, err := g.res.Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if cur, err := FromObject(u); err != nil || cur.Labels.String() != ident.Labels.String() {
			return nil // replaced meanwhile; the next collection sees it
		}
		if changed = change(u); !changed {
			return nil
		}
		_, err = g.res.Update(ctx, u, metav1.UpdateOptions{})
		return err
	})
	if apierrors.IsNotFound(err) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("update %s %s: %w", Kind, name, err)
	}
	return changed, nil
}

// delete deletes ident if it is still unused and still carries the mark
// of since.
func (g *Collector) delete(ctx context.Context, ident Identity, since time.Time) (bool, error) {
	key := ident.Labels.String()
	if g.cfg.InUse()[key] {
		return false, nil
	}
	name := strconv.FormatUint(uint64(ident.ID), 10)
	u, err := g.res.Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("get %s %s: %w", Kind, name, err)
	}
	cur, err := FromObject(u)
	if err != nil || cur.Labels.String() != key {
		return false, nil
	}
	if got, ok := unusedSinceOf(u); !ok || !got.Equal(since) {
		return false, nil // re-allocated (unmarked) since the cache saw it
	}
	uid, rv := u.GetUID(), u.GetResourceVersion()
	pre := &metav1.Preconditions{}
	if uid != "" {
		pre.UID = &uid
	}
	if rv != "" {
		pre.ResourceVersion = &rv
	}
	err = g.res.Delete(ctx, name, metav1.DeleteOptions{Preconditions: pre})
	switch {
	case apierrors.IsNotFound(err), apierrors.IsConflict(err):
		return false, nil
	case err != nil:
		return false, fmt.Errorf("delete %s %s: %w", Kind, name, err)
	}
	g.log.Info("Deleted unused identity", "identity", ident.ID, "labels", key, "unusedFor", g.now().Sub(since).Round(time.Millisecond))
	return true, nil
}

// unusedSinceOf reads AnnotationUnusedSince.
func unusedSinceOf(u *unstructured.Unstructured) (time.Time, bool) {
	v, ok := u.GetAnnotations()[AnnotationUnusedSince]
	if !ok {
		return time.Time{}, false
	}
	t, err := time.Parse(time.RFC3339Nano, v)
	if err != nil {
		// A mangled mark counts as a fresh one: deletion waits.
		return time.Time{}, false
	}
	return t, true
}

// setUnusedSince sets the mark (zero t removes it) and reports whether the
// object changed.
func setUnusedSince(u *unstructured.Unstructured, t time.Time) bool {
	ann := u.GetAnnotations()
	_, had := ann[AnnotationUnusedSince]
	if t.IsZero() {
		if !had {
			return false
		}
		delete(ann, AnnotationUnusedSince)
		u.SetAnnotations(ann)
		return true
	}
	if had {
		if _, ok := unusedSinceOf(u); ok {
			return false
		}
	}
	if ann == nil {
		ann = map[string]string{}
	}
	ann[AnnotationUnusedSince] = t.UTC().Format(time.RFC3339Nano)
	u.SetAnnotations(ann)
	return true
}
