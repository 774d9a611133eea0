package engine_test

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/meshbed/meshbed/internal/testenv"
	"github.com/meshbed/meshbed/scenarios"
	"github.com/meshbed/meshbed/scenarios/engine"
	"github.com/meshbed/meshbed/sim/target"
)

func loadScenario(tb testing.TB, name string) *scenarios.Scenario {
	tb.Helper()
	sc, err := scenarios.Load(filepath.Join("..", name+".yaml"))
	if err != nil {
		tb.Fatal(err)
	}
	return sc
}

// BenchmarkBringUpFailover brings up the topology and manifests of
// scenarios/failover.yaml (two clusters of two nodes, rebel-base and
// x-wing in each) from nothing to a settled mesh, the way every scenario
// run starts, and reports the time it takes (goal ≤ 5 s). One iteration is
// a whole mesh.
func BenchmarkBringUpFailover(b *testing.B) {
	testenv.Privileged(b)
	sc := loadScenario(b, "failover")
	var total time.Duration
	for b.Loop() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		t0 := time.Now()
		s, err := engine.Start(ctx, sc, target.New(target.Options{}), engine.Options{})
		took := time.Since(t0)
		cancel()
		if err != nil {
			b.Fatal(err)
		}
		total += took
		// Teardown is not bring-up.
		b.StopTimer()
		if err := s.Close(); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
	b.ReportMetric(total.Seconds()/float64(b.N), "bringup-s")
}

// BenchmarkPartitionOutage runs scenarios/partition-recovery.yaml and
// reports the longest stretch in which all of cluster1's steady traffic
// failed while the network between the clusters was cut (goal ≤ 3 s), and
// how long after the cut both clusters had withdrawn each other's backends
// from every node. It fails when the scenario fails: its figures would not
// describe a working mesh.
func BenchmarkPartitionOutage(b *testing.B) {
	testenv.Privileged(b)
	if testing.Short() {
		b.Skip("runs a whole scenario (≈30 s)")
	}
	sc := loadScenario(b, "partition-recovery")
	var outage, withdraw float64
	for b.Loop() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		rep, err := engine.Run(ctx, sc, target.New(target.Options{}), engine.Options{})
		cancel()
		if err != nil {
			b.Fatal(err)
		}
		o, w, err := outageFigures(rep)
		if err != nil {
			b.Fatal(err)
		}
		outage, withdraw = outage+o, withdraw+w
		if !rep.Passed {
			b.Errorf("scenario failed: %s", failures(rep))
		}
		b.Logf("max outage %.3f s, withdrawn after %.3f s", o, w)
	}
	b.ReportMetric(outage/float64(b.N), "max-outage-s")
	b.ReportMetric(withdraw/float64(b.N), "withdraw-s")
}

// outageFigures picks the stopTraffic step's longest outage and the
// partition step's time to its expectations from a report.
func outageFigures(rep *scenarios.Report) (outage, withdraw float64, err error) {
	var haveOutage, haveWithdraw bool
	for _, st := range rep.Steps {
		switch st.Action {
		case "stopTraffic":
			outage, haveOutage = st.MaxOutageSeconds, true
		case "partition":
			withdraw, haveWithdraw = st.HeldAfterSeconds, true
		}
	}
	if !haveOutage || !haveWithdraw {
		return 0, 0, fmt.Errorf("report of %s has no stopTraffic or no partition step", rep.Scenario)
	}
	return outage, withdraw, nil
}

func failures(rep *scenarios.Report) string {
	var out []string
	for _, st := range rep.Steps {
		if !st.Passed {
			out = append(out, fmt.Sprintf("step %q: %s", st.Name, st.Message))
		}
	}
	if !rep.Final.Passed {
		out = append(out, "final check: "+rep.Final.Message)
	}
	return strings.Join(out, "; ")
}
