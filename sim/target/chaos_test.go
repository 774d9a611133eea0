package target_test

import (
	"bytes"
	"context"
	"log/slog"
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

func newTarget() engine.Target {
	return simtarget.New(simtarget.Options{Logger: slog.New(slog.DiscardHandler)})
}

// TestChaosBrokenPromise: a chaos step whose promise cannot hold fails,
// its schedule shrinks to a repro.yaml of a handful of steps, and running
// that file fails the same way. It takes two to four minutes, so it runs
// only with MESHBED_CHAOS=1 (make chaos-test).
func TestChaosBrokenPromise(t *testing.T) {
	if os.Getenv("MESHBED_CHAOS") == "" {
		t.Skip("takes minutes: set MESHBED_CHAOS=1 to run")
	}
	testenv.Privileged(t)
	sc, err := scenarios.Load("testdata/chaos-broken.yaml")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	var progress bytes.Buffer
	rep, err := engine.Run(ctx, sc, newTarget(), engine.Options{Progress: &progress,
		NewTarget: newTarget, ShrinkBudget: 3 * time.Minute})
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
	again, err := engine.Run(ctx, repro, newTarget(), engine.Options{Progress: &progress})
	t.Logf("repro progress:\n%s", progress.String())
	if err != nil {
		t.Fatal(err)
	}
	if again.Passed {
		t.Fatal("repro.yaml passed")
	}
	for _, st := range again.Steps {
		if !st.Passed && (st.Action != "stopTraffic" || !strings.Contains(st.Message, "max outage")) {
			t.Errorf("repro.yaml failed another way: step %s (%s): %s", st.Name, st.Action, st.Message)
		}
	}
	last := again.Steps[len(again.Steps)-1]
	if last.Passed {
		t.Errorf("repro.yaml's stopTraffic passed: max outage %.2fs", last.MaxOutageSeconds)
	}
}
