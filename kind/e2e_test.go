package kind

import (
	"os"
	"path/filepath"
	"regexp"
	"testing"
)

// TestE2EScriptAndWorkflow keeps the e2e script and the workflow, which
// only run where Docker is, consistent with the repository: the files the
// script uses exist, and the workflow installs the kind that go.mod pins
// (the one whose config types TestKindConfigs decodes with).
func TestE2EScriptAndWorkflow(t *testing.T) {
	script, err := os.ReadFile("e2e.sh")
	if err != nil {
		t.Fatal(err)
	}
	paths := regexp.MustCompile(`(?:kind|scenarios)/[A-Za-z0-9_./-]+\.(?:yaml|sh)|kind/image/Dockerfile`).FindAllString(string(script), -1)
	if len(paths) < 4 {
		t.Fatalf("e2e.sh names only %v", paths)
	}
	for _, p := range paths {
		if _, err := os.Stat(filepath.Join("..", p)); err != nil {
			t.Errorf("e2e.sh uses %s: %v", p, err)
		}
	}
	workflow, err := os.ReadFile(filepath.Join("..", ".github", "workflows", "e2e.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	gomod, err := os.ReadFile(filepath.Join("..", "go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	want := regexp.MustCompile(`sigs\.k8s\.io/kind (v[0-9.]+)`).FindSubmatch(gomod)
	got := regexp.MustCompile(`go install sigs\.k8s\.io/kind@(v[0-9.]+)`).FindSubmatch(workflow)
	if want == nil || got == nil || string(got[1]) != string(want[1]) {
		t.Errorf("workflow installs kind %q, go.mod has %q", got, want)
	}
	for _, step := range []string{"kind/e2e.sh up", "kind/e2e.sh demo", "kind/e2e.sh check", "kind/e2e.sh dump", ".ci/run"} {
		if !regexp.MustCompile(regexp.QuoteMeta(step)).Match(workflow) {
			t.Errorf("workflow does not run %s", step)
		}
	}
}
