// Package enginetest holds checks of the scenario engine that every target
// must pass, written once and run by each target's tests.
package enginetest

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/meshbed/meshbed/scenarios"
	"github.com/meshbed/meshbed/scenarios/engine"
)

// BrokenPromiseFile is the scenario file of BrokenPromise: cluster1's
// clients have only cluster2's backends, and apiservers stop for longer
// than the chaos step's maxOutage.
func BrokenPromiseFile() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "testdata", "chaos-broken.yaml")
}

// BrokenPromise runs a chaos step whose promise cannot hold on the targets
// newTarget makes: the step must fail on an outage, its schedule must
// shrink (each replay on a fresh target) to a repro.yaml of a handful of
// steps, and running that repro.yaml must fail the same way. opts is the
// target's engine options (SettleTimeout); Progress, NewTarget and
// ShrinkBudget are set here.
func BrokenPromise(t *testing.T, newTarget func() engine.Target, opts engine.Options, shrinkBudget time.Duration) {
	t.Helper()
	sc, err := scenarios.Load(BrokenPromiseFile())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), shrinkBudget+10*time.Minute)
	defer cancel()
	var progress bytes.Buffer
	run := opts
	run.Progress, run.NewTarget, run.ShrinkBudget = &progress, newTarget, shrinkBudget
	rep, err := engine.Run(ctx, sc, newTarget(), run)
	t.Logf("progress:\n%s", progress.String())
	if err != nil {
		t.Fatal(err)
	}
	if rep.Passed {
		t.Fatal("the broken promise passed")
	}
	chaos := rep.Steps[2]
	if chaos.Passed || chaos.Chaos == nil || !strings.Contains(chaos.Message, "outage") {
		t.Fatalf("chaos step: passed=%t message %q", chaos.Passed, chaos.Message)
	}
	shrunk := chaos.Chaos.Shrink
	if shrunk == nil || rep.Repro == nil {
		t.Fatalf("no repro: %+v", shrunk)
	}
	t.Logf("shrink: %+v", *shrunk)
	if shrunk.FaultsAfter < 1 || shrunk.FaultsAfter > shrunk.FaultsBefore || shrunk.Steps > 8 {
		t.Errorf("shrunk to %d faults, %d steps (from %d faults)", shrunk.FaultsAfter, shrunk.Steps, shrunk.FaultsBefore)
	}
	file := filepath.Join(t.TempDir(), "repro.yaml")
	if err := os.WriteFile(file, rep.Repro, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("repro.yaml:\n%s", rep.Repro)
	repro, err := scenarios.Load(file)
	if err != nil {
		t.Fatalf("repro.yaml does not load: %v", err)
	}
	progress.Reset()
	again := opts
	again.Progress = &progress
	rerun, err := engine.Run(ctx, repro, newTarget(), again)
	t.Logf("repro progress:\n%s", progress.String())
	if err != nil {
		t.Fatal(err)
	}
	if rerun.Passed {
		t.Fatal("repro.yaml passed")
	}
	for _, st := range rerun.Steps {
		if !st.Passed && (st.Action != "stopTraffic" || !strings.Contains(st.Message, "max outage")) {
			t.Errorf("repro.yaml failed another way: step %s (%s): %s", st.Name, st.Action, st.Message)
		}
	}
	last := rerun.Steps[len(rerun.Steps)-1]
	if last.Passed {
		t.Errorf("repro.yaml's stopTraffic passed: max outage %.2fs", last.MaxOutageSeconds)
	}
}
