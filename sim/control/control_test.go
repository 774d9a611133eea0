package control

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/meshbed/meshbed/internal/testenv"
	"github.com/meshbed/meshbed/scenarios"
	"github.com/meshbed/meshbed/scenarios/engine"
	simtarget "github.com/meshbed/meshbed/sim/target"
)

// controlScenario is a one-cluster mesh with a client and a service.
const controlScenario = `apiVersion: meshbed.io/v1alpha1
kind: Scenario
metadata: {name: control}
spec:
  topology:
    clusters: [{name: cluster1, id: 1}]
  manifests:
    - clusters: [cluster1]
      file: %s/rebel-base.yaml
    - clusters: [cluster1]
      file: %s/x-wing.yaml
  steps:
    - wait: 1s
`

// TestIntegrationControlSocket drives a running simulated mesh through its
// control socket as `meshbed sim` does: a step, then every read.
func TestIntegrationControlSocket(t *testing.T) {
	testenv.Privileged(t)
	manifests, err := filepath.Abs("../../scenarios/manifests")
	if err != nil {
		t.Fatal(err)
	}
	raw := []byte(fmt.Sprintf(controlScenario, manifests, manifests))
	file := filepath.Join(t.TempDir(), "control.yaml")
	if err := os.WriteFile(file, raw, 0o644); err != nil {
		t.Fatal(err)
	}
	sc, err := scenarios.Load(file)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	tgt := simtarget.New(simtarget.Options{Logger: slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelWarn}))})
	s, err := engine.Start(ctx, sc, tgt, engine.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	name := fmt.Sprintf("test-%d", os.Getpid())
	ln, err := Listen(name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Remove(SocketPath(name)) })
	srv := &http.Server{Handler: NewServer(file, raw, s, tgt.Mesh()), ReadHeaderTimeout: 5 * time.Second}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	if _, err := Listen(name); err == nil || !strings.Contains(err.Error(), "already running") {
		t.Errorf("a second mesh of the same name: %v, want it refused", err)
	}

	c := NewClient(name)
	rep, err := c.Step(ctx, map[string]any{"curl": map[string]any{"from": "cluster1/x-wing", "url": "http://rebel-base", "count": 5}})
	if err != nil {
		t.Fatal(err)
	}
	if !rep.Passed || rep.Responses["cluster1"] != 5 {
		t.Errorf("curl step: passed %v, responses %v, message %q", rep.Passed, rep.Responses, rep.Message)
	}
	var refused *RequestError
	if _, err := c.Step(ctx, map[string]any{"curl": map[string]any{"from": "cluster9/x-wing", "url": "http://rebel-base"}}); !errors.As(err, &refused) {
		t.Errorf("step from an unknown cluster: %v, want the mesh to refuse it", err)
	}
	entries, err := c.LB(ctx, "cluster1", "")
	if err != nil || len(entries) == 0 {
		t.Errorf("LB: %d entries, %v", len(entries), err)
	}
	v, _, err := c.ClusterMesh(ctx, "cluster1")
	if err != nil || v.Cluster != "cluster1" || v.Running == 0 {
		t.Errorf("ClusterMesh: %+v, %v", v, err)
	}
	for _, path := range []string{"/status", "/metrics"} {
		if body, err := c.Get(ctx, path, nil); err != nil || len(body) == 0 {
			t.Errorf("%s: %d bytes, %v", path, len(body), err)
		}
	}
	if body, err := c.Get(ctx, "/kvstore", url.Values{"cluster": {"cluster1"}, "key": {"cilium/cluster-config/cluster1"}}); err != nil || !strings.Contains(string(body), `\"id\":1`) {
		t.Errorf("kvstore: %s, %v", body, err)
	}
	var notRunning *NotRunningError
	if _, err := NewClient(name+"-none").Get(ctx, "/status", nil); !errors.As(err, &notRunning) {
		t.Errorf("a mesh that does not run: %v", err)
	}
}
