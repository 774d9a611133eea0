package remote

import (
	"context"
	"fmt"
	"maps"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/etcdserverpb"
	"google.golang.org/grpc"

	"github.com/meshbed/meshbed/mesh/etcdtest"
	"github.com/meshbed/meshbed/mesh/kvstore"
	"github.com/meshbed/meshbed/mesh/wire"
)

// lossBound is the mesh's bound on reporting a lost cluster with the
// default health timings (docs/architecture.md, "Semantics").
const lossBound = 3 * time.Second

// TestLossAndRecovery cuts a directly connected remote cluster off (a
// black-holed partition through the dialer hook, or its etcd stopped),
// changes its state while it is away, and brings it back.
func TestLossAndRecovery(t *testing.T) {
	tests := []struct {
		name string
		// lose cuts the cluster off; recover brings it back with the
		// changed state written by change (which needs the server up).
		lose    func(srv *etcdtest.Server, px *proxy)
		recover func(srv *etcdtest.Server, px *proxy, pub *publisher)
	}{
		{
			name: "black-holed partition",
			lose: func(_ *etcdtest.Server, px *proxy) { px.partition(true) },
			recover: func(srv *etcdtest.Server, px *proxy, pub *publisher) {
				// The remote moves on while the partition lasts.
				pub.service("rebel-base", "10.20.0.8")
				pub.deleteService("other")
				px.partition(false)
			},
		},
		{
			name: "remote etcd stopped",
			lose: func(srv *etcdtest.Server, _ *proxy) { srv.Stop() },
			recover: func(srv *etcdtest.Server, _ *proxy, pub *publisher) {
				srv.Restart()
				pub.kv = srv.Client()
				pub.config()
				pub.identity(pub.localIdentity(1), "rebel-base")
				pub.ip("10.20.0.8", pub.localIdentity(1))
				pub.service("rebel-base", "10.20.0.8")
				pub.canaries()
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := etcdtest.Start(t)
			// The publisher writes directly; the Manager goes through the proxy.
			pub := newPublisher(t, srv.Client(), "cluster2", 2)
			pub.basic()
			pub.service("other", "10.20.0.50")
			px := newProxy(t, srv.Addr())

			dir := t.TempDir()
			writeConfig(t, dir, "cluster2", srv.Endpoints(), "")
			cfg := fastConfig(t, dir)
			cfg.Dialer = px.Dial
			// The default detection timings: this is what the bound is about.
			cfg.HealthInterval, cfg.HealthTimeout = 0, 0
			_, rec := startManager(t, cfg)
			rec.expect(wait, "cluster2", isReachable(true))
			rec.expect(wait, "cluster2", complete)
			if px.dials.Load() == 0 {
				t.Fatal("dialer hook not used")
			}
			before := rec.get("cluster2")

			lostAt := time.Now()
			tt.lose(srv, px)
			rec.expect(lossBound+5*time.Second, "cluster2", isReachable(false))
			v := rec.get("cluster2")
			detected := v.reachableLog[len(v.reachableLog)-1].at.Sub(lostAt)
			t.Logf("loss reported after %v (bound %v, health %v+%v)", detected.Round(time.Millisecond), lossBound,
				kvstore.DefaultHealthInterval, kvstore.DefaultHealthTimeout)
			if detected > lossBound {
				t.Errorf("loss reported after %v, bound %v", detected, lossBound)
			}
			// Everything is kept while the cluster is away: identities and
			// ipcache for established flows, services for the consumer to
			// withdraw (or keep, in fail-static mode).
			if !maps.Equal(v.identities, before.identities) || !maps.Equal(v.ips, before.ips) ||
				!maps.Equal(v.services, before.services) || !maps.Equal(v.nodes, before.nodes) {
				t.Fatalf("state changed on loss:\n before %+v\n after  %+v", before, v)
			}

			healedAt := time.Now()
			tt.recover(srv, px, pub)
			want := map[string]string{"default/rebel-base": "10.20.0.8"}
			rec.expect(wait, "cluster2", isReachable(true))
			v = rec.get("cluster2")
			back := v.reachableLog[len(v.reachableLog)-1]
			t.Logf("reachable again %v after recovery", back.at.Sub(healedAt).Round(time.Millisecond))
			// No window with stale backends: when the cluster is reported
			// reachable, its services are already the resynced ones.
			if !maps.Equal(back.services, want) {
				t.Errorf("services when reported reachable again: %v, want %v", back.services, want)
			}
			for _, r := range v.reachableLog[len(before.reachableLog):] {
				if r.reachable && !maps.Equal(r.services, want) {
					t.Errorf("reported reachable with services %v", r.services)
				}
			}
			rec.expect(wait, "cluster2", wantServices(want))
		})
	}
}

// complete checks that every resource of publisher.basic has arrived.
func complete(v *view) error {
	if len(v.services) == 0 || len(v.nodes) == 0 || len(v.ips) == 0 || len(v.identities) == 0 {
		return fmt.Errorf("incomplete: services %v nodes %v ips %v identities %v", v.services, v.nodes, v.ips, v.identities)
	}
	return nil
}

// TestCachedLossAndRecovery reads a remote cluster through a kvstoremesh
// cache in the local etcd and plays kvstoremesh's side of the contract.
func TestCachedLossAndRecovery(t *testing.T) {
	local := etcdtest.Start(t)
	km := newPublisher(t, local.Client(), "cluster2", 2)
	km.cached = true
	km.basic()
	km.service("other", "10.20.0.50")

	dir := t.TempDir()
	writeConfig(t, dir, "cluster2", local.Endpoints(), "")
	cfg := fastConfig(t, dir)
	m, rec := startManager(t, cfg)
	rec.expect(wait, "cluster2", wantServices(map[string]string{"default/rebel-base": "10.20.0.7", "default/other": "10.20.0.50"}))
	rec.expect(wait, "cluster2", isReachable(true))
	rec.expect(wait, "cluster2", complete)
	if st, _ := statusOf(m, "cluster2"); !st.Cached {
		t.Fatalf("status %+v, want cached", st)
	}

	t.Run("kvstoremesh loses the remote", func(t *testing.T) {
		rec.t = t
		before := rec.get("cluster2")
		lostAt := time.Now()
		km.del(km.canary("services"))
		rec.expect(wait, "cluster2", isReachable(false))
		v := rec.get("cluster2")
		t.Logf("loss carried by kvstoremesh reported after %v", v.reachableLog[len(v.reachableLog)-1].at.Sub(lostAt).Round(time.Millisecond))
		if !maps.Equal(v.identities, before.identities) || !maps.Equal(v.ips, before.ips) || !maps.Equal(v.services, before.services) {
			t.Fatalf("state changed on loss:\n before %+v\n after  %+v", before, v)
		}
	})
	t.Run("kvstoremesh resyncs, then rewrites the canary", func(t *testing.T) {
		rec.t = t
		km.service("rebel-base", "10.20.0.8")
		km.deleteService("other")
		time.Sleep(200 * time.Millisecond) // a negative: no reachability before the canary
		if v := rec.get("cluster2"); v.reachable {
			t.Fatal("reachable before kvstoremesh rewrote the canary")
		}
		km.canaries()
		want := map[string]string{"default/rebel-base": "10.20.0.8"}
		rec.expect(wait, "cluster2", isReachable(true))
		v := rec.get("cluster2")
		if back := v.reachableLog[len(v.reachableLog)-1]; !maps.Equal(back.services, want) {
			t.Fatalf("services when reported reachable again: %v, want %v", back.services, want)
		}
	})
	t.Run("local etcd restarts and kvstoremesh refills it", func(t *testing.T) {
		rec.t = t
		n := len(rec.get("cluster2").reachableLog)
		local.Restart()
		km.kv = local.Client()
		km.basic()
		km.service("rebel-base", "10.20.0.9")
		want := map[string]string{"default/rebel-base": "10.20.0.9"}
		rec.expect(wait, "cluster2", wantServices(want))
		// Within the grace: the remote cluster never looked lost.
		if log := rec.get("cluster2").reachableLog[n:]; len(log) != 0 {
			t.Fatalf("reachability changed across a local etcd restart: %+v", log)
		}
	})
	t.Run("local etcd restarts without the remote", func(t *testing.T) {
		rec.t = t
		restarted := time.Now()
		local.Restart()
		km.kv = local.Client()
		// kvstoremesh refills what it has but has not reached the remote:
		// no services canary.
		km.config()
		km.identity(km.localIdentity(1), "rebel-base")
		for _, r := range []wire.Resource{wire.Identities, wire.Nodes, wire.IP} {
			km.put(km.canary(r), wire.Timestamp(time.Now()))
		}
		rec.expect(cfg.CanaryGrace+wait, "cluster2", isReachable(false))
		v := rec.get("cluster2")
		after := v.reachableLog[len(v.reachableLog)-1].at.Sub(restarted)
		t.Logf("absent canary taken as a loss after %v (grace %v)", after.Round(time.Millisecond), cfg.CanaryGrace)
		if after < cfg.CanaryGrace-200*time.Millisecond {
			t.Errorf("loss reported after %v, before the grace %v", after, cfg.CanaryGrace)
		}
	})
}

// TestServicesSyncedTimeout: a configured cluster that never syncs does not
// hold ServicesSynced beyond SyncTimeout.
func TestServicesSyncedTimeout(t *testing.T) {
	srv := etcdtest.Start(t)
	newPublisher(t, srv.Client(), "cluster2", 2).config() // no canaries, ever
	dir := t.TempDir()
	writeConfig(t, dir, "cluster2", srv.Endpoints(), "")
	cfg := fastConfig(t, dir)
	cfg.SyncTimeout = 500 * time.Millisecond
	start := time.Now()
	m, _ := startManager(t, cfg)
	select {
	case <-m.ServicesSynced():
		if d := time.Since(start); d < cfg.SyncTimeout {
			t.Fatalf("closed after %v, before the timeout", d)
		}
	case <-time.After(wait):
		t.Fatal("ServicesSynced not closed after the timeout")
	}
	if st, _ := statusOf(m, "cluster2"); st.ServicesSynced {
		t.Fatal("cluster reported synced")
	}
}

// TestNoConfigDirectory: a missing directory is an empty mesh, synced at once.
func TestNoConfigDirectory(t *testing.T) {
	cfg := fastConfig(t, t.TempDir()+"/missing")
	m, _ := startManager(t, cfg)
	select {
	case <-m.ServicesSynced():
	case <-time.After(wait):
		t.Fatal("ServicesSynced not closed for an empty mesh")
	}
	if st := m.Status(); len(st) != 0 {
		t.Fatalf("status %+v", st)
	}
}

func TestNewRejectsBadLocalCluster(t *testing.T) {
	for _, cfg := range []Config{
		{ClusterName: "Bad_Name", ClusterID: 1, Dir: "x"},
		{ClusterName: "c1", ClusterID: 0, Dir: "x"},
		{ClusterName: "c1", ClusterID: 300, Dir: "x"},
		{ClusterName: "c1", ClusterID: 1},
	} {
		if _, err := New(cfg); err == nil {
			t.Errorf("New(%+v) accepted", cfg)
		}
	}
	if _, err := New(Config{ClusterName: "c1", ClusterID: 300, MaxConnectedClusters: 511, Dir: "x"}); err != nil {
		t.Errorf("ID 300 in a 511 mesh: %v", err)
	}
}

// slowHeartbeat returns a unary interceptor that holds every read of the
// heartbeat key (the health probe) until its deadline, as a CPU-starved
// machine would, counting them.
func slowHeartbeat(held *atomic.Int64) grpc.UnaryClientInterceptor {
	return func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		if r, ok := req.(*etcdserverpb.RangeRequest); ok && string(r.Key) == wire.HeartbeatKey {
			held.Add(1)
			<-ctx.Done()
			return ctx.Err()
		}
		return invoker(ctx, method, req, reply, cc, opts...)
	}
}

// TestSlowProbeIsNotALoss: with every health probe timing out while the
// remote cluster's watch events keep arriving, the cluster stays reachable
// and its session is not restarted; a black-holed partition is still
// reported within the detection bound.
func TestSlowProbeIsNotALoss(t *testing.T) {
	srv := etcdtest.Start(t)
	pub := newPublisher(t, srv.Client(), "cluster2", 2)
	pub.basic()
	px := newProxy(t, srv.Addr())

	dir := t.TempDir()
	writeConfig(t, dir, "cluster2", srv.Endpoints(), "")
	cfg := fastConfig(t, dir)
	cfg.Dialer = px.Dial
	cfg.HealthInterval, cfg.HealthTimeout = 200*time.Millisecond, time.Second
	var held atomic.Int64
	cfg.dialOptions = []grpc.DialOption{grpc.WithChainUnaryInterceptor(slowHeartbeat(&held))}
	m, rec := startManager(t, cfg)
	rec.expect(wait, "cluster2", isReachable(true))
	rec.expect(wait, "cluster2", complete)

	// The remote keeps changing a node (as a live cluster does), slower
	// than the probe interval so that probes go out in the gaps.
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		tick := time.NewTicker(250 * time.Millisecond)
		defer tick.Stop()
		for i := 0; ; i++ {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
				n := wire.Node{Name: "node-1", Cluster: "cluster2", ClusterID: 2, Source: "custom-resource",
					IPAddresses: []wire.NodeAddress{{Type: wire.NodeAddressInternalIP, IP: net.IPv4(172, 18, 0, byte(3+i%100))}}}
				srv.Client().Put(ctx, wire.NodeKey("cluster2", "node-1"), mustJSON(t, n))
			}
		}
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})

	before := rec.get("cluster2")
	st0, _ := statusOf(m, "cluster2")
	heldBefore := held.Load()
	observe := 4 * cfg.HealthTimeout
	deadline := time.Now().Add(observe)
	for time.Now().Before(deadline) {
		if v := rec.get("cluster2"); !v.reachable {
			t.Fatalf("cluster declared lost while its events flow (%d probes held)", held.Load())
		}
		time.Sleep(cfg.HealthInterval / 4)
	}
	if n := held.Load() - heldBefore; n < 2 {
		t.Fatalf("%d probes held in %v: the slow probe was not exercised", n, observe)
	}
	if log := rec.get("cluster2").reachableLog[len(before.reachableLog):]; len(log) != 0 {
		t.Fatalf("reachability changed: %+v", log)
	}
	if st, _ := statusOf(m, "cluster2"); st.Sessions != st0.Sessions {
		t.Fatalf("sessions %d -> %d: a session was restarted", st0.Sessions, st.Sessions)
	}

	bound := kvstore.HealthConfig{Interval: cfg.HealthInterval, Timeout: cfg.HealthTimeout}.Bound()
	lostAt := time.Now()
	px.partition(true)
	rec.expect(bound+5*time.Second, "cluster2", isReachable(false))
	v := rec.get("cluster2")
	detected := v.reachableLog[len(v.reachableLog)-1].at.Sub(lostAt)
	t.Logf("partition reported after %v (bound %v), %d probes held", detected.Round(time.Millisecond), bound, held.Load())
	if detected > bound+300*time.Millisecond {
		t.Errorf("loss reported after %v, bound %v", detected, bound)
	}
	px.partition(false)
	rec.expect(wait, "cluster2", isReachable(true))
}
