package kvstoremesh

import (
	"fmt"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/meshbed/meshbed/internal/testenv"
	"github.com/meshbed/meshbed/mesh/apiserver"
	"github.com/meshbed/meshbed/mesh/identity"
	"github.com/meshbed/meshbed/mesh/wire"
)

// TestIntegrationIdentityGC: an identity no pod uses any more is deleted
// after the heartbeat timeout, withdrawn from its cluster's export and, by
// kvstoremesh, from the other cluster's cache (real etcd on both sides);
// while a pod uses it, it stays, however many timeouts pass.
func TestIntegrationIdentityGC(t *testing.T) {
	if testing.Short() {
		t.Skip("starts two mesh-apiservers, kvstoremeshes and agents")
	}
	const interval, timeout = 100 * time.Millisecond, time.Second
	clusters := testMeshWith(t, 2, testLogger(t), func(c *apiserver.Config) {
		c.IdentityGCInterval, c.IdentityHeartbeatTimeout = interval, timeout
	})
	c1, c2 := clusters[0], clusters[1]
	ctx := ctxT(t)

	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "tie-fighter", Namespace: "default", Labels: map[string]string{"app": "tie-fighter"}},
		Spec:       corev1.PodSpec{NodeName: "node-1"},
		Status:     corev1.PodStatus{Phase: corev1.PodRunning, PodIP: "10.1.1.7", PodIPs: []corev1.PodIP{{IP: "10.1.1.7"}}},
	}
	if _, err := c1.kube.CoreV1().Pods("default").Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	labels := identity.PodLabels(c1.name, "default", pod.Labels)
	var id uint32
	testenv.Eventually(t, 20*time.Second, func() error {
		var ok bool
		if id, ok = c1.api.Identities().LookupLabels(labels); !ok {
			return fmt.Errorf("no identity for %s yet", labels)
		}
		return nil
	})
	exported := wire.IdentityKey(id)
	cached, err := wire.CacheKey(c1.name, exported)
	if err != nil {
		t.Fatal(err)
	}
	present := func(c *meshCluster, key string) bool {
		_, found, err := c.api.Client().Get(ctx, key)
		if err != nil {
			t.Fatalf("get %s from %s: %v", key, c.name, err)
		}
		return found
	}
	testenv.Eventually(t, 20*time.Second, func() error {
		if !present(c1, exported) || !present(c2, cached) {
			return fmt.Errorf("identity %d: exported %v, in %s's cache %v", id, present(c1, exported), c2.name, present(c2, cached))
		}
		return nil
	})

	// In use: kept through several heartbeat timeouts.
	time.Sleep(3 * timeout)
	if _, ok := c1.api.Identities().LookupID(id); !ok || !present(c1, exported) || !present(c2, cached) {
		t.Fatalf("identity %d of a running pod was collected", id)
	}

	if err := c1.kube.CoreV1().Pods("default").Delete(ctx, pod.Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	gone := time.Now()
	var exportGone, cacheGone time.Duration
	testenv.Eventually(t, 20*time.Second, func() error {
		if exportGone == 0 && !present(c1, exported) {
			exportGone = time.Since(gone)
		}
		if cacheGone == 0 && !present(c2, cached) {
			cacheGone = time.Since(gone)
		}
		if exportGone == 0 || cacheGone == 0 {
			return fmt.Errorf("identity %d of a deleted pod: still exported %v, still in %s's cache %v", id, exportGone == 0, c2.name, cacheGone == 0)
		}
		return nil
	})
	if _, ok := c1.api.Identities().LookupID(id); ok {
		t.Errorf("identity %d still in the cache", id)
	}
	if exportGone < timeout {
		t.Errorf("identity withdrawn %v after its last pod went, before the %v heartbeat timeout", exportGone, timeout)
	}
	// The rebel-base service's identity-less backends and the other
	// cluster's state are untouched: the mesh still merges both clusters.
	if _, _, err := c2.dp.waitFor(ctx, func(set string) bool { return len(clusterIDs(set)) == 2 }); err != nil {
		t.Fatal(err)
	}
	t.Logf("identity %d: withdrawn from the export %v and from %s's kvstoremesh cache %v after its last pod was deleted (gc interval %v, heartbeat timeout %v)",
		id, exportGone.Round(time.Millisecond), c2.name, cacheGone.Round(time.Millisecond), interval, timeout)
}
