package sim

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/meshbed/meshbed/internal/testenv"
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
// One iteration is a whole mesh; run it with -benchtime=1x.
func BenchmarkBringUp16x3(b *testing.B) {
	testenv.Privileged(b)
	if testing.Short() {
		b.Skip("builds a 16-cluster mesh (≈20 s or more)")
	}
	const clusters, nodes = 16, 3
	var all []uint32
	for i := 1; i <= clusters; i++ {
		all = append(all, uint32(i))
	}
	var bringUp, converge time.Duration
	var rss, slab, kernel, losses float64
	for b.Loop() {
		before, err := readMeminfo()
		if err != nil {
			b.Fatal(err)
		}
		spec := meshSpec(clusters, nodes)
		lost := &countingHandler{Handler: testLogger(b).Handler(), msg: "Remote cluster lost", n: new(atomic.Int64), reasons: &reasonCounts{}}
		spec.Logger = slog.New(lost)
		t0 := time.Now()
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

		status, err := readProcStatus()
		if err != nil {
			b.Fatal(err)
		}
		after, err := readMeminfo()
		if err != nil {
			b.Fatal(err)
		}
		rss += status["VmRSS"]
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
		b.Logf("built %v, settled %v, converged %v, %d remote-cluster losses %v; VmRSS %.0f MB, slab +%.0f MB, kernel +%.0f MB; answers %v",
			built.Round(time.Millisecond), took.Round(time.Millisecond), conv.Round(time.Millisecond), lost.n.Load(), lost.reasons,
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
