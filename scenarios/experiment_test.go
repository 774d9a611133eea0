package scenarios

import (
	"strings"
	"testing"
	"time"
)

// TestExperiment: meshbed chaos run's scenario has one stream per client
// deployment and cluster, to the global service, and the chaos step of the
// flags; a bad flag is reported as the chaos step's field.
func TestExperiment(t *testing.T) {
	sc, err := Load("failover.yaml")
	if err != nil {
		t.Fatal(err)
	}
	exp, err := Experiment(sc, ExperimentOptions{Duration: 10 * time.Minute, Faults: []string{"partition", "restart"},
		Hold: Range{Min: 2 * time.Second, Max: 4 * time.Second}, MaxOutage: 3 * time.Second, Converge: 15 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	var actions, streams []string
	var chaos *Step
	for i, st := range exp.Steps {
		actions = append(actions, st.Action().ActionName())
		if st.Traffic != nil {
			streams = append(streams, st.Traffic.Name+"="+st.Traffic.From.String()+">"+st.Traffic.URL.String())
		}
		if st.Chaos != nil {
			chaos = &exp.Steps[i]
		}
	}
	if got, want := strings.Join(actions, " "), "curl curl traffic traffic chaos stopTraffic stopTraffic"; got != want {
		t.Errorf("steps %s, want %s", got, want)
	}
	if got, want := strings.Join(streams, " "), "cluster1-x-wing=cluster1/x-wing>http://rebel-base cluster2-x-wing=cluster2/x-wing>http://rebel-base"; got != want {
		t.Errorf("streams %s, want %s", got, want)
	}
	c := chaos.Chaos
	if c.Duration != 10*time.Minute || len(c.Faults) != 2 || c.Hold.Max != 4*time.Second || c.Interval != DefaultChaosInterval ||
		*chaos.Expect.MaxOutage != 3*time.Second || chaos.Expect.Converge != 15*time.Second {
		t.Errorf("chaos step %+v expect %+v", *c, chaos.Expect)
	}
	if len(exp.Manifests) != len(sc.Manifests) || exp.Topology.Clusters[1] != sc.Topology.Clusters[1] {
		t.Error("the experiment does not keep the file's topology and manifests")
	}

	_, err = Experiment(sc, ExperimentOptions{Duration: time.Minute, Faults: []string{"flood"}})
	if err == nil || !strings.Contains(err.Error(), `step 5 (chaos): chaos.faults[0]: "flood" is not one of partition, stop, restart`) {
		t.Errorf("bad fault kind: %v", err)
	}
}
