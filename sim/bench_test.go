package sim

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"runtime/metrics"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/meshbed/meshbed/internal/testenv"
	"github.com/meshbed/meshbed/mesh/kvstore"
)

// BenchmarkBringUp16x3 builds 16 clusters of 3 nodes, each running the
// global rebel-base service (2 replicas) and an x-wing client, from nothing
// to settled: every pod ready, every agent synced with the 15 other
// clusters, the datapaths quiet. It reports the bring-up time (goal ≤ 30 s);
// the time until every node holds backends from all 16 clusters; how often
// a remote cluster was reported lost on the way (a healthy bring-up loses
// none); and memory: the process's resident set once settled and at its
// peak (goal ≤ 4 GB), and the kernel memory the mesh added (slab, and slab
// with kernel stacks, per-CPU and page tables), measured machine-wide and
// so only an estimate when other work runs alongside.
//
// After that, outside the timing, it cuts the last cluster off (both
// planes) and measures how long each other cluster takes until none of its
// nodes holds the lost cluster's backends: the detection time of a real
// partition at this scale (p50 and max over the clusters; the goal is the
// health bound, 2.5 s by default, plus the datapath's update).
//
// One iteration is a whole mesh; run it with -benchtime=1x.
func BenchmarkBringUp16x3(b *testing.B) { benchBringUp(b, 16, 3) }

// BenchmarkBringUp64x3 is BenchmarkBringUp16x3 at 64 clusters.
func BenchmarkBringUp64x3(b *testing.B) { benchBringUp(b, 64, 3) }

func benchBringUp(b *testing.B, clusters, nodes int) {
	testenv.Privileged(b)
	if testing.Short() {
		b.Skipf("builds a %d-cluster mesh (≈20 s or more)", clusters)
	}
	var all []uint32
	for i := 1; i <= clusters; i++ {
		all = append(all, uint32(i))
	}
	var bringUp, converge time.Duration
	var rss, slab, kernel, losses float64
	var detect []time.Duration
	for b.Loop() {
		before, err := readMeminfo()
		if err != nil {
			b.Fatal(err)
		}
		spec := meshSpec(clusters, nodes)
		lost := &countingHandler{Handler: testLogger(b).Handler(), msg: "Remote cluster lost", n: new(atomic.Int64), reasons: &reasonCounts{}}
		spec.Logger = slog.New(lost)
		t0 := time.Now()
		// How much of the run this process itself spent unable to run, as
		// the loss detector's watchdog sees it, and its goroutines'
		// scheduling latencies: what a starved bring-up looks like.
		wd := kvstore.NewWatchdog(kvstore.WatchdogConfig{Horizon: time.Hour})
		releaseWD := wd.Acquire()
		sched0 := readSchedLatencies()
		b.Cleanup(func() {
			end := time.Now()
			b.Logf("process stalled %v of %v (watchdog); goroutine scheduling latency %s; %d remote-cluster losses %v",
				wd.Stalled(t0, end).Round(time.Millisecond), end.Sub(t0).Round(time.Millisecond), schedLatencySince(sched0),
				lost.n.Load(), lost.reasons)
			releaseWD()
		})
		m, closeMesh := startMesh(b, spec)
		built := time.Since(t0)
		deploy(b, m, echoManifest)
		took := time.Since(t0)
		bringUp += took
		// Settled means every agent synced once and went quiet, which a
		// flapping remote cluster does not prevent: converged is when
		// every node of every cluster holds backends from all clusters.
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		for {
			var errs []error
			for _, c := range m.Clusters() {
				errs = append(errs, backendsFrom(ctx, c, all...))
			}
			err := errors.Join(errs...)
			if err == nil {
				break
			}
			if ctx.Err() != nil {
				b.Fatalf("not converged %v after the start (settled after %v; %d remote-cluster losses): %v",
					time.Since(t0).Round(time.Millisecond), took.Round(time.Millisecond), lost.n.Load(), err)
			}
			time.Sleep(100 * time.Millisecond)
		}
		cancel()
		conv := time.Since(t0)
		converge += conv
		losses += float64(lost.n.Load())
		// The losses of the bring-up alone, by reason: the cut below adds
		// real ones.
		bringUpLosses := fmt.Sprintf("%d %v", lost.n.Load(), lost.reasons)

		status, err := readProcStatus()
		if err != nil {
			b.Fatal(err)
		}
		after, err := readMeminfo()
		if err != nil {
			b.Fatal(err)
		}
		rss += status["VmRSS"]
		if census, n := fdCensus(); n > 0 {
			b.Logf("open file descriptors: %d %v", n, census)
		}
		slab += after["Slab"] - before["Slab"]
		kernel += kernelMemory(after) - kernelMemory(before)

		// Outside the timing: the mesh is whole. Every node of the first
		// and the last cluster has backends from all clusters, and the
		// first cluster's client gets answers.
		b.StopTimer()
		ctx, cancel = context.WithTimeout(context.Background(), time.Minute)
		for _, name := range []string{"cluster1", fmt.Sprintf("cluster%d", clusters)} {
			c, _ := m.Cluster(name)
			if err := backendsFrom(ctx, c, all...); err != nil {
				b.Fatal(err)
			}
		}
		c1, _ := m.Cluster("cluster1")
		got, _, err := curlService(ctx, c1, 64, time.Second)
		if err != nil {
			b.Fatal(err)
		}
		if len(got) < clusters/2 {
			b.Fatalf("64 requests from cluster1 were answered by %d clusters only: %v", len(got), got)
		}
		cancel()
		detect = append(detect, detectPartition(b, m, clusters)...)
		b.Logf("built %v, settled %v, converged %v, remote-cluster losses %s in the bring-up; VmRSS %.0f MB, slab +%.0f MB, kernel +%.0f MB; answers %v",
			built.Round(time.Millisecond), took.Round(time.Millisecond), conv.Round(time.Millisecond), bringUpLosses,
			status["VmRSS"], after["Slab"]-before["Slab"], kernelMemory(after)-kernelMemory(before), got)
		if err := closeMesh(); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
	n := float64(b.N)
	b.ReportMetric(bringUp.Seconds()/n, "bringup-s")
	b.ReportMetric(converge.Seconds()/n, "converged-s")
	b.ReportMetric(losses/n, "remote-losses")
	b.ReportMetric(rss/n, "rss-MB")
	if status, err := readProcStatus(); err == nil {
		b.ReportMetric(status["VmHWM"], "peak-rss-MB")
	}
	b.ReportMetric(slab/n, "slab-MB")
	b.ReportMetric(kernel/n, "kernel-MB")
	slices.Sort(detect)
	if len(detect) > 0 {
		b.ReportMetric(detect[len(detect)/2].Seconds(), "detect-p50-s")
		b.ReportMetric(detect[len(detect)-1].Seconds(), "detect-max-s")
	}
}

// detectPartition cuts the last of the mesh's clusters off from the others
// and returns, for each other cluster, how long until none of its nodes
// holds the last cluster's rebel-base backends; then it heals the cut and
// waits until every cluster has them again.
func detectPartition(b *testing.B, m *Mesh, clusters int) []time.Duration {
	b.Helper()
	last := fmt.Sprintf("cluster%d", clusters)
	var rest []Member
	var all, others []uint32
	for i := 1; i <= clusters; i++ {
		all = append(all, uint32(i))
		if i < clusters {
			rest = append(rest, Member{Cluster: fmt.Sprintf("cluster%d", i)})
			others = append(others, uint32(i))
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	t0 := time.Now()
	if err := m.Partition([][]Member{{{Cluster: last}}, rest}, PlaneBoth, false); err != nil {
		b.Fatal(err)
	}
	took := map[string]time.Duration{}
	for len(took) < clusters-1 {
		for _, c := range m.Clusters() {
			if _, done := took[c.Name()]; done || c.Name() == last {
				continue
			}
			if backendsFrom(ctx, c, others...) == nil {
				took[c.Name()] = time.Since(t0)
			}
		}
		if ctx.Err() != nil {
			b.Fatalf("%d of %d clusters withdrew %s's backends within %v", len(took), clusters-1, last, time.Since(t0).Round(time.Millisecond))
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := m.Heal(); err != nil {
		b.Fatal(err)
	}
	for _, c := range m.Clusters() {
		if err := eventuallyBackends(ctx, c, all...); err != nil {
			b.Fatalf("after the heal: %v", err)
		}
	}
	return slices.Collect(maps.Values(took))
}

// eventuallyBackends waits until every node of c has backends from ids.
func eventuallyBackends(ctx context.Context, c *Cluster, ids ...uint32) error {
	for {
		err := backendsFrom(ctx, c, ids...)
		if err == nil || ctx.Err() != nil {
			return err
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func readSchedLatencies() *metrics.Float64Histogram {
	s := []metrics.Sample{{Name: "/sched/latencies:seconds"}}
	metrics.Read(s)
	if s[0].Value.Kind() != metrics.KindFloat64Histogram {
		return nil
	}
	return s[0].Value.Float64Histogram()
}

// schedLatencySince summarizes the scheduling latencies recorded since
// before (p50, p90, p99: the upper bounds of their buckets).
func schedLatencySince(before *metrics.Float64Histogram) string {
	now := readSchedLatencies()
	if before == nil || now == nil {
		return "unknown"
	}
	var total uint64
	delta := make([]uint64, len(now.Counts))
	for i := range now.Counts {
		delta[i] = now.Counts[i] - before.Counts[i]
		total += delta[i]
	}
	q := func(p float64) time.Duration {
		rank := uint64(p * float64(total))
		var seen uint64
		for i, c := range delta {
			seen += c
			if seen > rank {
				return time.Duration(now.Buckets[i+1] * float64(time.Second))
			}
		}
		return 0
	}
	return fmt.Sprintf("p50 %v, p90 %v, p99 %v over %d", q(0.5), q(0.9), q(0.99), total)
}

// countingHandler counts log records with one message: how often
// something happened during a run, without parsing the logs.
type countingHandler struct {
	slog.Handler
	msg string
	n   *atomic.Int64
	// reasons, when set, counts the records by their "reason" attribute
	// (up to its first colon): which detector reported the losses.
	reasons *reasonCounts
}

type reasonCounts struct {
	mu sync.Mutex
	m  map[string]int
}

func (rc *reasonCounts) String() string {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	keys := make([]string, 0, len(rc.m))
	for k := range rc.m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var parts []string
	for _, k := range keys {
		parts = append(parts, fmt.Sprintf("%q: %d", k, rc.m[k]))
	}
	return "{" + strings.Join(parts, ", ") + "}"
}

func (h *countingHandler) Handle(ctx context.Context, r slog.Record) error {
	if r.Message == h.msg {
		h.n.Add(1)
		if h.reasons != nil {
			reason := "(none)"
			r.Attrs(func(a slog.Attr) bool {
				if a.Key == "reason" {
					reason, _, _ = strings.Cut(a.Value.String(), ":")
					return false
				}
				return true
			})
			h.reasons.mu.Lock()
			if h.reasons.m == nil {
				h.reasons.m = map[string]int{}
			}
			h.reasons.m[reason]++
			h.reasons.mu.Unlock()
		}
	}
	return h.Handler.Handle(ctx, r)
}

func (h *countingHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return &countingHandler{Handler: h.Handler.WithAttrs(as), msg: h.msg, n: h.n, reasons: h.reasons}
}

func (h *countingHandler) WithGroup(name string) slog.Handler {
	return &countingHandler{Handler: h.Handler.WithGroup(name), msg: h.msg, n: h.n, reasons: h.reasons}
}

// kernelMemory is the kernel's own memory in /proc/meminfo that a mesh
// grows: slab (namespaces, devices, sockets, conntrack), kernel stacks,
// per-CPU allocations and page tables. BPF maps are charged elsewhere
// (vmalloc), which meminfo does not break out.
func kernelMemory(mi map[string]float64) float64 {
	return mi["Slab"] + mi["KernelStack"] + mi["Percpu"] + mi["PageTables"]
}

// readMeminfo returns /proc/meminfo in MB.
func readMeminfo() (map[string]float64, error) { return readKB("/proc/meminfo") }

// readProcStatus returns the memory fields of /proc/self/status in MB.
func readProcStatus() (map[string]float64, error) { return readKB("/proc/self/status") }

// readKB reads the "Name: N kB" lines of a proc file, in MB.
func readKB(path string) (map[string]float64, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	out := map[string]float64{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		num, unit, _ := strings.Cut(strings.TrimSpace(v), " ")
		if unit != "kB" {
			continue
		}
		kb, err := strconv.ParseFloat(num, 64)
		if err != nil {
			return nil, fmt.Errorf("%s: %s: %w", path, k, err)
		}
		out[k] = kb / 1024
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	return out, nil
}

// fdCensus counts this process's open file descriptors by kind: sockets,
// BPF maps, programs and links, other anonymous inodes, files.
func fdCensus() (map[string]int, int) {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return nil, 0
	}
	out := map[string]int{}
	for _, e := range ents {
		target, err := os.Readlink("/proc/self/fd/" + e.Name())
		if err != nil {
			continue
		}
		kind := "file"
		switch {
		case strings.HasPrefix(target, "socket:"):
			kind = "socket"
		case strings.HasPrefix(target, "anon_inode:"):
			kind = strings.TrimPrefix(target, "anon_inode:")
		case strings.HasPrefix(target, "pipe:"):
			kind = "pipe"
		case strings.HasPrefix(target, "net:"):
			kind = "netns"
		case strings.HasPrefix(target, "/dev/"):
			kind = target
		}
		out[kind]++
	}
	return out, len(ents)
}
