package target_test

import (
	"log/slog"
	"os"
	"strings"
	"testing"
	"time"

	kindtarget "github.com/meshbed/meshbed/kind/target"
	"github.com/meshbed/meshbed/scenarios/engine"
	"github.com/meshbed/meshbed/scenarios/engine/enginetest"
)

// TestChaosBrokenPromise is the simulator's broken-promise check on Kind
// clusters where meshbed is installed and connected: the chaos step fails,
// shrinks to repro.yaml (every replay on the same clusters, reset by a
// fresh target), and repro.yaml fails too. It takes several minutes, so it
// runs only with MESHBED_CHAOS=1 and the clusters named as the Ginkgo
// suite names them: MESHBED_KIND_CONTEXTS=cluster1=kind-c1,cluster2=kind-c2,
// MESHBED_CA_DIR, DEMO_IMAGE and, optionally, MESHBED_KUBECONFIG.
func TestChaosBrokenPromise(t *testing.T) {
	pairs := os.Getenv("MESHBED_KIND_CONTEXTS")
	if os.Getenv("MESHBED_CHAOS") == "" || pairs == "" {
		t.Skip("takes minutes on running Kind clusters: set MESHBED_CHAOS=1 and MESHBED_KIND_CONTEXTS to run")
	}
	contexts, err := kindtarget.ParseContexts(strings.Split(pairs, ","))
	if err != nil {
		t.Fatalf("MESHBED_KIND_CONTEXTS: %v", err)
	}
	opts := kindtarget.Options{
		Kubeconfig: os.Getenv("MESHBED_KUBECONFIG"), Contexts: contexts, CADir: os.Getenv("MESHBED_CA_DIR"),
		DemoImage: os.Getenv("DEMO_IMAGE"), Logger: slog.New(slog.DiscardHandler),
	}
	newTarget := func() engine.Target { return kindtarget.New(opts) }
	enginetest.BrokenPromise(t, newTarget, engine.Options{SettleTimeout: kindtarget.SettleTimeout}, 6*time.Minute)
}
