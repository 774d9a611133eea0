package identity

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"strconv"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/util/retry"

	"github.com/meshbed/meshbed/mesh/wire"
)

// ErrRangeExhausted is returned when every identity of the cluster's range
// is taken. The cluster has more distinct label sets than its range holds
// (65,535, or 32,767 in a 511-cluster mesh); remove unused MeshIdentity
// resources or noisy pod labels.
var ErrRangeExhausted = errors.New("identity range exhausted")

// ErrForeignLabels is returned when the labels to allocate for do not name
// the allocator's cluster in io.cilium.k8s.policy.cluster: a cluster only
// allocates identities for its own endpoints.
var ErrForeignLabels = errors.New("labels do not belong to this cluster")

// Allocator creates identities in the cluster's Kubernetes API.
//
// Allocation is safe when several allocators race (the mesh-apiserver and
// agents, or two apiservers during a rollout): the name of a MeshIdentity
// is its number, so creating one is an atomic claim of that number. A label
// set probes the range in a fixed order that depends only on the labels
// (starting at a hash of them); every allocator of the same labels walks
// the same sequence, and at a slot someone else claimed first it either
// adopts the identity (same labels) or moves on. Since the allocator never
// deletes identities, the slots before a label set's identity stay claimed
// by other labels, and two allocators cannot end up with two identities for
// one label set. The garbage collector (Collector) deletes identities only
// after no pod used them for its heartbeat timeout; a hole it leaves in a
// probe sequence can at worst let a racing allocator with a stale cache
// create a second identity for a label set, which the cache tolerates
// (LookupLabels answers the lowest) and the collector removes once unused.
// Reusing an identity the collector has marked removes the mark first
// (see Collector), so that a reused identity is never deleted under a pod.
type Allocator struct {
	res   dynamic.ResourceInterface
	cache *Cache
}

// NewAllocator returns an Allocator writing through client and reading
// through cache, which must be running (Allocate waits for its sync).
func NewAllocator(client dynamic.Interface, cache *Cache) *Allocator {
	return &Allocator{res: client.Resource(GVR), cache: cache}
}

// Allocate returns the identity of labels, creating it if there is none.
// The labels must name the cluster (io.cilium.k8s.policy.cluster), as
// PodLabels does.
func (a *Allocator) Allocate(ctx context.Context, labels wire.Labels) (uint32, error) {
	// An identity the collector deletes while we reuse it is allocated
	// again; more than a few rounds means something keeps deleting.
	for attempt := 0; ; attempt++ {
		id, err := a.allocate(ctx, labels)
		if err != nil {
			return 0, err
		}
		err = a.keep(ctx, id, labels)
		if err == nil {
			return id, nil
		}
		if !errors.Is(err, errCollected) || attempt == 2 {
			return 0, fmt.Errorf("allocate identity for %q in cluster %q: %w", labels.String(), a.cache.Cluster(), err)
		}
	}
}

// errCollected means the identity was deleted while being reused.
var errCollected = errors.New("identity deleted by the garbage collector while reused")

// keep removes the collector's mark from id, which is being handed out for
// labels, so that the collector does not delete it. Without a mark (the
// common case) it costs nothing.
func (a *Allocator) keep(ctx context.Context, id uint32, labels wire.Labels) error {
	served, marked := a.cache.markOf(id)
	if !served {
		// Deleted since allocate found it (the cache saw the deletion).
		return fmt.Errorf("%s %d: %w", Kind, id, errCollected)
	}
	if !marked {
		return nil
	}
	name := strconv.FormatUint(uint64(id), 10)
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		u, err := a.res.Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if cur, err := FromObject(u); err != nil || cur.Labels.String() != labels.String() {
			return apierrors.NewNotFound(GVR.GroupResource(), name)
		}
		if !setUnusedSince(u, time.Time{}) {
			return nil
		}
		_, err = a.res.Update(ctx, u, metav1.UpdateOptions{})
		return err
	})
	if apierrors.IsNotFound(err) {
		a.cache.forget(id)
		return fmt.Errorf("%s %s: %w", Kind, name, errCollected)
	}
	if err != nil {
		return fmt.Errorf("unmark %s %s: %w", Kind, name, err)
	}
	return nil
}

func (a *Allocator) allocate(ctx context.Context, labels wire.Labels) (uint32, error) {
	cluster := a.cache.Cluster()
	if err := labels.Validate(); err != nil {
		return 0, fmt.Errorf("allocate identity in cluster %q: %w", cluster, err)
	}
	if v, _ := labels.Get(wire.PolicyClusterLabel); v != cluster {
		return 0, fmt.Errorf("allocate identity for %q in cluster %q: %w", labels.String(), cluster, ErrForeignLabels)
	}
	if err := a.cache.WaitSynced(ctx); err != nil {
		return 0, fmt.Errorf("allocate identity: %w", err)
	}
	if id, ok := a.cache.LookupLabels(labels); ok {
		return id, nil
	}
	key := labels.String()
	rng := a.cache.Range()
	size := rng.Size()
	h := fnv.New32a()
	h.Write([]byte(key))
	start := h.Sum32() % size
	for i := uint32(0); i < size; i++ {
		id := rng.Min + (start+i)%size
		if have, served, taken := a.cache.slot(id); served || taken {
			if served && have.String() == key {
				return id, nil
			}
			continue
		}
		got, err := a.claim(ctx, id, labels)
		if err != nil {
			return 0, fmt.Errorf("allocate identity for %q in cluster %q: %w", key, cluster, err)
		}
		if got {
			return id, nil
		}
	}
	return 0, fmt.Errorf("allocate identity for %q in cluster %q, range %s: %w", key, cluster, rng, ErrRangeExhausted)
}

// claim tries to take number id for labels. It reports true if id now
// stands for labels (created here or by a racing allocator), false if id
// belongs to something else.
func (a *Allocator) claim(ctx context.Context, id uint32, labels wire.Labels) (bool, error) {
	cluster := a.cache.Cluster()
	name := strconv.FormatUint(uint64(id), 10)
	// A resource deleted between our Create and Get is retried a few
	// times; more means someone keeps deleting it, which we report.
	for attempt := 0; attempt < 3; attempt++ {
		_, err := a.res.Create(ctx, newObject(cluster, id, labels), metav1.CreateOptions{})
		if err == nil {
			a.cache.observe(Identity{ID: id, Labels: labels})
			return true, nil
		}
		if !apierrors.IsAlreadyExists(err) {
			return false, fmt.Errorf("create %s %s: %w", Kind, name, err)
		}
		u, err := a.res.Get(ctx, name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			continue
		}
		if err != nil {
			return false, fmt.Errorf("get %s %s: %w", Kind, name, err)
		}
		other, err := a.cache.check(u)
		if err != nil {
			a.cache.markTaken(id)
			return false, nil
		}
		a.cache.observe(other)
		a.cache.recordMark(id, u)
		return other.Labels.String() == labels.String(), nil
	}
	return false, fmt.Errorf("%s %s vanished %d times while claiming it", Kind, name, 3)
}
