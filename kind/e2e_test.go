package kind

import (
	"os"
	"path/filepath"
	"regexp"
	"testing"
)

// TestE2EScriptAndWorkflow keeps `make e2e`, which only runs where Docker
// is, consistent with the repository: the Makefile delegates to
// hack/e2e.sh, the script runs the harness kind/e2e, and the workflow runs
// the same `make e2e` with a stock node image named once, of the Kubernetes
// version the offline image is built at.
func TestE2EScriptAndWorkflow(t *testing.T) {
	read := func(p string) string {
		b, err := os.ReadFile(filepath.Join("..", p))
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	makefile, script, workflow := read("Makefile"), read("hack/e2e.sh"), read(".github/workflows/e2e.yaml")
	if !regexp.MustCompile(`(?m)^e2e:\n\thack/e2e\.sh`).MatchString(makefile) {
		t.Error("Makefile has no e2e target running hack/e2e.sh")
	}
	for _, want := range []string{"hack/docker.sh start", "hack/kind-node-image.sh", "-tags e2e", "./kind/e2e/"} {
		if !regexp.MustCompile(regexp.QuoteMeta(want)).MatchString(script) {
			t.Errorf("hack/e2e.sh does not run %s", want)
		}
	}
	if _, err := os.Stat(filepath.Join("e2e", "e2e_test.go")); err != nil {
		t.Error(err)
	}
	m := regexp.MustCompile(`(?m)^\s+KIND_NODE_IMAGE: kindest/node:(v[0-9.]+)\s*$`).FindStringSubmatch(workflow)
	if m == nil {
		t.Fatal("workflow does not name the node image in KIND_NODE_IMAGE")
	}
	def := regexp.MustCompile(`K8S_VERSION:-(v[0-9.]+)`).FindStringSubmatch(read("hack/kind-node-image.sh"))
	if def == nil || def[1] != m[1] {
		t.Errorf("workflow uses kindest/node:%s, the offline image is built at %v", m[1], def)
	}
	for _, step := range []string{"NODE_IMAGE: ${{ env.KIND_NODE_IMAGE }}", "make e2e", ".ci/run"} {
		if !regexp.MustCompile(regexp.QuoteMeta(step)).MatchString(workflow) {
			t.Errorf("workflow does not run %s", step)
		}
	}
}
