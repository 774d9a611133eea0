package engine

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/meshbed/meshbed/datapath/state"
	"github.com/meshbed/meshbed/scenarios"
)

// fakeMesh is a target whose requests fail while any partition is in
// force, and whose convergence and components can be broken on purpose.
// Methods a chaos run does not call are the nil interface's.
type fakeMesh struct {
	Target
	backends []uint32 // cluster IDs behind the service, from any cluster

	mu          sync.Mutex
	cut         int
	stopped     map[scenarios.Process]bool
	healedAt    time.Time
	convergeLag time.Duration // the final check fails this long after a heal
	crashAgent  bool          // an agent is down that nothing stopped
	calls       []string
}

func newFakeMesh() *fakeMesh {
	return &fakeMesh{backends: []uint32{1, 2}, stopped: map[scenarios.Process]bool{}}
}

func (f *fakeMesh) Name() string                                            { return "fake" }
func (f *fakeMesh) Supports(Capability) bool                                { return true }
func (f *fakeMesh) Up(context.Context, *scenarios.Scenario) error           { return nil }
func (f *fakeMesh) Settle(context.Context) error                            { return nil }
func (f *fakeMesh) Close() error                                            { return nil }
func (f *fakeMesh) Apply(context.Context, string, []scenarios.Object) error { return nil }
func (f *fakeMesh) Policies(context.Context, string) (map[string][]string, map[string]string, error) {
	return nil, nil, nil
}
func (f *fakeMesh) KVGet(context.Context, string, string) ([]byte, bool, error) {
	return nil, false, nil
}
func (f *fakeMesh) KVList(context.Context, string, string) (map[string][]byte, error) {
	return map[string][]byte{}, nil
}
func (f *fakeMesh) Objects(context.Context, string) (*ClusterObjects, error) {
	return &ClusterObjects{}, nil
}

func (f *fakeMesh) Recover(ctx context.Context) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.cut, f.stopped = 0, map[scenarios.Process]bool{}
	return nil
}

func (f *fakeMesh) Nodes(_ context.Context, cluster string) ([]NodeState, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	converged := f.cut == 0 && time.Since(f.healedAt) >= f.convergeLag
	return []NodeState{{Node: "node-1", Running: converged, Desired: &state.State{}}}, nil
}

// Backends withdraws all but the first cluster's backends while a
// partition is in force.
func (f *fakeMesh) Backends(context.Context, string, string, string) ([]NodeBackends, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.cut > 0 {
		return []NodeBackends{{Node: "node-1", ClusterIDs: f.backends[:1]}}, nil
	}
	return []NodeBackends{{Node: "node-1", ClusterIDs: f.backends}}, nil
}

func (f *fakeMesh) Partition(_ context.Context, groups [][]scenarios.Member, _ scenarios.Plane, _ bool) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.cut++
	f.calls = append(f.calls, "partition")
	return nil
}

func (f *fakeMesh) Heal(context.Context) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.cut, f.healedAt = 0, time.Now()
	f.calls = append(f.calls, "heal")
	return nil
}

func (f *fakeMesh) Stop(_ context.Context, p scenarios.Process) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.stopped[p] = true
	f.calls = append(f.calls, "stop "+p.Cluster)
	return nil
}

func (f *fakeMesh) Start(_ context.Context, p scenarios.Process) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.stopped, p)
	f.healedAt = time.Now()
	f.calls = append(f.calls, "start "+p.Cluster)
	return nil
}

func (f *fakeMesh) Restart(_ context.Context, p scenarios.Process) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, "restart "+p.Cluster)
	return nil
}

func (f *fakeMesh) Components(_ context.Context, cluster string) ([]ComponentStatus, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []ComponentStatus
	for _, p := range []scenarios.Process{{Component: scenarios.ComponentAPIServer, Cluster: cluster},
		{Component: scenarios.ComponentAgent, Cluster: cluster, Node: "node-1"}} {
		s := ComponentStatus{Process: p, Running: !f.stopped[p]}
		if f.crashAgent && p.Component == scenarios.ComponentAgent && cluster == "c2" {
			s.Running, s.Exited = false, "panic: boom"
		}
		out = append(out, s)
	}
	return out, nil
}

func (f *fakeMesh) Client(context.Context, scenarios.Workload, string, time.Duration) (Client, error) {
	return fakeClient{f}, nil
}

type fakeClient struct{ f *fakeMesh }

func (c fakeClient) Get(context.Context) Result {
	c.f.mu.Lock()
	cut := c.f.cut > 0
	c.f.mu.Unlock()
	now := time.Now()
	if cut {
		return Result{Start: now, Duration: time.Millisecond, Err: errors.New("timeout")}
	}
	return Result{Start: now, Duration: time.Millisecond, Cluster: "c2"}
}

func fakeScenario(t *testing.T, chaos, expect string) *scenarios.Scenario {
	t.Helper()
	data := []byte(`apiVersion: meshbed.io/v1alpha1
kind: Scenario
metadata: {name: fake}
spec:
  seed: 5
  topology:
    kvstoremesh: false
    clusters: [{name: c1, id: 1, nodes: 1}, {name: c2, id: 2, nodes: 1}]
  manifests:
    - clusters: [c1]
      inline: |
        apiVersion: apps/v1
        kind: Deployment
        metadata: {name: x-wing}
        spec:
          selector: {matchLabels: {name: x-wing}}
          template:
            metadata: {labels: {name: x-wing}}
            spec: {containers: [{name: c, image: busybox}]}
  steps:
    - name: traffic
      traffic: {name: t1, from: c1/x-wing, url: http://rebel-base, rate: 100/s, timeout: 50ms}
    - name: chaos
      chaos: ` + chaos + `
      expect: ` + expect + `
    - name: stop
      stopTraffic: t1
`)
	sc, err := scenarios.Parse("fake.yaml", data)
	if err != nil {
		t.Fatal(err)
	}
	return sc
}

const fakePartitions = `{duration: 3s, faults: [partition], planes: [both, data], interval: {min: 100ms, max: 300ms}, hold: {min: 600ms, max: 800ms}}`

// TestChaosOutage: a partition that fails every request for its hold
// breaks maxOutage and stops the step at that fault; the same run passes
// when the client's cluster was cut off from every backend.
func TestChaosOutage(t *testing.T) {
	sc := fakeScenario(t, fakePartitions, `{maxOutage: 300ms, converge: 2s}`)
	f := newFakeMesh()
	rep, err := Run(context.Background(), sc, f, Options{})
	if err != nil {
		t.Fatal(err)
	}
	st := rep.Steps[1]
	if st.Passed || !strings.Contains(st.Message, "fault 1 (partition ") || !strings.Contains(st.Message, "both): stream t1 (c1/x-wing): outage") {
		t.Fatalf("chaos step passed=%t: %s", st.Passed, st.Message)
	}
	if c := st.Chaos; c == nil || len(c.Faults) != 1 || c.Faults[0].Passed || c.Faults[0].Outages[0].Seconds < 0.3 || c.Planned < 2 {
		t.Fatalf("chaos report %+v", st.Chaos)
	}
	if w := st.Chaos.Faults[0].Outages[0].BackendsChangedSeconds; w == nil || *w > st.Chaos.Faults[0].HoldSeconds {
		t.Errorf("the withdrawal was not seen during the fault: %v", w)
	}

	f = newFakeMesh()
	f.backends = []uint32{2} // c1 has no backends of its own: cut off
	rep, err = Run(context.Background(), fakeScenario(t, fakePartitions, `{maxOutage: 300ms, converge: 2s}`), f, Options{})
	if err != nil {
		t.Fatal(err)
	}
	st = rep.Steps[1]
	if !st.Passed {
		t.Fatalf("excused outage failed the step: %s", st.Message)
	}
	for _, fr := range st.Chaos.Faults {
		if o := fr.Outages[0]; o.Excused == "" || o.Seconds < 0.3 || fr.ConvergeSeconds < 0 {
			t.Errorf("fault %d: %+v, converge %.2fs", fr.Index, o, fr.ConvergeSeconds)
		}
	}
	if n := len(st.Chaos.Faults); n != st.Chaos.Planned || n < 2 {
		t.Errorf("%d of %d planned faults ran", n, st.Chaos.Planned)
	}
}

// TestChaosConverge: a mesh that takes longer than converge after a heal
// fails the step; one within the bound passes and reports the time.
func TestChaosConverge(t *testing.T) {
	for _, tc := range []struct {
		lag  time.Duration
		pass bool
	}{{300 * time.Millisecond, true}, {3 * time.Second, false}} {
		f := newFakeMesh()
		f.convergeLag = tc.lag
		rep, err := Run(context.Background(), fakeScenario(t,
			`{duration: 800ms, faults: [stop], components: [apiserver], interval: {min: 100ms, max: 100ms}, hold: {min: 200ms, max: 200ms}}`,
			`{converge: 1s}`), f, Options{})
		if err != nil {
			t.Fatal(err)
		}
		st := rep.Steps[1]
		if st.Passed != tc.pass {
			t.Fatalf("lag %s: passed=%t: %s", tc.lag, st.Passed, st.Message)
		}
		fr := st.Chaos.Faults[0]
		if tc.pass && (fr.ConvergeSeconds < 0.25 || fr.ConvergeSeconds > 1) {
			t.Errorf("lag %s: converged after %.2fs", tc.lag, fr.ConvergeSeconds)
		}
		if !tc.pass && (fr.ConvergeSeconds != -1 || !strings.Contains(st.Message, "did not pass within 1s")) {
			t.Errorf("lag %s: converge %.2f, message %s", tc.lag, fr.ConvergeSeconds, st.Message)
		}
	}
}

// TestChaosCrash: a component down that no fault stopped fails the step;
// the apiserver the schedule stopped does not.
func TestChaosCrash(t *testing.T) {
	f := newFakeMesh()
	f.crashAgent = true
	rep, err := Run(context.Background(), fakeScenario(t,
		`{duration: 800ms, faults: [stop], components: [apiserver], interval: {min: 100ms, max: 100ms}, hold: {min: 200ms, max: 200ms}}`,
		`{converge: 1s}`), f, Options{})
	if err != nil {
		t.Fatal(err)
	}
	st := rep.Steps[1]
	if st.Passed || !strings.Contains(st.Message, "agent of c2/node-1 exited: panic: boom") || strings.Contains(st.Message, "apiserver") {
		t.Fatalf("passed=%t: %s", st.Passed, st.Message)
	}
}

// TestChaosShrink: the failing schedule shrinks to one fault, replayed on
// fresh targets, and repro.yaml is a valid scenario with explicit steps
// that expects the outage bound on the failing stream.
func TestChaosShrink(t *testing.T) {
	sc := fakeScenario(t, `{duration: 4s, faults: [partition, restart], components: [agent], interval: {min: 100ms, max: 300ms}, hold: {min: 600ms, max: 900ms}}`,
		`{maxOutage: 300ms, converge: 2s}`)
	var targets int
	rep, err := Run(context.Background(), sc, newFakeMesh(), Options{
		NewTarget: func() Target { targets++; return newFakeMesh() }, ShrinkBudget: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	st := rep.Steps[1]
	if st.Passed || st.Chaos.Shrink == nil || rep.Repro == nil {
		t.Fatalf("passed=%t shrink=%+v", st.Passed, st.Chaos.Shrink)
	}
	s := st.Chaos.Shrink
	if s.Replays != targets || s.Replays < 2 || s.FaultsAfter != 1 || s.BudgetSpent {
		t.Errorf("shrink %+v with %d targets", *s, targets)
	}
	repro, err := scenarios.Parse("repro.yaml", rep.Repro)
	if err != nil {
		t.Fatalf("repro.yaml: %v\n%s", err, rep.Repro)
	}
	var actions []string
	for _, st := range repro.Steps {
		actions = append(actions, st.Action().ActionName())
	}
	if got := strings.Join(actions, " "); got != "traffic wait partition wait heal stopTraffic" {
		t.Errorf("repro steps: %s\n%s", got, rep.Repro)
	}
	last := repro.Steps[len(repro.Steps)-1]
	if last.Expect.MaxOutage == nil || *last.Expect.MaxOutage != 300*time.Millisecond {
		t.Errorf("repro's stopTraffic expects %v", last.Expect.MaxOutage)
	}
	// The shrunk hold is the shortest that still broke the bound.
	if p := repro.Steps[3].Wait.Duration; p < 300*time.Millisecond || p > 900*time.Millisecond {
		t.Errorf("repro holds the partition %s", p)
	}
	// And the repro fails the same way on the fake mesh.
	again, err := Run(context.Background(), repro, newFakeMesh(), Options{})
	if err != nil {
		t.Fatal(err)
	}
	if again.Passed || again.Steps[len(again.Steps)-1].Passed {
		t.Errorf("repro.yaml passed")
	}
}

// TestExcuse: a client is excused only when every backend cluster is
// across a data-plane cut from it.
func TestExcuse(t *testing.T) {
	m := func(s string) scenarios.Member {
		c, n, _ := strings.Cut(s, "/")
		return scenarios.Member{Cluster: c, Node: n}
	}
	part := func(plane scenarios.Plane, oneWay bool, groups ...[]string) Fault {
		p := &scenarios.Partition{Plane: plane, OneWay: oneWay}
		for _, g := range groups {
			var ms []scenarios.Member
			for _, s := range g {
				ms = append(ms, m(s))
			}
			p.Groups = append(p.Groups, ms)
		}
		return Fault{Kind: scenarios.FaultPartition, Partition: p}
	}
	for i, tc := range []struct {
		from     string
		backends []string
		f        Fault
		excused  bool
	}{
		{"a", []string{"b"}, part(scenarios.PlaneBoth, false, []string{"a"}, []string{"b"}), true},
		{"a", []string{"a", "b"}, part(scenarios.PlaneBoth, false, []string{"a"}, []string{"b"}), false},
		{"a", []string{"b", "c"}, part(scenarios.PlaneData, false, []string{"a"}, []string{"b", "c"}), true},
		{"a", []string{"b", "c"}, part(scenarios.PlaneData, false, []string{"a", "c"}, []string{"b"}), false},
		{"a", []string{"b"}, part(scenarios.PlaneControl, false, []string{"a"}, []string{"b"}), false},
		{"b", []string{"a"}, part(scenarios.PlaneBoth, true, []string{"a"}, []string{"b"}), true}, // replies cut
		{"a", []string{"b"}, part(scenarios.PlaneBoth, false, []string{"a/node-1"}, []string{"b"}), true},
		{"a", []string{"a"}, part(scenarios.PlaneBoth, false, []string{"a/node-1"}, []string{"b"}), false},
		{"a", []string{"a"}, part(scenarios.PlaneBoth, false, []string{"a/node-1"}, []string{"a/node-2"}), true},
		{"a", []string{"b"}, Fault{Kind: scenarios.FaultStop, Process: &scenarios.Process{Component: "apiserver", Cluster: "b"}}, false},
		{"a", []string{}, part(scenarios.PlaneBoth, false, []string{"c"}, []string{"d"}), true},
	} {
		s := &chaosStream{from: scenarios.Workload{Cluster: tc.from}, backends: tc.backends}
		if got := excuse(s, tc.f) != ""; got != tc.excused {
			t.Errorf("case %d: client in %s, backends %v, %s: excused %t, want %t", i, tc.from, tc.backends, tc.f.Targets(), got, tc.excused)
		}
	}
}
