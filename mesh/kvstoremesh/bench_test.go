package kvstoremesh

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/meshbed/meshbed/mesh/etcdtest"
	"github.com/meshbed/meshbed/mesh/kvstore"
	"github.com/meshbed/meshbed/mesh/wire"
)

// BenchmarkBootstrap measures kvstoremesh's bootstrap in the shape of
// Cilium's ClusterMesh scale test: N remote clusters, each exporting 100
// nodes, 1,000 endpoints (ipcache entries), 100 identities and 50 global
// services of 20 backends (1,250 keys per cluster; 62,500 keys for N=50,
// 312,500 for N=250), already published when kvstoremesh starts.
//
// Measured, per iteration: from New+Run of a Mesh on a fresh, empty local
// etcd (in-process, as in the mesh-apiserver, no fsync) until the local
// etcd holds every cache canary of every remote (4·N keys), observed by a
// watch on the local etcd. A canary is written only after every key it
// vouches for is committed, so at that point the whole cache is written.
// Reported:
//
//   - s-to-synced: that time;
//   - keys/s: cache keys written per second over it;
//   - heap-MB: Go heap in use after a GC at that point, minus before the
//     Mesh started (kvstoremesh's state plus the local etcd's growth: both
//     live in the mesh-apiserver's process);
//   - rss-MB: the process's resident set growth over the same span;
//   - restarts: remote sessions restarted meanwhile. Each is a relist
//     after the loss detector fired (a health probe not answered within
//     2 s): on a quiet machine there are none; when the machine is busy
//     (the remote side shares its two CPUs) they happen and the time
//     grows with them.
//
// The remote clusters live in a child process (see fleet_test.go): one
// gRPC endpoint and connection per cluster, served by etcd gRPC proxies
// over a few shared etcd servers (50 clusters each). Limits: everything
// shares this machine's CPUs with the remote side, loopback has no
// latency, and no TLS. Loss detection and reconnect settings are the
// defaults. N=250 is skipped under -short.
func BenchmarkBootstrap(b *testing.B) {
	for _, n := range []int{50, 250} {
		b.Run(fmt.Sprintf("clusters=%d", n), func(b *testing.B) {
			if n > 50 && testing.Short() {
				b.Skip("250 remote clusters take minutes to set up; run without -short")
			}
			spec := fleetSpec{
				Clusters: n, ClustersPerServer: 50, FirstID: 2,
				Nodes: 100, Endpoints: 1000, Identities: 100, Services: 50, BackendsPerService: 20,
			}
			fleet := startFleet(b, spec)
			b.Logf("fleet: %d clusters on %d etcd servers, %d keys published in %v",
				n, fleet.Servers, n*spec.keysPerCluster(), fleet.Publish.Round(time.Millisecond))
			dir := b.TempDir()
			for name, ep := range fleet.Endpoints {
				writeConfig(b, dir, name, []string{ep})
			}
			var synced time.Duration
			var heap, rss float64
			iters, restarts := 0, 0
			for b.Loop() {
				d, h, r, rs := bootstrapOnce(b, dir, 4*n)
				synced += d
				heap += h
				rss += r
				restarts += rs
				iters++
			}
			secs := synced.Seconds() / float64(iters)
			b.ReportMetric(secs, "s-to-synced")
			b.ReportMetric(float64(n*spec.keysPerCluster())/secs, "keys/s")
			b.ReportMetric(heap/float64(iters), "heap-MB")
			b.ReportMetric(rss/float64(iters), "rss-MB")
			// Each restart is a relist of a remote after a loss was
			// detected: health probes that did not complete within their
			// timeout on a machine too busy (the remote side shares it).
			b.ReportMetric(float64(restarts)/float64(iters), "restarts")
		})
	}
}

// bootstrapOnce runs a Mesh on a fresh local etcd until want canaries are
// written and returns how long that took, the heap and RSS growth (MB),
// and how many remote sessions restarted meanwhile.
// The benchmark timer runs only from the Mesh's start to the last canary,
// so ns/op and -benchmem's figures are the bootstrap's.
func bootstrapOnce(b *testing.B, dir string, want int) (synced time.Duration, heapMB, rssMB float64, restarts int) {
	b.StopTimer()
	defer b.StartTimer()
	local := etcdtest.Start(b)
	defer local.Stop()
	client, err := kvstore.Connect(context.Background(), kvstore.Config{Endpoints: local.Endpoints()})
	if err != nil {
		b.Fatal(err)
	}
	defer client.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	resp, err := local.Client().Get(ctx, "probe")
	if err != nil {
		b.Fatal(err)
	}
	wch := local.Client().Watch(ctx, wire.SyncedRoot, clientv3.WithPrefix(), clientv3.WithRev(resp.Header.Revision+1))

	m, err := New(Config{
		ClusterName: "cluster-local", ClusterID: 1,
		ConfigDir: dir, Local: client,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		b.Fatal(err)
	}
	heap0, rss0 := memory()
	mctx, mcancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	b.StartTimer()
	start := time.Now()
	go func() { done <- m.Run(mctx) }()
	defer func() {
		mcancel()
		<-done
	}()

	seen := map[string]bool{}
	for len(seen) < want {
		select {
		case wr, ok := <-wch:
			if !ok || wr.Err() != nil {
				b.Fatalf("watch canaries (%d of %d seen): %v", len(seen), want, wr.Err())
			}
			for _, ev := range wr.Events {
				if ev.Type == clientv3.EventTypePut && strings.Contains(string(ev.Kv.Key), "/"+wire.CacheRoot) {
					seen[string(ev.Kv.Key)] = true
				}
			}
		case <-ctx.Done():
			synced := 0
			for _, st := range m.Status() {
				if st.Synced {
					synced++
				}
			}
			b.Fatalf("%d of %d canaries after %v (%d clusters synced)", len(seen), want, time.Since(start), synced)
		}
	}
	elapsed := time.Since(start)
	b.StopTimer()
	heap1, rss1 := memory()
	for _, st := range m.Status() {
		restarts += st.Sessions - 1
	}
	return elapsed, heap1 - heap0, rss1 - rss0, restarts
}

// memory returns the Go heap in use after a GC and the process RSS, in MB.
func memory() (heapMB, rssMB float64) {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return float64(ms.HeapInuse) / (1 << 20), float64(rssKB()) / 1024
}

// rssKB reads VmRSS from /proc/self/status (0 if unavailable).
func rssKB() int64 {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			n, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return n
		}
	}
	return 0
}
