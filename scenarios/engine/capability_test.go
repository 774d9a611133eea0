package engine

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
	"testing"

	"github.com/meshbed/meshbed/scenarios"
)

// limitedTarget supports everything but what it lacks, and records whether
// anything was started. Every other method is the nil interface's: calling
// one panics, which a run that fails before anything starts never does.
type limitedTarget struct {
	Target
	lacks map[Capability]bool
	upped bool
}

func (t *limitedTarget) Name() string               { return "limited" }
func (t *limitedTarget) Supports(c Capability) bool { return !t.lacks[c] }
func (t *limitedTarget) Up(context.Context, *scenarios.Scenario) error {
	t.upped = true
	return errors.New("must not be called")
}

func TestUnsupportedStepFailsBeforeAnythingStarts(t *testing.T) {
	sc, err := scenarios.Load(filepath.Join("..", "chaos.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	tgt := &limitedTarget{lacks: map[Capability]bool{CapPartitionControl: true, CapProcessAPIServer: true}}
	_, err = Run(context.Background(), sc, tgt, Options{})
	if !errors.Is(err, ErrUnsupported) {
		t.Fatalf("Run: %v, want an error wrapping ErrUnsupported", err)
	}
	if tgt.upped {
		t.Error("Up was called for a scenario the target cannot run")
	}
	msg := err.Error()
	for _, want := range []string{
		`step 3 (cut only the control plane between east and west): partition/control: not supported by the target "limited"`,
		`(restart west's apiserver): process/apiserver: not supported by the target "limited"`,
	} {
		if !strings.Contains(msg, want) {
			t.Errorf("error does not say %q:\n%s", want, msg)
		}
	}
	if n := strings.Count(msg, "\n") + 1; n != 2 {
		t.Errorf("%d errors, want one per unsupported step (2):\n%s", n, msg)
	}
}

func TestNeeds(t *testing.T) {
	sc, err := scenarios.Load(filepath.Join("..", "chaos.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	seen := map[Capability]bool{}
	for i := range sc.Steps {
		for _, c := range Needs(&sc.Steps[i]) {
			seen[c] = true
		}
	}
	for _, c := range []Capability{CapPartition, CapPartitionControl, CapPartitionData, CapPartitionOneWay,
		CapPartitionNode, CapProcessAgent, CapProcessAPIServer, CapExpectBackends, CapExpectKVStore} {
		if !seen[c] {
			t.Errorf("chaos.yaml needs %s, Needs never says so", c)
		}
	}
	if seen[CapProcessKVStoreMesh] {
		t.Errorf("chaos.yaml never touches kvstoremesh, Needs says it does")
	}
}

// TestChaosStepNeeds: a chaos step needs every capability its fault kinds,
// planes, one-way cuts, node groups and components may draw, and a target
// that lacks one is refused before anything starts.
func TestChaosStepNeeds(t *testing.T) {
	sc, err := scenarios.Load(filepath.Join("..", "chaos-random.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	tgt := &limitedTarget{lacks: map[Capability]bool{CapPartitionOneWay: true, CapProcessKVStoreMesh: true}}
	_, err = Run(context.Background(), sc, tgt, Options{})
	if !errors.Is(err, ErrUnsupported) || tgt.upped {
		t.Fatalf("Run: %v (up %t), want ErrUnsupported before Up", err, tgt.upped)
	}
	for _, want := range []string{
		`step 5 (five minutes of random faults under steady traffic): partition/oneWay: not supported by the target "limited"`,
		`step 5 (five minutes of random faults under steady traffic): process/kvstoremesh: not supported by the target "limited"`,
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error does not say %q:\n%v", want, err)
		}
	}
	c := scenarios.Chaos{Faults: []scenarios.FaultKind{scenarios.FaultRestart}, Components: []scenarios.Component{scenarios.ComponentAgent}}
	got := Needs(&scenarios.Step{Chaos: &c})
	if len(got) != 1 || got[0] != CapProcessAgent {
		t.Errorf("restarts of agents need %v, want [%s]", got, CapProcessAgent)
	}
}
