package remote

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/meshbed/meshbed/internal/testenv"
	"github.com/meshbed/meshbed/mesh/etcdtest"
	"github.com/meshbed/meshbed/mesh/wire"
)

// cacheWriter plays kvstoremesh on top of a Manager: a RawSink that copies
// what it reads into a local etcd under cilium/cache/ and carries loss and
// recovery through the services canary, as the package doc specifies.
type cacheWriter struct {
	*recorder
	local *clientv3.Client
}

var _ RawSink = (*cacheWriter)(nil)

func (k *cacheWriter) do(op func(ctx context.Context) error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := op(ctx); err != nil {
		k.t.Errorf("cache write: %v", err)
	}
}

func (k *cacheWriter) put(key string, value []byte) {
	k.do(func(ctx context.Context) error { _, err := k.local.Put(ctx, key, string(value)); return err })
}

func (k *cacheWriter) del(key string) {
	k.do(func(ctx context.Context) error { _, err := k.local.Delete(ctx, key); return err })
}

func (k *cacheWriter) cacheKey(cluster, key string) string {
	ck, err := wire.CacheKey(cluster, key)
	if err != nil {
		k.t.Errorf("cache key of %s: %v", key, err)
	}
	return ck
}

func (k *cacheWriter) ClusterConfig(cluster string, cfg wire.ClusterConfig) {
	cfg.Capabilities.Cached = true
	b, _ := json.Marshal(cfg)
	k.put(wire.ClusterConfigKey(cluster), b)
}

func (k *cacheWriter) UpsertRaw(cluster string, r wire.Resource, key string, value []byte) {
	k.put(k.cacheKey(cluster, key), value)
}

func (k *cacheWriter) DeleteRaw(cluster string, r wire.Resource, key string) {
	k.del(k.cacheKey(cluster, key))
}

func (k *cacheWriter) Synced(cluster string, r wire.Resource) {
	if r != wire.Services { // the services canary follows reachability
		k.put(wire.CanaryKey(r, cluster, true), []byte(wire.Timestamp(time.Now())))
	}
}

func (k *cacheWriter) Reachable(cluster string, reachable bool) {
	k.recorder.Reachable(cluster, reachable)
	if reachable {
		k.put(wire.CanaryKey(wire.Services, cluster, true), []byte(wire.Timestamp(time.Now())))
	} else {
		k.del(wire.CanaryKey(wire.Services, cluster, true))
	}
}

// TestThroughKVStoreMesh runs the whole chain: remote etcd → kvstoremesh's
// Manager (RawSink) → local etcd cache → agent's Manager, and measures the
// end-to-end loss bound across a partition of the remote cluster.
func TestThroughKVStoreMesh(t *testing.T) {
	remote, local := etcdtest.Start(t), etcdtest.Start(t)
	pub := newPublisher(t, remote.Client(), "cluster2", 2)
	pub.basic()
	pub.service("other", "10.20.0.50")
	px := newProxy(t, remote.Addr())

	kmDir := t.TempDir()
	writeConfig(t, kmDir, "cluster2", remote.Endpoints(), "")
	kmCfg := fastConfig(t, kmDir)
	kmCfg.Dialer = px.Dial
	kmCfg.HealthInterval, kmCfg.HealthTimeout = 0, 0 // the default bound
	km := &cacheWriter{recorder: newRecorder(t), local: local.Client()}
	kmMgr, err := New(kmCfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		kmMgr.Run(ctx, km)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})

	agentDir := t.TempDir()
	writeConfig(t, agentDir, "cluster2", local.Endpoints(), "")
	agent, rec := startManager(t, fastConfig(t, agentDir))
	rec.expect(wait, "cluster2", func(v *view) error {
		if !v.reachable || !maps.Equal(v.services, map[string]string{"default/rebel-base": "10.20.0.7", "default/other": "10.20.0.50"}) ||
			len(v.identities) != 1 || len(v.ips) != 1 || len(v.nodes) != 1 {
			return fmt.Errorf("%+v", v)
		}
		return nil
	})
	if st, _ := statusOf(agent, "cluster2"); !st.Cached {
		t.Fatalf("agent status %+v, want cached", st)
	}
	// The cache is a byte-for-byte copy.
	src, err := remote.Client().Get(ctx, wire.ServiceKey("cluster2", "default", "rebel-base"))
	if err != nil {
		t.Fatal(err)
	}
	dst, err := local.Client().Get(ctx, wire.ClusterPrefix(wire.Services, "cluster2", true)+"default/rebel-base")
	if err != nil || len(dst.Kvs) != 1 || !bytes.Equal(src.Kvs[0].Value, dst.Kvs[0].Value) {
		t.Fatalf("cache copy differs: %v", err)
	}

	lostAt := time.Now()
	px.partition(true)
	rec.expect(lossBound+5*time.Second, "cluster2", isReachable(false))
	v := rec.get("cluster2")
	detected := v.reachableLog[len(v.reachableLog)-1].at.Sub(lostAt)
	t.Logf("agent behind kvstoremesh saw the loss after %v (bound %v)", detected.Round(time.Millisecond), lossBound)
	if detected > lossBound {
		t.Errorf("loss reported after %v, bound %v", detected, lossBound)
	}
	if len(v.identities) != 1 || len(v.ips) != 1 {
		t.Fatalf("identities or ipcache dropped on loss: %+v", v)
	}

	pub.service("rebel-base", "10.20.0.8")
	pub.deleteService("other")
	healed := time.Now()
	px.partition(false)
	want := map[string]string{"default/rebel-base": "10.20.0.8"}
	rec.expect(wait, "cluster2", isReachable(true))
	v = rec.get("cluster2")
	back := v.reachableLog[len(v.reachableLog)-1]
	t.Logf("agent saw the recovery %v after the heal", back.at.Sub(healed).Round(time.Millisecond))
	if !maps.Equal(back.services, want) {
		t.Fatalf("services when reachable again: %v, want %v", back.services, want)
	}
}

// TestNoGoroutineLeak runs a Manager through connect, removal, re-adding
// and loss, stops it, and checks that its goroutines are gone.
func TestNoGoroutineLeak(t *testing.T) {
	srv := etcdtest.Start(t)
	pub := newPublisher(t, srv.Client(), "cluster2", 2)
	pub.basic()
	dir := t.TempDir()
	cfg := fastConfig(t, dir)
	m, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	rec := newRecorder(t)
	before := runtime.NumGoroutine()

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		m.Run(ctx, rec)
	}()
	writeConfig(t, dir, "cluster2", srv.Endpoints(), "")
	rec.expect(wait, "cluster2", isReachable(true))
	os.Remove(filepath.Join(dir, "cluster2"))
	testenv.Eventually(t, wait, func() error {
		if rec.get("cluster2") != nil {
			return fmt.Errorf("not removed")
		}
		return nil
	})
	writeConfig(t, dir, "cluster2", srv.Endpoints(), "")
	rec.expect(wait, "cluster2", isReachable(true))
	srv.Stop()
	rec.expect(wait, "cluster2", isReachable(false))
	cancel()
	<-done

	const tolerance = 2
	testenv.Eventually(t, 10*time.Second, func() error {
		if n := runtime.NumGoroutine(); n > before+tolerance {
			var b strings.Builder
			pprof.Lookup("goroutine").WriteTo(&b, 1)
			return fmt.Errorf("%d goroutines, %d before:\n%s", n, before, b.String())
		}
		return nil
	})
}
