// Package boundary holds the test that keeps the architecture's import rules:
// the control plane never reaches BPF or netlink, the datapath never reaches
// Kubernetes or etcd, the Kind manifests renderer never drags in the etcd
// server, the node agent links no etcd server nor the mesh-apiserver a
// datapath, and the scenario engine never reaches the simulator. The rules are
// checked on the real import graph (go list -deps), so an indirect import
// through a third package breaks them too.
package boundary

import (
	"bytes"
	"os/exec"
	"slices"
	"strings"
	"testing"
)

const module = "github.com/meshbed/meshbed/"

// rules: packages matching pattern must not depend on any package whose
// import path starts with one of forbidden.
var rules = []struct {
	pattern   string
	forbidden []string
	allowed   []string // exceptions to forbidden, by exact import path
	why       string
}{
	{"./mesh/...", []string{"github.com/cilium/ebpf", "github.com/vishvananda/netlink", "github.com/vishvananda/netns", module + "datapath"},
		[]string{module + "datapath/state", module + "datapath/monitor"},
		"the control plane hands desired state to the datapath through datapath/state and reads its flow events through datapath/monitor only"},
	{"./datapath/...", []string{"k8s.io/", "go.etcd.io/", module + "mesh/"}, nil,
		"the datapath knows nothing of Kubernetes or the kvstore"},
	{"./kind/...", []string{"go.etcd.io/etcd/server/"}, nil,
		"rendering manifests must not link an etcd server"},
	{"./cmd/meshbed-agent", []string{"go.etcd.io/etcd/server/"}, nil,
		"the node agent reads the kvstore; it links no etcd server"},
	{"./cmd/meshbed-apiserver", []string{"github.com/cilium/ebpf", "github.com/vishvananda/netlink", module + "datapath"},
		[]string{module + "datapath/state", module + "datapath/monitor"},
		"the mesh-apiserver programs no datapath"},
	{"./scenarios/...", []string{module + "sim"}, nil,
		"the engine drives a Target; internal/run and sim/control wire the simulator in"},
}

func TestImportBoundaries(t *testing.T) {
	if _, err := exec.LookPath("go"); err != nil {
		t.Skip("go command not found: the import graph cannot be read")
	}
	for _, r := range rules {
		t.Run(r.pattern, func(t *testing.T) {
			for _, f := range r.forbidden {
				var bad []string
				for _, d := range goList(t, r.pattern) {
					if strings.HasPrefix(d, f) && !slices.Contains(r.allowed, d) {
						bad = append(bad, d)
					}
				}
				if len(bad) > 0 {
					t.Errorf("%s depends on %d packages under %s (first %s): %s; find the path with `go mod why -m` or `go list -deps`",
						r.pattern, len(bad), f, bad[0], r.why)
				}
			}
		})
	}
}

// goList returns every package pattern depends on, test-only imports
// excluded (tests may use what they like to set up their environment).
func goList(t *testing.T, pattern string) []string {
	t.Helper()
	cmd := exec.Command("go", "list", "-deps", pattern)
	cmd.Dir = "../.."
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list -deps %s: %v\n%s", pattern, err, stderr.String())
	}
	return strings.Fields(string(out))
}
