package engine

import (
	"reflect"
	"testing"
	"time"

	"github.com/meshbed/meshbed/scenarios"
)

func chaosFixture(t *testing.T, chaos string) (*scenarios.Scenario, *scenarios.Chaos) {
	t.Helper()
	data := []byte(`apiVersion: meshbed.io/v1alpha1
kind: Scenario
metadata: {name: chaos}
spec:
  seed: 1
  topology:
    clusters: [{name: c1, id: 1, nodes: 3}, {name: c2, id: 2}, {name: c3, id: 3, nodes: 1}, {name: c4, id: 4}]
  steps:
    - chaos: ` + chaos + "\n")
	sc, err := scenarios.Parse("chaos.yaml", data)
	if err != nil {
		t.Fatal(err)
	}
	return sc, sc.Steps[0].Chaos
}

// TestScheduleFromSeed: a seed replays the same schedule, another seed
// draws another one.
func TestScheduleFromSeed(t *testing.T) {
	sc, c := chaosFixture(t, `{duration: 10m, oneWay: true, nodes: true, concurrent: 2}`)
	a := NewSchedule(c, &sc.Topology, 1, 1)
	b := NewSchedule(c, &sc.Topology, 1, 1)
	if len(a) < 20 {
		t.Fatalf("only %d faults in 10 minutes", len(a))
	}
	if !reflect.DeepEqual(a, b) {
		t.Fatalf("seed 1 drew two schedules:\n%v\n%v", a, b)
	}
	for _, seed := range []int64{2, 3, -1} {
		if o := NewSchedule(c, &sc.Topology, seed, 1); reflect.DeepEqual(a, o) {
			t.Errorf("seeds 1 and %d drew the same schedule", seed)
		}
	}
	if o := NewSchedule(c, &sc.Topology, 1, 2); reflect.DeepEqual(a, o) {
		t.Error("two chaos steps of one file drew the same schedule")
	}
	// Every kind, plane and shape shows up in a long schedule.
	seen := map[string]bool{}
	for _, f := range a {
		seen[string(f.Kind)] = true
		if p := f.Partition; p != nil {
			seen["plane/"+string(p.Plane)] = true
			if p.OneWay {
				seen["oneWay"] = true
			}
			for _, g := range p.Groups {
				for _, m := range g {
					if m.Node != "" {
						seen["node"] = true
					}
				}
			}
		}
		if f.Process != nil {
			seen["component/"+string(f.Process.Component)] = true
		}
	}
	for _, want := range []string{"partition", "stop", "restart", "plane/both", "plane/data", "plane/control",
		"oneWay", "node", "component/apiserver", "component/kvstoremesh", "component/agent"} {
		if !seen[want] {
			t.Errorf("no %s in 10 minutes of faults", want)
		}
	}
}

// TestScheduleBounds: faults stay within the step's duration, holds and
// intervals within their ranges, at most concurrent at once, on distinct
// clusters, and every partition is one a scenario file could hold.
func TestScheduleBounds(t *testing.T) {
	for _, tc := range []struct {
		chaos      string
		concurrent int
	}{
		{`{duration: 5m, interval: {min: 1s, max: 8s}, hold: {min: 1s, max: 10s}}`, 1},
		{`{duration: 5m, nodes: true, oneWay: true, concurrent: 3, interval: {min: 0s, max: 2s}}`, 3},
		{`{duration: 2m, faults: [partition], concurrent: 2, hold: {min: 2s, max: 2s}}`, 2},
		{`{duration: 1m, faults: [restart], components: [agent]}`, 1},
	} {
		sc, c := chaosFixture(t, tc.chaos)
		for seed := int64(0); seed < 20; seed++ {
			fs := NewSchedule(c, &sc.Topology, seed, 1)
			if len(fs) == 0 {
				t.Fatalf("%s seed %d: no faults", tc.chaos, seed)
			}
			for i, f := range fs {
				if f.At < c.Interval.Min || f.End() > c.Duration {
					t.Errorf("%s seed %d: fault %d (%s) outside 0..%s", tc.chaos, seed, i, f, c.Duration)
				}
				if f.Hold < c.Hold.Min || f.Hold > c.Hold.Max {
					t.Errorf("%s seed %d: fault %d holds %s, outside %s", tc.chaos, seed, i, f.Hold, c.Hold)
				}
				if i > 0 && f.At < fs[i-1].At {
					t.Errorf("%s seed %d: fault %d starts before fault %d", tc.chaos, seed, i, i-1)
				}
				if tc.concurrent == 1 && i > 0 && f.At-fs[i-1].End() < c.Interval.Min {
					t.Errorf("%s seed %d: fault %d starts %s after the last heal", tc.chaos, seed, i, f.At-fs[i-1].End())
				}
				busy := map[string]int{}
				inForce := 0
				for j, o := range fs {
					if o.At <= f.At && o.End() > f.At {
						inForce++
						for _, cl := range o.Clusters() {
							if prev, ok := busy[cl]; ok {
								t.Errorf("%s seed %d: faults %d and %d both act on %s", tc.chaos, seed, prev, j, cl)
							}
							busy[cl] = j
						}
					}
				}
				if inForce > tc.concurrent {
					t.Errorf("%s seed %d: %d faults in force at %s", tc.chaos, seed, inForce, f.At)
				}
				if f.Kind == scenarios.FaultPartition {
					checkPartitionValid(t, sc, f)
				}
				if f.At%time.Millisecond != 0 || f.Hold%time.Millisecond != 0 {
					t.Errorf("fault %s is not in whole milliseconds", f)
				}
			}
		}
	}
}

// checkPartitionValid writes the partition as a scenario step and decodes
// it: the schedule only draws partitions a file could state.
func checkPartitionValid(t *testing.T, sc *scenarios.Scenario, f Fault) {
	t.Helper()
	var groups []string
	for _, g := range f.Partition.Groups {
		var ms []string
		for _, m := range g {
			ms = append(ms, m.String())
		}
		groups = append(groups, "["+join(ms)+"]")
	}
	step := "    - partition: {groups: [" + join(groups) + "], plane: " + string(f.Partition.Plane) + "}\n"
	data := []byte(`apiVersion: meshbed.io/v1alpha1
kind: Scenario
metadata: {name: p}
spec:
  topology:
    clusters: [{name: c1, id: 1, nodes: 3}, {name: c2, id: 2}, {name: c3, id: 3, nodes: 1}, {name: c4, id: 4}]
  steps:
` + step)
	if _, err := scenarios.Parse("p.yaml", data); err != nil {
		t.Errorf("fault %s is not a valid partition: %v", f, err)
	}
}

func join(s []string) string {
	out := ""
	for i, x := range s {
		if i > 0 {
			out += ", "
		}
		out += x
	}
	return out
}
