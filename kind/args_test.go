package kind

import (
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
)

// TestIntegrationArgsAcceptedByBinaries builds the image's binaries and runs
// every command line of the manifests (containers, init container, probe)
// with --help added: the flag parser rejects an unknown or malformed flag
// even then, so a manifest can never ship a flag the binary does not have.
func TestIntegrationArgsAcceptedByBinaries(t *testing.T) {
	if testing.Short() {
		t.Skip("builds three binaries")
	}
	bin := t.TempDir()
	out, err := exec.Command("go", "build", "-o", bin+"/", "../cmd/meshbed-agent", "../cmd/meshbed-apiserver", "../cmd/meshbed-cni").CombinedOutput()
	if err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	objs := mustObjects(t, Values{ClusterName: "cluster1", ClusterID: 1, LogLevel: "debug"})
	var ds appsv1.DaemonSet
	decodeStrict(t, find(t, objs, "DaemonSet", AgentName), &ds)
	var dep appsv1.Deployment
	decodeStrict(t, find(t, objs, "Deployment", APIServerName), &dep)
	var lines [][]string
	for _, c := range append(append(ds.Spec.Template.Spec.InitContainers, ds.Spec.Template.Spec.Containers...), dep.Spec.Template.Spec.Containers...) {
		lines = append(lines, append(append([]string{}, c.Command...), c.Args...))
		if p := c.ReadinessProbe; p != nil && p.Exec != nil {
			lines = append(lines, p.Exec.Command)
		}
	}
	if len(lines) != 4 {
		t.Fatalf("%d command lines, want 4 (install-cni, agent, agent probe, apiserver)", len(lines))
	}
	// What the kubelet substitutes.
	env := strings.NewReplacer("$(NODE_NAME)", "cluster1-worker", "$(HOST_IP)", "172.18.0.3")
	for _, line := range lines {
		t.Run(filepath.Base(line[0])+" "+line[1], func(t *testing.T) {
			if !strings.HasPrefix(line[0], "/usr/local/bin/") {
				t.Fatalf("command %s is not in the image's /usr/local/bin", line[0])
			}
			args := []string{}
			for _, a := range line[1:] {
				args = append(args, env.Replace(a))
			}
			cmd := exec.Command(filepath.Join(bin, filepath.Base(line[0])), append(args, "--help")...)
			cmd.Env = []string{} // no CNI_COMMAND: meshbed-cni runs its helpers
			if out, err := cmd.CombinedOutput(); err != nil {
				t.Errorf("%q rejected: %v\n%s", line, err, out)
			}
		})
	}
}
