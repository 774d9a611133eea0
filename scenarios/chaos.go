package scenarios

import (
	"fmt"
	"strings"
	"time"
)

// FaultKind is a kind of fault a chaos step draws.
type FaultKind string

const (
	// FaultPartition cuts the network between groups of clusters (or
	// single nodes), on a plane, possibly one way.
	FaultPartition FaultKind = "partition"
	// FaultStop stops a component for the fault's hold, then starts it.
	FaultStop FaultKind = "stop"
	// FaultRestart restarts a component; the hold is the time watched
	// after the restart before the mesh must converge.
	FaultRestart FaultKind = "restart"
)

// FaultKinds are every fault kind, in the order of docs/scenarios.md.
var FaultKinds = []FaultKind{FaultPartition, FaultStop, FaultRestart}

// Defaults of a chaos step (docs/scenarios.md, "Chaos").
var (
	DefaultChaosInterval = Range{Min: time.Second, Max: 8 * time.Second}
	DefaultChaosHold     = Range{Min: time.Second, Max: 10 * time.Second}
	// DefaultConverge bounds the convergence after every heal of a chaos
	// step that does not set expect.converge.
	DefaultConverge = 30 * time.Second
)

// Range is a closed range of durations, Min <= Max.
type Range struct{ Min, Max time.Duration }

func (r Range) String() string { return fmt.Sprintf("%s..%s", r.Min, r.Max) }

// Chaos is a seeded random schedule of faults under whatever traffic runs;
// the engine draws the schedule from the scenario's seed and checks the
// mesh's promises after every fault (see docs/scenarios.md, "Chaos").
type Chaos struct {
	// Duration is how long faults are injected: every fault starts within
	// it and is healed by its end.
	Duration time.Duration
	// Faults are the kinds drawn from, each once, in file order.
	Faults []FaultKind
	// Planes are the planes a partition may cut (default all three).
	Planes []Plane
	// OneWay allows one-way cuts; Nodes allows a single node as a group.
	OneWay bool
	Nodes  bool
	// Components are the processes stop and restart act on (default all
	// the topology runs: kvstoremesh only when it is on).
	Components []Component
	// Interval is the quiet time before a fault; Hold how long it lasts.
	Interval Range
	Hold     Range
	// Concurrent is the most faults in force at once (default 1); faults
	// in force at once act on distinct clusters.
	Concurrent int
}

// MaxConcurrent is the most faults a chaos step may hold at once in
// topology t: faults in force together act on distinct clusters, a
// process fault or a cut between nodes of one cluster takes one cluster,
// a cut between whole clusters takes at least two.
func MaxConcurrent(t *Topology, c *Chaos) int {
	n := len(t.Clusters)
	for _, k := range c.Faults {
		if k == FaultStop || k == FaultRestart {
			return n
		}
	}
	if c.Nodes {
		for _, cl := range t.Clusters {
			if cl.Nodes >= 2 {
				return n
			}
		}
	}
	return n / 2
}

func (d *decoder) chaos(field string, v any, st *state) *Chaos {
	m := d.object(field, v, "duration", "faults", "planes", "oneWay", "nodes", "components",
		"interval", "hold", "concurrent")
	if m == nil {
		return nil
	}
	c := Chaos{Interval: DefaultChaosInterval, Hold: DefaultChaosHold, Concurrent: 1}
	good := true
	if v, ok := d.required(field, m, "duration"); ok {
		c.Duration, ok = d.duration(join(field, "duration"), v, false)
		good = good && ok
	} else {
		good = false
	}

	kinds := make([]string, len(FaultKinds))
	for i, k := range FaultKinds {
		kinds[i] = string(k)
	}
	if faults, ok := d.enumList(join(field, "faults"), m, "faults", kinds, kinds); ok {
		for _, f := range faults {
			c.Faults = append(c.Faults, FaultKind(f))
		}
	} else {
		good = false
	}
	planes := []string{string(PlaneBoth), string(PlaneControl), string(PlaneData)}
	if ps, ok := d.enumList(join(field, "planes"), m, "planes", planes, planes); ok {
		for _, p := range ps {
			c.Planes = append(c.Planes, Plane(p))
		}
	} else {
		good = false
	}
	for _, key := range []string{"oneWay", "nodes"} {
		if v, ok := get(m, key); ok {
			b, ok := d.boolean(join(field, key), v)
			good = good && ok
			if key == "oneWay" {
				c.OneWay = b
			} else {
				c.Nodes = b
			}
		}
	}
	all := []string{string(ComponentAPIServer), string(ComponentKVStoreMesh), string(ComponentAgent)}
	def := all
	if !st.topo.KVStoreMesh {
		def = []string{string(ComponentAPIServer), string(ComponentAgent)}
	}
	if cs, ok := d.enumList(join(field, "components"), m, "components", all, def); ok {
		for i, s := range cs {
			if Component(s) == ComponentKVStoreMesh && !st.topo.KVStoreMesh {
				d.errorf(index(join(field, "components"), i), "kvstoremesh is off in this topology (spec.topology.kvstoremesh: false)")
				good = false
				continue
			}
			c.Components = append(c.Components, Component(s))
		}
	} else {
		good = false
	}
	usesProcess := false
	for _, k := range c.Faults {
		usesProcess = usesProcess || k == FaultStop || k == FaultRestart
	}
	if _, set := get(m, "components"); set && !usesProcess && c.Faults != nil {
		d.errorf(join(field, "components"), "applies to stop and restart faults, and faults has neither")
		good = false
	}
	for _, key := range []string{"planes", "oneWay", "nodes"} {
		if _, set := get(m, key); set && c.Faults != nil && !hasKind(c.Faults, FaultPartition) {
			d.errorf(join(field, key), "applies to partition faults, and faults has none")
			good = false
		}
	}

	if v, ok := get(m, "interval"); ok {
		r, ok := d.durationRange(join(field, "interval"), v, true)
		c.Interval, good = r, good && ok
	}
	if v, ok := get(m, "hold"); ok {
		r, ok := d.durationRange(join(field, "hold"), v, false)
		c.Hold, good = r, good && ok
	}
	if good && c.Duration > 0 && c.Hold.Min > c.Duration {
		d.errorf(join(field, "hold.min"), "%s is longer than the duration %s: no fault would fit", c.Hold.Min, c.Duration)
		good = false
	}

	if v, ok := get(m, "concurrent"); ok {
		n, ok := d.integer(join(field, "concurrent"), v, 1, MaxNodes)
		c.Concurrent, good = int(n), good && ok
	}
	if good {
		if most := MaxConcurrent(st.topo, &c); most == 0 {
			d.errorf(join(field, "faults"), "partition faults need two clusters, or nodes: true and a cluster of two nodes; the topology has %d cluster(s)", len(st.topo.Clusters))
			good = false
		} else if c.Concurrent > most {
			d.errorf(join(field, "concurrent"), "%d is more than this topology allows (%d): faults in force at once act on distinct clusters (%s)",
				c.Concurrent, most, concurrentReason(st.topo, &c))
			good = false
		}
	}
	if !good {
		return nil
	}
	return &c
}

func hasKind(ks []FaultKind, k FaultKind) bool {
	for _, x := range ks {
		if x == k {
			return true
		}
	}
	return false
}

func concurrentReason(t *Topology, c *Chaos) string {
	n := len(t.Clusters)
	if MaxConcurrent(t, c) == n {
		return fmt.Sprintf("%d clusters", n)
	}
	return fmt.Sprintf("%d clusters, and a partition between whole clusters takes two", n)
}

// enumList reads m[key], a non-empty list of distinct values out of
// values, or def when absent.
func (d *decoder) enumList(field string, m map[string]any, key string, values, def []string) ([]string, bool) {
	v, ok := get(m, key)
	if !ok {
		return def, true
	}
	l, ok := d.list(field, v)
	if !ok {
		return nil, false
	}
	if len(l) == 0 {
		d.errorf(field, "must not be empty (one or more of %s)", strings.Join(values, ", "))
		return nil, false
	}
	var out []string
	good := true
	for i, item := range l {
		s, ok := d.str(index(field, i), item)
		if !ok {
			good = false
			continue
		}
		if !contains(values, s) {
			d.errorf(index(field, i), "%q is not one of %s", s, strings.Join(values, ", "))
			good = false
			continue
		}
		if contains(out, s) {
			d.errorf(index(field, i), "%q is listed twice", s)
			good = false
			continue
		}
		out = append(out, s)
	}
	return out, good
}

// durationRange reads {min, max}: both required, min <= max, and min above
// zero unless allowZero.
func (d *decoder) durationRange(field string, v any, allowZero bool) (Range, bool) {
	m := d.object(field, v, "min", "max")
	if m == nil {
		return Range{}, false
	}
	var r Range
	good := true
	if v, ok := d.required(field, m, "min"); ok {
		r.Min, ok = d.duration(join(field, "min"), v, allowZero)
		good = good && ok
	} else {
		good = false
	}
	if v, ok := d.required(field, m, "max"); ok {
		r.Max, ok = d.duration(join(field, "max"), v, false)
		good = good && ok
	} else {
		good = false
	}
	if good && r.Min > r.Max {
		d.errorf(field, "min %s is above max %s: the range is empty", r.Min, r.Max)
		good = false
	}
	return r, good
}

// LimitChaos shortens every chaos step of sc to at most d (and its holds
// with it), for a quick run of a long experiment; it returns how many
// steps it shortened.
func LimitChaos(sc *Scenario, d time.Duration) int {
	n := 0
	for i := range sc.Steps {
		c := sc.Steps[i].Chaos
		if c == nil || c.Duration <= d {
			continue
		}
		c.Duration = d
		c.Hold.Min = min(c.Hold.Min, d)
		c.Hold.Max = min(c.Hold.Max, d)
		n++
	}
	return n
}

// ParseRange reads the "MIN..MAX" of flag; empty means the default (the
// zero Range).
func ParseRange(flag, s string) (Range, error) {
	if s == "" {
		return Range{}, nil
	}
	lo, hi, ok := strings.Cut(s, "..")
	if !ok {
		return Range{}, fmt.Errorf("%s %q: want MIN..MAX, like 1s..8s", flag, s)
	}
	var r Range
	var err error
	if r.Min, err = ParseDuration(lo); err != nil {
		return r, fmt.Errorf("%s: %w", flag, err)
	}
	if r.Max, err = ParseDuration(hi); err != nil {
		return r, fmt.Errorf("%s: %w", flag, err)
	}
	return r, nil
}
