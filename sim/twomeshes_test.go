package sim

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/meshbed/meshbed/datapath/netns/netnstest"
	"github.com/meshbed/meshbed/internal/testenv"
)

// TestIntegrationTwoMeshesAtOnce builds two meshes with identical specs
// (cluster names and IDs, pod and service CIDRs, underlay addresses) at the
// same time in one process. Both must serve their global service from both
// of their clusters, and a change in one must not show in the other: two
// runs on one machine (parallel test binaries, two `meshbed sim up`) do not
// collide on names, addresses, ports, BPF objects or files.
func TestIntegrationTwoMeshesAtOnce(t *testing.T) {
	testenv.Privileged(t)
	if testing.Short() {
		t.Skip("integration test: builds two whole meshes")
	}
	netnstest.CheckLeaks(t)

	var meshes [2]*Mesh
	var closers [2]func() error
	var wg sync.WaitGroup
	for i := range meshes {
		// Built and deployed concurrently, so their namespaces, devices,
		// etcds and BPF objects are created interleaved.
		wg.Go(func() {
			// startMesh and deploy may call Fatal, which must not run off
			// the test's goroutine: build here, report below.
			spec := meshSpec(2, 2)
			spec.Logger = testLogger(t)
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			m, err := New(ctx, spec)
			if err != nil {
				t.Errorf("mesh %d: build: %v", i, err)
				return
			}
			var once sync.Once
			var closeErr error
			meshes[i], closers[i] = m, func() error {
				once.Do(func() { closeErr = m.Close() })
				return closeErr
			}
			for _, c := range m.Clusters() {
				if err := m.Apply(ctx, c.Name(), []byte(echoManifest)); err != nil {
					t.Errorf("mesh %d: %v", i, err)
					return
				}
			}
			if err := m.Settle(ctx); err != nil {
				t.Errorf("mesh %d: settle: %v", i, err)
			}
		})
	}
	wg.Wait()
	t.Cleanup(func() {
		for i, cl := range closers {
			if cl != nil {
				if err := cl(); err != nil {
					t.Errorf("mesh %d: close: %v", i, err)
				}
			}
		}
	})
	if t.Failed() {
		t.FailNow()
	}
	if meshes[0].dir == meshes[1].dir {
		t.Fatalf("both meshes use directory %s", meshes[0].dir)
	}

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for i, m := range meshes {
		for _, name := range []string{"cluster1", "cluster2"} {
			c, _ := m.Cluster(name)
			netnstest.Eventually(t, 20*time.Second, func() error {
				got, failed, err := curlService(ctx, c, 20, time.Second)
				if err := answeredBy(got, failed, err, "cluster1", "cluster2"); err != nil {
					return fmt.Errorf("mesh %d, from %s: %w", i, name, err)
				}
				return nil
			})
		}
	}

	// Isolation: cluster2 of mesh 1 drops its backends. Mesh 1 fails over
	// to its cluster1; mesh 0, whose cluster2 has the very same name, ID and
	// addresses, must keep both. A shared etcd, underlay or BPF map would
	// show here.
	c2, _ := meshes[1].Cluster("cluster2")
	if err := c2.API.Scale(ctx, "default", "rebel-base", 0); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"cluster1", "cluster2"} {
		c, _ := meshes[1].Cluster(name)
		netnstest.Eventually(t, 15*time.Second, func() error { return backendsFrom(ctx, c, 1) })
		got, failed, err := curlService(ctx, c, 20, time.Second)
		if err := answeredBy(got, failed, err, "cluster1"); err != nil {
			t.Fatalf("mesh 1, from %s after cluster2 scaled to zero: %v", name, err)
		}
	}
	for _, name := range []string{"cluster1", "cluster2"} {
		c, _ := meshes[0].Cluster(name)
		if err := backendsFrom(ctx, c, 1, 2); err != nil {
			t.Fatalf("mesh 0 after mesh 1's cluster2 scaled to zero: %v", err)
		}
		got, failed, err := curlService(ctx, c, 20, time.Second)
		if err := answeredBy(got, failed, err, "cluster1", "cluster2"); err != nil {
			t.Fatalf("mesh 0, from %s after mesh 1's cluster2 scaled to zero: %v", name, err)
		}
	}
	for i, m := range meshes {
		if err := finalCheck(ctx, m); err != nil {
			t.Errorf("mesh %d: final check: %v", i, err)
		}
	}

	// Both close cleanly, at the same time.
	errs := make([]error, 2)
	for i := range closers {
		wg.Go(func() { errs[i] = closers[i]() })
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatalf("close: %v", err)
	}
}
