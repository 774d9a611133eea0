package sim

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	"github.com/meshbed/meshbed/scenarios"
	"github.com/meshbed/meshbed/sim/workload"
)

// echoManifest is the seed demo in one file: rebel-base, a global echo
// service with two backends, and x-wing, an idle client.
const echoManifest = `
apiVersion: v1
kind: Service
metadata:
  name: rebel-base
  annotations:
    service.cilium.io/global: "true"
spec:
  selector: {name: rebel-base}
  ports:
    - {name: http, port: 80, targetPort: 80}
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: rebel-base
spec:
  replicas: 2
  selector:
    matchLabels: {name: rebel-base}
  template:
    metadata:
      labels: {name: rebel-base}
    spec:
      containers:
        - name: rebel-base
          image: docker.io/cilium/json-mock:1.2
          ports:
            - {name: http, containerPort: 80}
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: x-wing
spec:
  replicas: 1
  selector:
    matchLabels: {name: x-wing}
  template:
    metadata:
      labels: {name: x-wing}
    spec:
      containers:
        - name: x-wing
          image: docker.io/curlimages/curl:8.10.1
`

// meshSpec is n clusters of nodes nodes each, with the CIDRs the scenario
// files use (cluster i: pods 10.<10i>.0.0/16, services 10.<10i+1>.0.0/16),
// or beyond 24 clusters, where those run out, the scenario format's
// defaults.
func meshSpec(n, nodes int) Spec {
	s := Spec{KVStoreMesh: true, Seed: 1}
	for i := 1; i <= n; i++ {
		c := ClusterSpec{Name: fmt.Sprintf("cluster%d", i), ID: uint32(i), Nodes: nodes,
			PodCIDR: scenarios.DefaultPodCIDR(i), ServiceCIDR: scenarios.DefaultServiceCIDR(i)}
		if n <= 24 {
			c.PodCIDR = netip.MustParsePrefix(fmt.Sprintf("10.%d.0.0/16", 10*i))
			c.ServiceCIDR = netip.MustParsePrefix(fmt.Sprintf("10.%d.0.0/16", 10*i+1))
		}
		s.Clusters = append(s.Clusters, c)
	}
	return s
}

// logBuffer keeps the mesh components' logs in memory and shows them only
// when the test fails: they are the first thing to read then, and noise
// otherwise. Components that outlive the test still write safely into it.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

const logBufferMax = 1 << 20

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.buf.Len()+len(p) > logBufferMax {
		// Keep the recent half: the end of a failing run explains it.
		tail := append([]byte(nil), l.buf.Bytes()[l.buf.Len()/2:]...)
		l.buf.Reset()
		l.buf.WriteString("[… earlier log lines dropped …]\n")
		l.buf.Write(tail)
	}
	return l.buf.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

// logFileEnv names a file that receives the mesh components' complete
// logs (appended, debug level) instead of the in-memory tail: for a
// failure whose cause scrolled out of the buffer.
const logFileEnv = "MESHBED_SIM_TESTLOG"

func testLogger(tb testing.TB) *slog.Logger {
	if path := os.Getenv(logFileEnv); path != "" {
		f, err := os.OpenFile(path, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o600)
		if err != nil {
			tb.Fatalf("%s: %v", logFileEnv, err)
		}
		// Not closed at cleanup: components still stopping may write.
		tb.Logf("mesh logs go to %s", path)
		return slog.New(slog.NewTextHandler(f, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	lb := &logBuffer{}
	tb.Cleanup(func() {
		if tb.Failed() {
			tb.Logf("mesh logs:\n%s", lb)
		}
	})
	return slog.New(slog.NewTextHandler(lb, &slog.HandlerOptions{Level: slog.LevelInfo}))
}

// startMesh builds a mesh and closes it at cleanup unless the test closed
// it already (through the returned function, which is idempotent).
func startMesh(tb testing.TB, spec Spec) (*Mesh, func() error) {
	tb.Helper()
	if spec.Logger == nil {
		spec.Logger = testLogger(tb)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	m, err := New(ctx, spec)
	if err != nil {
		tb.Fatalf("build mesh: %v", err)
	}
	var once sync.Once
	var closeErr error
	closeMesh := func() error {
		once.Do(func() { closeErr = m.Close() })
		return closeErr
	}
	tb.Cleanup(func() {
		if err := closeMesh(); err != nil {
			tb.Errorf("close mesh: %v", err)
		}
	})
	return m, closeMesh
}

// deploy applies manifest to every cluster of the mesh and waits for the
// mesh to settle.
func deploy(tb testing.TB, m *Mesh, manifest string) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	for _, c := range m.Clusters() {
		if err := m.Apply(ctx, c.Name(), []byte(manifest)); err != nil {
			tb.Fatalf("apply manifest: %v", err)
		}
	}
	if err := m.Settle(ctx); err != nil {
		tb.Fatalf("settle: %v", err)
	}
}

// curlService sends count requests from the first x-wing pod of c to the
// rebel-base service, as resolved by c's DNS, and counts answers per
// cluster and failures.
func curlService(ctx context.Context, c *Cluster, count int, timeout time.Duration) (map[string]int, int, error) {
	client, _, err := c.Client("default", "x-wing", timeout)
	if err != nil {
		return nil, 0, err
	}
	url, err := c.ResolveURL(ctx, "http://rebel-base", "default")
	if err != nil {
		return nil, 0, err
	}
	return curlURL(ctx, client, url, count)
}

func curlURL(ctx context.Context, client *workload.Client, url string, count int) (map[string]int, int, error) {
	got, failed := map[string]int{}, 0
	var lastErr error
	for range count {
		res := client.Get(ctx, url)
		if res.Err != nil {
			failed++
			lastErr = res.Err
			continue
		}
		got[res.Cluster]++
	}
	if failed > 0 {
		return got, failed, fmt.Errorf("%d of %d requests to %s failed, last: %w", failed, count, url, lastErr)
	}
	return got, 0, nil
}

// answeredBy checks that every request succeeded and that exactly the
// clusters want answered.
func answeredBy(got map[string]int, failed int, err error, want ...string) error {
	if err != nil {
		return err
	}
	var clusters []string
	for c := range got {
		clusters = append(clusters, c)
	}
	slices.Sort(clusters)
	slices.Sort(want)
	if !slices.Equal(clusters, want) {
		return fmt.Errorf("answers from %v (%v), want from %v", clusters, got, want)
	}
	return nil
}

// backendsFrom checks that every node of c holds, for default/rebel-base,
// active backends from exactly the clusters with these IDs.
func backendsFrom(ctx context.Context, c *Cluster, ids ...uint32) error {
	slices.Sort(ids)
	for _, n := range c.Nodes() {
		got, err := n.ServiceBackendClusters(ctx, "default", "rebel-base")
		if err != nil {
			return fmt.Errorf("%s/%s: %w", c.Name(), n.Name(), err)
		}
		if !slices.Equal(got, ids) {
			return fmt.Errorf("%s/%s: rebel-base has backends from clusters %v, want %v", c.Name(), n.Name(), got, ids)
		}
	}
	return nil
}

// consistently fails the test if cond ever fails during d: the negative
// counterpart of netnstest.Eventually, for states that must hold for
// longer than the mechanism that would break them needs to act.
func consistently(tb testing.TB, d time.Duration, cond func() error) {
	tb.Helper()
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		if err := cond(); err != nil {
			tb.Fatalf("condition broke after %v of %v: %v", d-time.Until(deadline), d, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// bpfObject is a BPF program, map or link by kernel ID.
type bpfObject struct {
	kind string // "prog", "map", "link"
	id   uint32
}

func (o bpfObject) String() string { return fmt.Sprintf("%s %d", o.kind, o.id) }

// heldBPFObjects lists the BPF objects this process holds a descriptor
// of, read from /proc/self/fd and /proc/self/fdinfo. Unlike a system-wide
// count it is not disturbed by other processes loading programs.
func heldBPFObjects() (map[bpfObject]bool, error) {
	fds, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return nil, err
	}
	held := map[bpfObject]bool{}
	for _, e := range fds {
		target, err := os.Readlink(filepath.Join("/proc/self/fd", e.Name()))
		if err != nil {
			continue // closed meanwhile
		}
		var kind, field string
		switch target {
		case "anon_inode:bpf-prog":
			kind, field = "prog", "prog_id"
		case "anon_inode:bpf-map":
			kind, field = "map", "map_id"
		case "anon_inode:bpf_link":
			kind, field = "link", "link_id"
		default:
			continue
		}
		info, err := os.ReadFile(filepath.Join("/proc/self/fdinfo", e.Name()))
		if err != nil {
			continue // closed meanwhile
		}
		for _, line := range strings.Split(string(info), "\n") {
			k, v, ok := strings.Cut(line, ":")
			if !ok || k != field {
				continue
			}
			id, err := strconv.ParseUint(strings.TrimSpace(v), 10, 32)
			if err != nil {
				return nil, fmt.Errorf("fdinfo of fd %s: %s %q: %w", e.Name(), field, v, err)
			}
			held[bpfObject{kind, uint32(id)}] = true
		}
	}
	return held, nil
}

// bpfObjectExists asks the kernel whether an object with this ID still
// exists anywhere (held by a descriptor, a pin or an attachment). IDs are
// allocated cyclically, so a gone ID is not reused within a test.
func bpfObjectExists(o bpfObject) (bool, error) {
	var err error
	switch o.kind {
	case "prog":
		var p *ebpf.Program
		if p, err = ebpf.NewProgramFromID(ebpf.ProgramID(o.id)); err == nil {
			p.Close()
		}
	case "map":
		var m *ebpf.Map
		if m, err = ebpf.NewMapFromID(ebpf.MapID(o.id)); err == nil {
			m.Close()
		}
	case "link":
		var l link.Link
		if l, err = link.NewFromID(link.ID(o.id)); err == nil {
			l.Close()
		}
	default:
		return false, fmt.Errorf("unknown BPF object kind %q", o.kind)
	}
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, os.ErrNotExist):
		return false, nil
	}
	return false, fmt.Errorf("open %s: %w", o, err)
}
