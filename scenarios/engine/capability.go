package engine

import (
	"errors"
	"fmt"

	"github.com/meshbed/meshbed/scenarios"
)

// Capability is something a step may need of a target. The names are the
// scenario file's: an action key, an action with the variant it needs
// ("partition/control", "stop/kvstoremesh"), or an expectation key.
type Capability string

// Capabilities a target may lack. Actions that every target can perform
// (apply, delete, scale, annotate, curl, traffic, stopTraffic, heal, wait)
// have none.
const (
	// Partitions: both planes between whole clusters, each plane alone,
	// one direction only, and single nodes as group members.
	CapPartition        Capability = "partition"
	CapPartitionData    Capability = "partition/data"
	CapPartitionControl Capability = "partition/control"
	CapPartitionOneWay  Capability = "partition/oneWay"
	CapPartitionNode    Capability = "partition/node"
	// Process faults, per component (stop, start and restart alike).
	CapProcessAPIServer   Capability = "process/apiserver"
	CapProcessKVStoreMesh Capability = "process/kvstoremesh"
	CapProcessAgent       Capability = "process/agent"
	// State expectations.
	CapExpectBackends Capability = "expect/backends"
	CapExpectKVStore  Capability = "expect/kvstore"
)

// ErrUnsupported is wrapped by the error for a step that needs a
// capability the target lacks, and by a target's error for a method it
// cannot perform. The run cannot be judged on this target: pick another
// target or drop the step.
var ErrUnsupported = errors.New("not supported by the target")

// Needs lists the capabilities a step needs, its expectations included.
func Needs(st *scenarios.Step) []Capability {
	var caps []Capability
	if a, err := actionOf(st, nil); err == nil {
		caps = a.needs()
	}
	if len(st.Expect.Backends) > 0 {
		caps = append(caps, CapExpectBackends)
	}
	if len(st.Expect.KVStore) > 0 {
		caps = append(caps, CapExpectKVStore)
	}
	if len(st.Expect.Events) > 0 {
		caps = append(caps, CapExpectEvents)
	}
	return caps
}

// CheckSupported returns an error for every step of sc that needs a
// capability t lacks (all of them joined), naming the file, the step, the
// capability and the target; nil when t can run every step.
func CheckSupported(sc *scenarios.Scenario, t Target) error {
	var errs []error
	if err := checkTopology(sc, t); err != nil {
		errs = append(errs, err)
	}
	for i := range sc.Steps {
		st := &sc.Steps[i]
		for _, c := range Needs(st) {
			if !t.Supports(c) {
				errs = append(errs, fmt.Errorf("%s: step %d (%s): %s: %w %q", sc.File, st.Index, st.Name, c, ErrUnsupported, t.Name()))
			}
		}
	}
	return errors.Join(errs...)
}
