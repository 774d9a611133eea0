package ginkgo

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"testing"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"

	"github.com/meshbed/meshbed/internal/testenv"
	"github.com/meshbed/meshbed/scenarios"
	"github.com/meshbed/meshbed/scenarios/engine"
	simtarget "github.com/meshbed/meshbed/sim/target"
)

// chaosInSuite is how long a chaos step runs in the suite.
const chaosInSuite = 30 * time.Second

func TestScenarios(t *testing.T) {
	// Every spec builds a simulated mesh: network namespaces and BPF.
	testenv.Privileged(t)
	RegisterFailHandler(Fail)
	RunSpecs(t, "Scenarios in the simulator")
}

// scenarioFiles is read when the tree is built, so every file is a spec.
var scenarioFiles = func() []string {
	files, _ := filepath.Glob(filepath.Join("..", "scenarios", "*.yaml"))
	sort.Strings(files)
	return files
}()

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
			runCtx, cancel := context.WithTimeout(ctx, 5*time.Minute)
			defer cancel()
			tgt := simtarget.New(simtarget.Options{Logger: slog.New(slog.NewTextHandler(&logs, nil))})
			rep, err := engine.Run(runCtx, sc, tgt, engine.Options{Progress: &progress})
			AddReportEntry("progress", progress.String())
			if err != nil || !rep.Passed {
				if os.Getenv("MESHBED_SCENARIO_LOGS") != "" {
					AddReportEntry("logs", logs.String())
				}
			}
			Expect(err).NotTo(HaveOccurred(), "scenario could not run:\n%s", progress.String())
			Expect(rep.Passed).To(BeTrue(), "scenario failed:\n%s", progress.String())
		}, NodeTimeout(6*time.Minute))
	}
})
