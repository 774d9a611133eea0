package target_test

import (
	"log/slog"
	"os"
	"testing"
	"time"

	"github.com/meshbed/meshbed/internal/testenv"
	"github.com/meshbed/meshbed/scenarios/engine"
	"github.com/meshbed/meshbed/scenarios/engine/enginetest"
	simtarget "github.com/meshbed/meshbed/sim/target"
)

func newTarget() engine.Target {
	return simtarget.New(simtarget.Options{Logger: slog.New(slog.DiscardHandler)})
}

// TestChaosBrokenPromise: a chaos step whose promise cannot hold fails,
// its schedule shrinks to a repro.yaml of a handful of steps, and running
// that file fails the same way (enginetest.BrokenPromise). It takes two to
// four minutes, so it runs only with MESHBED_CHAOS=1 (make chaos-test).
func TestChaosBrokenPromise(t *testing.T) {
	if os.Getenv("MESHBED_CHAOS") == "" {
		t.Skip("takes minutes: set MESHBED_CHAOS=1 to run")
	}
	testenv.Privileged(t)
	enginetest.BrokenPromise(t, newTarget, engine.Options{}, 3*time.Minute)
}
