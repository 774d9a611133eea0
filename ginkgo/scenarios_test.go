package ginkgo

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"

	"github.com/meshbed/meshbed/internal/testenv"
	kindtarget "github.com/meshbed/meshbed/kind/target"
	"github.com/meshbed/meshbed/scenarios"
	"github.com/meshbed/meshbed/scenarios/engine"
	simtarget "github.com/meshbed/meshbed/sim/target"
)

// chaosInSuite is how long a chaos step runs in the suite.
const chaosInSuite = 30 * time.Second

// The target every spec runs on: MESHBED_TARGET=sim (the default) or kind.
// On kind, MESHBED_KIND_CONTEXTS (cluster1=kind-c1,cluster2=kind-c2) names
// existing clusters with meshbed installed and connected, with
// MESHBED_KUBECONFIG and MESHBED_CA_DIR; without contexts each spec
// creates Kind clusters from its topology (NODE_IMAGE, MESHBED_IMAGE and
// DEMO_IMAGE as for meshbed scenario run). A file the Kind target cannot
// run (a topology of other clusters than the contexts', a capability Kind
// lacks) is skipped with the target's reason.
var targetName = func() string {
	if t := os.Getenv("MESHBED_TARGET"); t != "" {
		return t
	}
	return "sim"
}()

func TestScenarios(t *testing.T) {
	switch targetName {
	case "sim":
		// Every spec builds a simulated mesh: network namespaces and BPF.
		testenv.Privileged(t)
	case "kind":
	default:
		t.Fatalf("MESHBED_TARGET=%q: want sim or kind", targetName)
	}
	RegisterFailHandler(Fail)
	RunSpecs(t, "Scenarios on target "+targetName)
}

// scenarioFiles is read when the tree is built, so every file is a spec.
var scenarioFiles = func() []string {
	files, _ := filepath.Glob(filepath.Join("..", "scenarios", "*.yaml"))
	sort.Strings(files)
	return files
}()

// newTarget returns the spec's target and the engine options it needs,
// or a reason to skip the file on it.
func newTarget(sc *scenarios.Scenario, logger *slog.Logger) (engine.Target, engine.Options, string) {
	if targetName == "sim" {
		return simtarget.New(simtarget.Options{Logger: logger}), engine.Options{}, ""
	}
	var pairs []string
	if s := os.Getenv("MESHBED_KIND_CONTEXTS"); s != "" {
		pairs = strings.Split(s, ",")
	}
	contexts, err := kindtarget.ParseContexts(pairs)
	Expect(err).NotTo(HaveOccurred(), "MESHBED_KIND_CONTEXTS")
	opts := kindtarget.Options{
		Kubeconfig: os.Getenv("MESHBED_KUBECONFIG"), Contexts: contexts, CADir: os.Getenv("MESHBED_CA_DIR"),
		NodeImage: os.Getenv("NODE_IMAGE"), MeshbedImage: os.Getenv("MESHBED_IMAGE"), DemoImage: os.Getenv("DEMO_IMAGE"),
		Logger: logger,
	}
	tgt := kindtarget.New(opts)
	if err := tgt.Check(sc); err != nil {
		return nil, engine.Options{}, err.Error()
	}
	return tgt, engine.Options{SettleTimeout: kindtarget.SettleTimeout}, ""
}

var _ = Describe("Scenario files", func() {
	It("are present", func() {
		Expect(scenarioFiles).NotTo(BeEmpty())
	})
	for _, file := range scenarioFiles {
		It(filepath.Base(file), func(ctx SpecContext) {
			sc, err := scenarios.Load(file)
			Expect(err).NotTo(HaveOccurred())
			// Chaos experiments run minutes; the suite runs their first
			// seconds (MESHBED_CHAOS_FULL=1 runs them whole).
			if os.Getenv("MESHBED_CHAOS_FULL") == "" {
				if n := scenarios.LimitChaos(sc, chaosInSuite); n > 0 {
					AddReportEntry("chaos", fmt.Sprintf("%d chaos step(s) shortened to %s", n, chaosInSuite))
				}
			}
			var progress, logs bytes.Buffer
			tgt, opts, skip := newTarget(sc, slog.New(slog.NewTextHandler(&logs, nil)))
			if skip != "" {
				Skip(fmt.Sprintf("target %s: %s", targetName, skip))
			}
			opts.Progress = &progress
			runCtx, cancel := context.WithTimeout(ctx, 9*time.Minute)
			defer cancel()
			rep, err := engine.Run(runCtx, sc, tgt, opts)
			AddReportEntry("progress", progress.String())
			if err == nil {
				AddReportEntry("figures", fmt.Sprintf("target %s: bring-up %.1fs, run %.1fs", rep.Target, rep.BringUpSeconds, rep.DurationSeconds))
			}
			if err != nil || !rep.Passed {
				if os.Getenv("MESHBED_SCENARIO_LOGS") != "" {
					AddReportEntry("logs", logs.String())
				}
			}
			Expect(err).NotTo(HaveOccurred(), "scenario could not run:\n%s", progress.String())
			Expect(rep.Passed).To(BeTrue(), "scenario failed:\n%s", progress.String())
		}, NodeTimeout(10*time.Minute))
	}
})
