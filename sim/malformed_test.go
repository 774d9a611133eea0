package sim

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/meshbed/meshbed/datapath/netns/netnstest"
	"github.com/meshbed/meshbed/internal/testenv"
	"github.com/meshbed/meshbed/mesh/remote"
	"github.com/meshbed/meshbed/mesh/wire"
)

// keptLastGood is what a reader of a remote cluster logs when a good entry
// turns malformed (mesh/remote).
const keptLastGood = "Rejected remote entry, keeping its last good value"

// TestIntegrationMalformedKeepsBackends overwrites cluster2's exported
// rebel-base service with malformed JSON in its own mesh-apiserver: every
// reader rejects it, logs the rejection and counts it, and cluster1 keeps
// cluster2's backends in its datapath and keeps reaching them; a later good
// value is applied, and a delete withdraws them. With kvstoremesh the
// malformed value stops at kvstoremesh, which keeps the last good value in
// its cache.
func TestIntegrationMalformedKeepsBackends(t *testing.T) {
	testenv.Privileged(t)
	if testing.Short() {
		t.Skip("integration test: builds a whole mesh")
	}
	for _, km := range []bool{false, true} {
		t.Run(map[bool]string{false: "direct", true: "kvstoremesh"}[km], func(t *testing.T) {
			testMalformedKeepsBackends(t, km)
		})
	}
}

func testMalformedKeepsBackends(t *testing.T, kvstoremesh bool) {
	spec := meshSpec(2, 2)
	spec.KVStoreMesh = kvstoremesh
	var logged atomic.Int64
	spec.Logger = slog.New(&matchHandler{inner: testLogger(t).Handler(), msg: keptLastGood, n: &logged})
	m, _ := startMesh(t, spec)
	deploy(t, m, echoManifest)
	c1, _ := m.Cluster("cluster1")
	c2, _ := m.Cluster("cluster2")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	netnstest.Eventually(t, 15*time.Second, func() error { return backendsFrom(ctx, c1, 1, 2) })

	kv, err := c2.kv()
	if err != nil {
		t.Fatal(err)
	}
	key := wire.ServicesPrefix + "/cluster2/default/rebel-base"
	good, ok, err := kv.Get(ctx, key)
	if err != nil || !ok {
		t.Fatalf("get %s: %v (found %v)", key, err, ok)
	}
	// Every reader of cluster2 in cluster1 (each agent, or kvstoremesh)
	// has rejected the value: the evidence that it arrived.
	before := rejectedBy(c1, kvstoremesh)
	if err := kv.Put(ctx, key, []byte(`{"cluster": "cluster2", "name": `)); err != nil {
		t.Fatal(err)
	}
	netnstest.Eventually(t, 10*time.Second, func() error {
		after := rejectedBy(c1, kvstoremesh)
		for reader, n := range after {
			if n <= before[reader] {
				return fmt.Errorf("%s has not rejected the malformed value yet (%d rejections)", reader, n)
			}
		}
		return nil
	})
	if logged.Load() == 0 {
		t.Errorf("no %q in the log", keptLastGood)
	}
	// Nothing was lost: cluster2's backends stay, and are reached.
	if err := errors.Join(backendsFrom(ctx, c1, 1, 2), reachesService(ctx, c1, "cluster2")); err != nil {
		t.Fatalf("after a malformed overwrite: %v", err)
	}
	if kvstoremesh {
		cached, _, err := c1.KVStoreGet(ctx, wire.CacheServicesPrefix+"/cluster2/default/rebel-base")
		if err != nil {
			t.Fatal(err)
		}
		if string(cached) != string(good) {
			t.Errorf("kvstoremesh cache holds %s, want the last good value %s", cached, good)
		}
	}

	// A delete replaces the last good value: the backends go.
	if err := kv.Delete(ctx, key); err != nil {
		t.Fatal(err)
	}
	netnstest.Eventually(t, 10*time.Second, func() error { return backendsFrom(ctx, c1, 1) })
	// And a good value brings them back.
	if err := kv.Put(ctx, key, good); err != nil {
		t.Fatal(err)
	}
	netnstest.Eventually(t, 10*time.Second, func() error { return backendsFrom(ctx, c1, 1, 2) })
}

// rejectedBy counts the rejected values of cluster2 per reader in c: each
// agent, or kvstoremesh when it reads for them.
func rejectedBy(c *Cluster, kvstoremesh bool) map[string]int {
	out := map[string]int{}
	if kvstoremesh {
		_, conns, _ := c.KVStoreMeshStatus()
		out["kvstoremesh"] = rejectedOf(conns)
		return out
	}
	for _, n := range c.Nodes() {
		out[n.Name()] = rejectedOf(n.Remotes())
	}
	return out
}

func rejectedOf(st []remote.ClusterStatus) int {
	for _, s := range st {
		if s.Name == "cluster2" {
			return s.Rejected
		}
	}
	return -1
}

// reachesService checks that requests from cluster c's x-wing to
// rebel-base are answered by the named cluster, among others.
func reachesService(ctx context.Context, c *Cluster, by string) error {
	got, failed, err := curlService(ctx, c, 20, 2*time.Second)
	if err != nil {
		return err
	}
	if failed > 0 || got[by] == 0 {
		return fmt.Errorf("%s's requests to rebel-base: answered %v, %d failed; want some from %s", c.Name(), got, failed, by)
	}
	return nil
}

// matchHandler counts the records whose message is msg and hands every
// record on to inner.
type matchHandler struct {
	inner slog.Handler
	msg   string
	n     *atomic.Int64
}

func (h *matchHandler) Enabled(ctx context.Context, l slog.Level) bool {
	return h.inner.Enabled(ctx, l)
}

func (h *matchHandler) Handle(ctx context.Context, r slog.Record) error {
	if strings.Contains(r.Message, h.msg) {
		h.n.Add(1)
	}
	return h.inner.Handle(ctx, r)
}

func (h *matchHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return &matchHandler{inner: h.inner.WithAttrs(as), msg: h.msg, n: h.n}
}

func (h *matchHandler) WithGroup(name string) slog.Handler {
	return &matchHandler{inner: h.inner.WithGroup(name), msg: h.msg, n: h.n}
}
