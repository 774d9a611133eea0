package engine

import (
	"context"
	"testing"
	"time"

	"github.com/meshbed/meshbed/scenarios"
)

// clientTarget records the workloads clients are asked for and answers
// every request from cluster1.
type clientTarget struct {
	Target
	from []scenarios.Workload
}

func (c *clientTarget) Client(_ context.Context, from scenarios.Workload, _ string, _ time.Duration) (Client, error) {
	c.from = append(c.from, from)
	return answer{}, nil
}

type answer struct{}

func (answer) Get(context.Context) Result { return Result{Start: time.Now(), Cluster: "cluster1"} }

// TestNamespacedSources: curl.from and traffic.from reach the target with
// their namespace, in both spellings of SCENARIOS.md.
func TestNamespacedSources(t *testing.T) {
	data := []byte(`apiVersion: meshbed.io/v1alpha1
kind: Scenario
metadata: {name: ns}
spec:
  topology:
    clusters: [{name: cluster1, id: 1}]
  manifests:
    - clusters: [cluster1]
      inline: |
        apiVersion: v1
        kind: Namespace
        metadata: {name: empire}
        ---
        apiVersion: apps/v1
        kind: Deployment
        metadata: {name: tie-fighter, namespace: empire}
        spec:
          selector: {matchLabels: {name: tie-fighter}}
          template:
            metadata: {labels: {name: tie-fighter}}
            spec: {containers: [{name: c, image: busybox}]}
        ---
        apiVersion: apps/v1
        kind: Deployment
        metadata: {name: x-wing}
        spec:
          selector: {matchLabels: {name: x-wing}}
          template:
            metadata: {labels: {name: x-wing}}
            spec: {containers: [{name: c, image: busybox}]}
  steps:
    - curl: {from: cluster1/empire/tie-fighter, url: http://rebel-base.default, count: 2}
    - curl: {from: cluster1/x-wing, url: http://rebel-base, count: 2}
    - traffic: {name: t, from: cluster1/empire/tie-fighter, url: http://rebel-base.default, rate: 100/s}
    - stopTraffic: t
`)
	sc, err := scenarios.Parse("ns.yaml", data)
	if err != nil {
		t.Fatal(err)
	}
	tgt := &clientTarget{}
	r := &runner{sc: sc, t: tgt, traffic: map[string]*stream{}, start: time.Now(),
		report: &scenarios.Report{}}
	for i := range sc.Steps {
		if rep := r.step(context.Background(), &sc.Steps[i]); !rep.Passed {
			t.Fatalf("step %d: %s", i+1, rep.Message)
		}
	}
	want := []scenarios.Workload{
		{Cluster: "cluster1", Namespace: "empire", Deployment: "tie-fighter"},
		{Cluster: "cluster1", Namespace: "default", Deployment: "x-wing"},
		{Cluster: "cluster1", Namespace: "empire", Deployment: "tie-fighter"},
	}
	if len(tgt.from) != len(want) {
		t.Fatalf("clients for %v, want %v", tgt.from, want)
	}
	for i := range want {
		if tgt.from[i] != want[i] {
			t.Errorf("client %d from %+v, want %+v", i, tgt.from[i], want[i])
		}
	}
}
