package kvstoremesh

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/meshbed/meshbed/internal/testenv"
	"github.com/meshbed/meshbed/mesh/wire"
)

// fastLoss makes loss detection quick for tests that are not about its
// bound.
func fastLoss(cfg Config) Config {
	cfg.HealthInterval, cfg.HealthTimeout = 100*time.Millisecond, 600*time.Millisecond
	return cfg
}

// checkCanaryOrder fails unless every resource's cache canary of cluster
// was written after every key it vouches for.
func checkCanaryOrder(t *testing.T, l *local, cluster string) {
	t.Helper()
	for _, r := range wire.Resources {
		resp, err := l.srv.Client().Get(ctxT(t), wire.ClusterPrefix(r, cluster, true), clientv3.WithPrefix())
		if err != nil {
			t.Fatal(err)
		}
		var maxRev int64
		for _, kv := range resp.Kvs {
			maxRev = max(maxRev, kv.ModRevision)
		}
		cr, err := l.srv.Client().Get(ctxT(t), wire.CanaryKey(r, cluster, true))
		if err != nil {
			t.Fatal(err)
		}
		if len(cr.Kvs) != 1 {
			t.Fatalf("%s: no canary", r)
		}
		if cr.Kvs[0].ModRevision <= maxRev {
			t.Errorf("%s canary of %s at revision %d, keys up to %d", r, cluster, cr.Kvs[0].ModRevision, maxRev)
		}
		if _, err := time.Parse(time.RFC3339Nano, string(cr.Kvs[0].Value)); err != nil {
			t.Errorf("%s canary value %q: %v", r, cr.Kvs[0].Value, err)
		}
	}
}

func TestMirror(t *testing.T) {
	l := newLocal(t)
	srcs := []*source{newSource(t, "cluster2", 2), newSource(t, "cluster3", 3), newSource(t, "cluster10", 10)}
	for _, s := range srcs {
		s.basic()
		l.connectRemote(s)
	}
	l.start(fastLoss(fastConfig(t, l)))
	for _, s := range srcs {
		l.equal(s, wait)
	}
	testenv.Eventually(t, wait, func() error {
		for _, s := range srcs {
			if st, _ := l.status(s.name); !st.Synced {
				return fmt.Errorf("status of %s: %+v", s.name, st)
			}
		}
		return nil
	})
	for _, s := range srcs {
		checkCanaryOrder(t, l, s.name)
		want := fmt.Sprintf(`{"id":%d,"capabilities":{"syncedCanaries":true,"cached":true,"maxConnectedClusters":255}}`, s.id)
		if got := l.list(wire.ClusterConfigKey(s.name))[wire.ClusterConfigKey(s.name)]; got != want {
			t.Errorf("cached cluster-config of %s = %s, want %s", s.name, got, want)
		}
		st, _ := l.status(s.name)
		keys := map[wire.Resource]int{}
		for _, r := range st.Resources {
			keys[r.Resource] = r.Keys
		}
		wantKeys := map[wire.Resource]int{wire.Identities: 2, wire.Nodes: 2, wire.IP: 4, wire.Services: 2}
		if !st.Connected || !st.Reachable || st.ID != s.id || !maps.Equal(keys, wantKeys) || st.LastError != "" {
			t.Errorf("status of %s: %+v, want connected, reachable, ID %d, keys %v", s.name, st, s.id, wantKeys)
		}
	}
	// The local cluster's own prefixes are not touched, and cluster1 never
	// sees cluster10's keys (prefixes end in "/").
	if got := l.list(wire.StateRoot); len(got) != 0 {
		t.Errorf("kvstoremesh wrote under %s: %v", wire.StateRoot, got)
	}

	s := srcs[1]
	changes := []struct {
		name   string
		change func()
	}{
		{"service backends changed", func() { s.service("rebel-base", "10.3.0.4") }},
		{"service deleted", func() { s.deleteService("other") }},
		{"service added", func() { s.service("third", "10.3.0.2", "10.3.0.4") }},
		{"ipcache entry deleted", func() { s.deleteIP("10.3.0.1") }},
		{"ipcache entry added", func() { s.ip("10.3.0.9", s.localIdentity(1)) }},
		{"node added", func() { s.node("node-3", "172.18.3.3") }},
		{"identity added", func() { s.identity(s.localIdentity(3), "tie-fighter") }},
		{"burst", func() {
			for i := range 200 {
				s.service("rebel-base", fmt.Sprintf("10.3.1.%d", i))
			}
		}},
	}
	for _, c := range changes {
		t.Run(c.name, func(t *testing.T) {
			l.t = t
			c.change()
			s.flush()
			l.equal(s, wait)
		})
	}
	l.t = t
	for _, s := range srcs {
		l.equal(s, wait)
	}
}

func TestMalformedNotCopied(t *testing.T) {
	l := newLocal(t)
	s := newSource(t, "cluster2", 2)
	s.basic()
	// Written behind the mesh-apiserver's back, after its canaries (its
	// prune would delete them otherwise).
	bad := map[string]string{
		wire.ServiceKey("cluster2", "default", "broken"):   `{"cluster":"cluster2",`,
		wire.ServiceKey("cluster2", "default", "impostor"): string(mustJSON(t, s.serviceValue("rebel-base", "10.2.0.9"))),
		wire.NodeKey("cluster2", "node-x"):                 `{"Name":"node-y","Cluster":"cluster2","ClusterID":2}`,
		wire.IPKey("10.2.0.50"):                            `{"IP":"10.2.0.50","ID":196609}`, // cluster 3's range
		wire.IPKey("10.2.0.51"):                            `{"IP":"10.2.0.52","ID":131073}`, // key and value disagree
		wire.IdentityKey(3<<16 | 1):                        `k8s:app=x;k8s:io.cilium.k8s.policy.cluster=cluster2;`,
		wire.IdentityKey(2<<16 | 9):                        `k8s:app=x;k8s:io.cilium.k8s.policy.cluster=cluster3;k8s:io.kubernetes.pod.namespace=default;`,
	}
	for k, v := range bad {
		if _, err := s.srv.Client().Put(ctxT(t), k, v); err != nil {
			t.Fatal(err)
		}
	}
	l.connectRemote(s)
	l.start(fastLoss(fastConfig(t, l)))
	l.equal(s, wait)
	cache := l.list(wire.CacheRoot)
	for k := range bad {
		ck, err := wire.CacheKey("cluster2", k)
		if err != nil {
			t.Fatal(err)
		}
		if v, ok := cache[ck]; ok {
			t.Errorf("malformed %s copied as %s = %s", k, ck, v)
		}
	}
	if len(cache) != 10 {
		t.Errorf("cache holds %d keys, want the 10 valid ones: %v", len(cache), slices.Sorted(maps.Keys(cache)))
	}

	// A valid entry that turns malformed keeps its last good value in the
	// cache; a good value then replaces it, and a delete removes it.
	key := wire.ServiceKey("cluster2", "default", "other")
	ck, _ := wire.CacheKey("cluster2", key)
	good := l.list(wire.CacheRoot)[ck]
	if good == "" {
		t.Fatalf("%s not cached before the test", ck)
	}
	if _, err := s.srv.Client().Put(ctxT(t), key, `{"cluster":"cluster2","namespace":"default","name":"other","clusterID":7}`); err != nil {
		t.Fatal(err)
	}
	// Evidence that kvstoremesh has seen the bad value: a later good write
	// to another key arrives, and the bad one has not replaced the good.
	s.service("marker", "10.2.0.4")
	markerKey, _ := wire.CacheKey("cluster2", wire.ServiceKey("cluster2", "default", "marker"))
	testenv.Eventually(t, wait, func() error {
		if !l.has(markerKey) {
			return fmt.Errorf("%s not cached yet", markerKey)
		}
		return nil
	})
	if got := l.list(wire.CacheRoot)[ck]; got != good {
		t.Errorf("after a malformed overwrite %s = %s, want the last good %s", ck, got, good)
	}
	l.equal(s, wait)
	s.service("other", "10.2.0.2", "10.2.0.4")
	testenv.Eventually(t, wait, func() error {
		if got := l.list(wire.CacheRoot)[ck]; got == good || got == "" {
			return fmt.Errorf("%s = %s, want the new good value", ck, got)
		}
		return nil
	})
	s.deleteService("other")
	testenv.Eventually(t, wait, func() error {
		if l.has(ck) {
			return fmt.Errorf("%s still cached after its delete", ck)
		}
		return nil
	})
	l.equal(s, wait)
}

// watchLog records every event under cilium/ of the local etcd from now on.
type watchLog struct {
	t      *testing.T
	l      *local
	mu     sync.Mutex
	events []*clientv3.Event
	rev    int64 // the revision the log has seen up to
}

func startWatchLog(t *testing.T, l *local) *watchLog {
	t.Helper()
	resp, err := l.srv.Client().Get(ctxT(t), "probe")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	wl := &watchLog{t: t, l: l}
	wch := l.srv.Client().Watch(ctx, wire.Root, clientv3.WithPrefix(), clientv3.WithRev(resp.Header.Revision+1))
	done := make(chan struct{})
	go func() {
		defer close(done)
		for wr := range wch {
			wl.mu.Lock()
			wl.events = append(wl.events, wr.Events...)
			wl.rev = max(wl.rev, wr.Header.Revision)
			wl.mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	return wl
}

// snapshot returns the events up to the local etcd's current revision at
// least: what the test has seen in the store is in the log, however late
// the watch delivers it.
func (wl *watchLog) snapshot() []*clientv3.Event {
	wl.t.Helper()
	cli := wl.l.srv.Client()
	resp, err := cli.Get(ctxT(wl.t), "probe")
	if err != nil {
		wl.t.Fatal(err)
	}
	testenv.Eventually(wl.t, wait, func() error {
		wl.mu.Lock()
		rev := wl.rev
		wl.mu.Unlock()
		if rev >= resp.Header.Revision {
			return nil
		}
		// A progress notification carries the revision when no event does.
		if err := cli.RequestProgress(ctxT(wl.t)); err != nil {
			return err
		}
		return fmt.Errorf("watch log at revision %d, the store at %d", rev, resp.Header.Revision)
	})
	wl.mu.Lock()
	defer wl.mu.Unlock()
	return slices.Clone(wl.events)
}

// TestLossAndRecovery loses a remote cluster (its etcd stopped, or a
// black-holed partition), changes its state meanwhile, and brings it back.
func TestLossAndRecovery(t *testing.T) {
	tests := []struct {
		name string
		// lose cuts the remote off; recover brings it back with rebel-base
		// moved to 10.2.0.7, "other" gone and "third" added.
		lose, recover func(t *testing.T, s *source)
	}{
		{
			name: "remote etcd stopped",
			lose: func(t *testing.T, s *source) {
				s.stopWriter() // the remote mesh-apiserver dies with its etcd
				s.srv.Stop()
			},
			recover: func(t *testing.T, s *source) {
				s.srv.Restart() // fresh data dir: every key gone
				s.startWriter()
				s.config()
				s.identity(s.localIdentity(1), "rebel-base")
				s.node("node-1", "172.18.2.1")
				s.ip("10.2.0.1", s.localIdentity(1))
				s.ip("10.2.0.7", s.localIdentity(1))
				s.service("rebel-base", "10.2.0.7")
				s.service("third", "10.2.0.1")
				s.synced()
				s.flush()
			},
		},
		{
			name: "black-holed partition",
			lose: func(t *testing.T, s *source) { s.srv.Partition() },
			recover: func(t *testing.T, s *source) {
				// The remote moves on behind the partition (written on the
				// server's side of it).
				kv := s.srv.Client()
				for k, v := range map[string][]byte{
					wire.ServiceKey(s.name, "default", "rebel-base"): mustJSON(t, s.serviceValue("rebel-base", "10.2.0.7")),
					wire.ServiceKey(s.name, "default", "third"):      mustJSON(t, s.serviceValue("third", "10.2.0.1")),
				} {
					if _, err := kv.Put(ctxT(t), k, string(v)); err != nil {
						t.Fatal(err)
					}
				}
				if _, err := kv.Delete(ctxT(t), wire.ServiceKey(s.name, "default", "other")); err != nil {
					t.Fatal(err)
				}
				s.srv.Heal()
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l := newLocal(t)
			s := newSource(t, "cluster2", 2)
			s.basic()
			l.connectRemote(s)
			// The default loss detection: the bound is about it.
			l.start(fastConfig(t, l))
			l.equal(s, wait)
			svcCanary := wire.CanaryKey(wire.Services, "cluster2", true)
			testenv.Eventually(t, wait, func() error {
				if !l.has(svcCanary) {
					return errors.New("no services canary")
				}
				return nil
			})
			before := l.list(wire.CacheRoot)

			lostAt := time.Now()
			tt.lose(t, s)
			testenv.Eventually(t, lossBound+5*time.Second, func() error {
				if l.has(svcCanary) {
					return errors.New("services canary still there")
				}
				return nil
			})
			detected := time.Since(lostAt)
			t.Logf("services canary withdrawn %v after the loss (bound %v)", detected.Round(time.Millisecond), lossBound)
			if detected > lossBound {
				t.Errorf("services canary withdrawn after %v, bound %v", detected, lossBound)
			}
			// The cache and the other canaries stay: agents keep
			// identities, ipcache entries and nodes.
			if after := l.list(wire.CacheRoot); !maps.Equal(after, before) {
				t.Errorf("cache changed on loss:\n before %v\n after  %v", before, after)
			}
			for _, r := range []wire.Resource{wire.Identities, wire.Nodes, wire.IP} {
				if !l.has(wire.CanaryKey(r, "cluster2", true)) {
					t.Errorf("%s canary withdrawn on loss", r)
				}
			}
			if st, _ := l.status("cluster2"); st.Reachable || st.Synced {
				t.Errorf("status after loss: %+v", st)
			}

			wl := startWatchLog(t, l)
			tt.recover(t, s)
			l.equal(s, wait)
			testenv.Eventually(t, wait, func() error {
				if !l.has(svcCanary) {
					return errors.New("services canary not rewritten")
				}
				return nil
			})
			svcPrefix := wire.ClusterPrefix(wire.Services, "cluster2", true)
			if got := slices.Sorted(maps.Keys(l.list(svcPrefix))); !slices.Equal(got, []string{svcPrefix + "default/rebel-base", svcPrefix + "default/third"}) {
				t.Errorf("services after recovery: %v", got)
			}
			// The canary came back once, after every services write of the
			// resync, the stale deletion included.
			var canaryAt, lastSvc int
			puts := 0
			deleted := false
			for i, ev := range wl.snapshot() {
				k := string(ev.Kv.Key)
				switch {
				case k == svcCanary && ev.Type == clientv3.EventTypePut:
					puts++
					if canaryAt == 0 {
						canaryAt = i
					}
				case strings.HasPrefix(k, svcPrefix):
					lastSvc = i
					if ev.Type == clientv3.EventTypeDelete && strings.HasSuffix(k, "/other") {
						deleted = true
					}
				}
			}
			if puts != 1 || canaryAt < lastSvc {
				t.Errorf("services canary written %d times, first at event %d, last services write at %d", puts, canaryAt, lastSvc)
			}
			if !deleted {
				t.Error("stale service default/other not deleted")
			}
			testenv.Eventually(t, wait, func() error {
				if st, _ := l.status("cluster2"); !st.Reachable || !st.Synced || st.Sessions < 2 {
					return fmt.Errorf("status %+v", st)
				}
				return nil
			})
		})
	}
}

// TestLocalEtcdRestart: the local etcd restarts empty (the apiserver's
// ephemeral etcd); kvstoremesh refills it, canaries last, and a remote
// that is lost meanwhile does not get its services canary back.
func TestLocalEtcdRestart(t *testing.T) {
	l := newLocal(t)
	s2, s3 := newSource(t, "cluster2", 2), newSource(t, "cluster3", 3)
	for _, s := range []*source{s2, s3} {
		s.basic()
		l.connectRemote(s)
	}
	l.start(fastLoss(fastConfig(t, l)))
	l.equal(s2, wait)
	l.equal(s3, wait)

	t.Run("refilled", func(t *testing.T) {
		l.t = t
		l.srv.Restart()
		l.equal(s2, wait)
		l.equal(s3, wait)
		// The Writer rewrites canaries after the keys.
		testenv.Eventually(t, wait, func() error {
			for _, r := range wire.Resources {
				if !l.has(wire.CanaryKey(r, "cluster2", true)) {
					return fmt.Errorf("no %s canary", r)
				}
			}
			return nil
		})
		checkCanaryOrder(t, l, "cluster2")
	})

	t.Run("lost remote stays lost", func(t *testing.T) {
		l.t = t
		s3.stopWriter()
		s3.srv.Stop()
		svc3 := wire.CanaryKey(wire.Services, "cluster3", true)
		testenv.Eventually(t, wait, func() error {
			if l.has(svc3) {
				return errors.New("services canary of cluster3 still there")
			}
			return nil
		})
		l.srv.Restart()
		l.equal(s2, wait)
		testenv.Eventually(t, wait, func() error {
			if !l.has(wire.CanaryKey(wire.IP, "cluster3", true)) {
				return errors.New("ip canary of cluster3 not rewritten")
			}
			return nil
		})
		if err := l.mesh.Flush(ctxT(t)); err != nil {
			t.Fatal(err)
		}
		if l.has(svc3) {
			t.Fatal("services canary of a lost remote rewritten after the local etcd restarted")
		}
		if got := l.list(wire.ClusterPrefix(wire.IP, "cluster3", true)); len(got) != 4 {
			t.Errorf("ipcache of the lost remote not refilled: %v", got)
		}
	})
}

func TestRemovedClusterDrained(t *testing.T) {
	l := newLocal(t)
	s2, s3 := newSource(t, "cluster2", 2), newSource(t, "cluster3", 3)
	for _, s := range []*source{s2, s3} {
		s.basic()
		l.connectRemote(s)
	}
	l.start(fastLoss(fastConfig(t, l)))
	l.equal(s2, wait)
	l.equal(s3, wait)

	if err := os.Remove(filepath.Join(l.dir, "cluster2")); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, wait, func() error {
		var left []string
		for k := range l.list(wire.Root) {
			if strings.Contains(k, "cluster2") {
				left = append(left, k)
			}
		}
		if len(left) > 0 {
			return fmt.Errorf("left after removal: %v", left)
		}
		return nil
	})
	if _, ok := l.status("cluster2"); ok {
		t.Error("removed cluster still in status")
	}
	l.equal(s3, wait)

	// A cluster that never synced in this run (unreachable), with
	// leftovers of an earlier run in the local etcd: removing it deletes
	// them too.
	leftovers := []string{
		"cilium/cache/ip/v1/cluster5/10.5.0.1",
		"cilium/cache/services/v1/cluster5/default/rebel-base",
		wire.CanaryKey(wire.IP, "cluster5", true),
		wire.ClusterConfigKey("cluster5"),
	}
	for _, k := range leftovers {
		if err := l.client.Put(ctxT(t), k, []byte("old")); err != nil {
			t.Fatal(err)
		}
	}
	dead := newSource(t, "cluster5", 5)
	dead.stopWriter()
	dead.srv.Stop()
	l.connectRemote(dead)
	testenv.Eventually(t, wait, func() error {
		if _, ok := l.status("cluster5"); !ok {
			return errors.New("cluster5 not configured")
		}
		return nil
	})
	if err := os.Remove(filepath.Join(l.dir, "cluster5")); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, wait, func() error {
		for _, k := range leftovers {
			if l.has(k) {
				return fmt.Errorf("%s left after removal", k)
			}
		}
		return nil
	})
	l.equal(s3, wait)

	// Added back: mirrored again from scratch.
	l.connectRemote(s2)
	l.equal(s2, wait)
}

func TestOrphanSweep(t *testing.T) {
	l := newLocal(t)
	s := newSource(t, "cluster2", 2)
	s.basic()
	l.connectRemote(s)
	orphans := []string{
		wire.ClusterConfigKey("cluster9"),
		wire.CanaryKey(wire.IP, "cluster9", true),
		"cilium/cache/ip/v1/cluster9/10.9.0.1",
		"cilium/cache/identities/v1/cluster9/id/589825",
	}
	kept := []string{
		// The local mesh-apiserver's own keys.
		wire.ClusterConfigKey(localName),
		wire.CanaryKey(wire.Nodes, localName, false),
		wire.NodeKey(localName, "node-1"),
	}
	// A leftover of the configured cluster, pruned by the resync.
	leftover := "cilium/cache/nodes/v1/cluster2/ghost"
	for _, k := range slices.Concat(orphans, kept, []string{leftover}) {
		if err := l.client.Put(ctxT(t), k, []byte("old")); err != nil {
			t.Fatal(err)
		}
	}
	cfg := fastLoss(fastConfig(t, l))
	cfg.OrphanSweepDelay = 500 * time.Millisecond
	l.start(cfg)
	l.equal(s, wait)
	testenv.Eventually(t, wait, func() error {
		for _, k := range append(orphans, leftover) {
			if l.has(k) {
				return fmt.Errorf("%s not deleted", k)
			}
		}
		return nil
	})
	for _, k := range kept {
		if !l.has(k) {
			t.Errorf("%s deleted", k)
		}
	}
}

func TestNew(t *testing.T) {
	l := newLocal(t)
	good := fastConfig(t, l)
	tests := []struct {
		name   string
		modify func(*Config)
	}{
		{"no local client", func(c *Config) { c.Local = nil }},
		{"no config dir", func(c *Config) { c.ConfigDir = "" }},
		{"bad cluster name", func(c *Config) { c.ClusterName = "Cluster_1" }},
		{"cluster ID out of range", func(c *Config) { c.ClusterID = 256 }},
		{"bad maxConnectedClusters", func(c *Config) { c.MaxConnectedClusters = 300 }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := good
			tt.modify(&cfg)
			if _, err := New(cfg); err == nil {
				t.Fatalf("New accepted %+v", cfg)
			}
		})
	}
	m := l.start(good)
	testenv.Eventually(t, wait, func() error {
		if !m.started.Load() {
			return errors.New("not started")
		}
		return nil
	})
	if err := m.Run(context.Background()); !errors.Is(err, ErrAlreadyStarted) {
		t.Fatalf("second Run = %v, want ErrAlreadyStarted", err)
	}
}

// TestRunStopsEverything: once Run returns, no goroutine of the Mesh (its
// remote connections, readers, health probes, writer) is left.
func TestRunStopsEverything(t *testing.T) {
	l := newLocal(t)
	s := newSource(t, "cluster2", 2)
	s.basic()
	l.connectRemote(s)
	runOnce := func() {
		m, err := New(fastLoss(fastConfig(t, l)))
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- m.Run(ctx) }()
		l.equal(s, wait)
		cancel()
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
	// The first run leaves the shared clients' own long-lived goroutines
	// (the local client's lease keepalive loops, server-side streams).
	runOnce()
	time.Sleep(200 * time.Millisecond) // settle, for the baseline only
	before := runtime.NumGoroutine()
	runOnce()
	const tolerance = 2
	testenv.Eventually(t, 5*time.Second, func() error {
		buf := make([]byte, 1<<20)
		stacks := string(buf[:runtime.Stack(buf, true)])
		for _, g := range strings.Split(stacks, "\n\n") {
			if strings.Contains(g, "kvstoremesh.(*Mesh)") || strings.Contains(g, "meshbed/mesh/remote.") {
				return fmt.Errorf("goroutine of the Mesh left:\n%s", g)
			}
		}
		if n := runtime.NumGoroutine(); n > before+tolerance {
			return fmt.Errorf("%d goroutines, %d before:\n%s", n, before, stacks)
		}
		return nil
	})
}

// TestCanaryOfEarlierRun: a local etcd that outlived kvstoremesh holds a
// services canary of its earlier run. It is withdrawn within the loss
// bound if the remote is unreachable, and never touched if it is
// reachable (a restart of kvstoremesh must not make agents flap).
func TestCanaryOfEarlierRun(t *testing.T) {
	for _, reachable := range []bool{false, true} {
		t.Run(fmt.Sprintf("reachable=%v", reachable), func(t *testing.T) {
			l := newLocal(t)
			s := newSource(t, "cluster2", 2)
			s.basic()
			svcCanary := wire.CanaryKey(wire.Services, "cluster2", true)
			if err := l.client.Put(ctxT(t), svcCanary, []byte(wire.Timestamp(time.Now()))); err != nil {
				t.Fatal(err)
			}
			if !reachable {
				s.stopWriter()
				s.srv.Stop()
			}
			l.connectRemote(s)
			wl := startWatchLog(t, l)
			cfg := fastConfig(t, l) // default loss detection
			started := time.Now()
			l.start(cfg)
			if !reachable {
				testenv.Eventually(t, lossBound+5*time.Second, func() error {
					if l.has(svcCanary) {
						return errors.New("canary of the earlier run still there")
					}
					return nil
				})
				if d := time.Since(started); d > lossBound {
					t.Errorf("withdrawn after %v, bound %v", d, lossBound)
				}
				return
			}
			l.equal(s, wait)
			time.Sleep(lossBound) // a negative: past the bound, nothing withdrawn
			for _, ev := range wl.snapshot() {
				if string(ev.Kv.Key) == svcCanary && ev.Type == clientv3.EventTypeDelete {
					t.Fatal("services canary of a reachable remote deleted at start")
				}
			}
		})
	}
}
