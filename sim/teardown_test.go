package sim

import (
	"bytes"
	"context"
	"fmt"
	"os"
	goruntime "runtime"
	"runtime/pprof"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/meshbed/meshbed/datapath/netns/netnstest"
	"github.com/meshbed/meshbed/internal/testenv"
)

// goroutineSlack is how many goroutines more than before a closed mesh may
// leave behind, for a process-wide singleton a library might start on first
// use and keep. Measured: none (a 2×2 mesh runs ≈750 goroutines and leaves
// exactly as many as there were before). A leaking mesh leaks far more than
// this: informers, etcd clients and servers come by the dozen per cluster.
const goroutineSlack = 3

// TestIntegrationTeardown builds a whole mesh with a global service, lets it
// converge, closes it, and checks that nothing survives the mesh: no
// namespace, socket, thread or host link (netnstest.CheckLeaks), no BPF
// program, map or link, no temporary directory, no goroutine.
func TestIntegrationTeardown(t *testing.T) {
	testenv.Privileged(t)
	if testing.Short() {
		t.Skip("integration test: builds a whole mesh")
	}
	netnstest.CheckLeaks(t) // first: its cleanup runs last
	tmp := t.TempDir()
	t.Setenv("TMPDIR", tmp) // the mesh's directory goes here

	bpfBefore, err := heldBPFObjects()
	if err != nil {
		t.Fatal(err)
	}
	goroutinesBefore := goruntime.NumGoroutine()
	linksBefore := hostLinks(t)

	m, closeMesh := startMesh(t, meshSpec(2, 2))
	deploy(t, m, echoManifest)

	// The mesh is up and serves the global service from both clusters:
	// the teardown below has something real to tear down.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c1, _ := m.Cluster("cluster1")
	netnstest.Eventually(t, 20*time.Second, func() error {
		got, failed, err := curlService(ctx, c1, 20, time.Second)
		return answeredBy(got, failed, err, "cluster1", "cluster2")
	})

	// What the mesh holds while it runs, to be gone after Close.
	bpfDuring, err := heldBPFObjects()
	if err != nil {
		t.Fatal(err)
	}
	var ours []bpfObject
	kinds := map[string]int{}
	for o := range bpfDuring {
		if !bpfBefore[o] {
			ours = append(ours, o)
			kinds[o.kind]++
		}
	}
	// Four nodes, each with its programs and maps, an overlay link and a
	// link per endpoint: a mesh that shows none loaded nothing.
	if kinds["prog"] == 0 || kinds["map"] == 0 || kinds["link"] == 0 {
		t.Fatalf("the running mesh holds BPF objects %v; want programs, maps and links", kinds)
	}
	// The probe used after Close must see them now, or its "gone" would
	// prove nothing.
	for _, o := range ours {
		if ok, err := bpfObjectExists(o); err != nil || !ok {
			t.Fatalf("BPF %s of the running mesh: exists %v, %v", o, ok, err)
		}
	}
	dirs, err := os.ReadDir(tmp)
	if err != nil {
		t.Fatal(err)
	}
	if len(dirs) != 1 || !strings.HasPrefix(dirs[0].Name(), "meshbed-sim-") {
		t.Fatalf("the running mesh's temporary directory: %v in %s, want one meshbed-sim-*", names(dirs), tmp)
	}
	// The mesh plumbs only inside its namespaces: the host namespace never
	// sees one of its links.
	for l := range hostLinks(t) {
		if !linksBefore[l] && ownLinkName(l) {
			t.Errorf("the running mesh created link %q in the host namespace", l)
		}
	}
	goroutinesDuring := goruntime.NumGoroutine()

	t0 := time.Now()
	if err := closeMesh(); err != nil {
		t.Fatalf("close: %v", err)
	}
	t.Logf("close took %v; the mesh held %d goroutines and BPF objects %v", time.Since(t0).Round(time.Millisecond), goroutinesDuring-goroutinesBefore, kinds)

	// Descriptors are closed synchronously by Close.
	bpfAfter, err := heldBPFObjects()
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range ours {
		if bpfAfter[o] {
			t.Errorf("BPF %s: descriptor still open after Close", o)
		}
	}
	// The kernel frees objects once their last reference goes, which for
	// programs attached in a namespace waits for the namespace's
	// asynchronous cleanup: eventually, nothing of ours may exist at all.
	netnstest.Eventually(t, 10*time.Second, func() error {
		var alive []string
		for _, o := range ours {
			ok, err := bpfObjectExists(o)
			if err != nil {
				return err
			}
			if ok {
				alive = append(alive, o.String())
			}
		}
		if len(alive) > 0 {
			return fmt.Errorf("%d of %d BPF objects of the mesh still exist: %s", len(alive), len(ours), strings.Join(alive, ", "))
		}
		return nil
	})

	if dirs, err := os.ReadDir(tmp); err != nil {
		t.Fatal(err)
	} else if len(dirs) != 0 {
		t.Errorf("temporary files left after Close: %v", names(dirs))
	}

	var last int
	deadline := time.Now().Add(10 * time.Second)
	for {
		last = goruntime.NumGoroutine()
		if last <= goroutinesBefore+goroutineSlack {
			break
		}
		if time.Now().After(deadline) {
			var stacks bytes.Buffer
			_ = pprof.Lookup("goroutine").WriteTo(&stacks, 1)
			t.Fatalf("%d goroutines after Close, %d before the mesh (slack %d):\n%s", last, goroutinesBefore, goroutineSlack, stacks.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Logf("goroutines: %d before, %d while running, %d after Close", goroutinesBefore, goroutinesDuring, last)
}

// hostLinks lists the link names of the process's namespace.
func hostLinks(t *testing.T) map[string]bool {
	t.Helper()
	links, err := netlink.LinkList()
	if err != nil {
		t.Fatalf("list host links: %v", err)
	}
	out := map[string]bool{}
	for _, l := range links {
		out[l.Attrs().Name] = true
	}
	return out
}

// ownLinkName reports whether a link name is one the simulator or the
// datapath gives its interfaces (underlay ports, pod veths, VXLAN, the
// underlay bridge). Other links may come and go in the host namespace
// while the test runs; these may not.
func ownLinkName(name string) bool {
	for _, p := range []string{"mb", "lxc", "meshbed", "vxlan"} {
		if strings.HasPrefix(name, p) {
			return true
		}
	}
	return name == "eth0"
}

func names(es []os.DirEntry) []string {
	var out []string
	for _, e := range es {
		out = append(out, e.Name())
	}
	return out
}
