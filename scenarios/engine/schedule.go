package engine

import (
	"fmt"
	"io"
	"math/rand/v2"
	"sort"
	"strings"
	"time"

	"github.com/meshbed/meshbed/scenarios"
)

// Fault is one fault of a chaos schedule.
type Fault struct {
	Kind scenarios.FaultKind
	// Partition is set for a partition, Process for stop and restart.
	Partition *scenarios.Partition
	Process   *scenarios.Process
	// At is when the fault starts, counted from the chaos step's start
	// (before any delay the checks add); Hold is how long it lasts before
	// it is healed (a stopped component started again; for a restart,
	// how long the mesh is watched before it must converge).
	At, Hold time.Duration
}

// End is when the fault is healed, on the schedule's clock.
func (f Fault) End() time.Duration { return f.At + f.Hold }

// Clusters lists the clusters the fault acts on, sorted: faults in force
// at once act on distinct clusters.
func (f Fault) Clusters() []string {
	seen := map[string]bool{}
	if f.Process != nil {
		seen[f.Process.Cluster] = true
	}
	if f.Partition != nil {
		for _, g := range f.Partition.Groups {
			for _, m := range g {
				seen[m.Cluster] = true
			}
		}
	}
	return sortedKeys(seen)
}

// Targets describes what the fault acts on: "[[c1] [c2 c3/node-1]] both",
// "apiserver c2", "agent c1/node-2".
func (f Fault) Targets() string {
	switch {
	case f.Partition != nil:
		var gs []string
		for _, g := range f.Partition.Groups {
			var ms []string
			for _, m := range g {
				ms = append(ms, m.String())
			}
			gs = append(gs, "["+strings.Join(ms, " ")+"]")
		}
		s := "[" + strings.Join(gs, " ") + "] " + string(f.Partition.Plane)
		if f.Partition.OneWay {
			s += " one-way"
		}
		return s
	case f.Process != nil:
		s := string(f.Process.Component) + " " + f.Process.Cluster
		if f.Process.Node != "" {
			s += "/" + f.Process.Node
		}
		return s
	}
	return ""
}

func (f Fault) String() string {
	return fmt.Sprintf("%s %s at %s for %s", f.Kind, f.Targets(), f.At, f.Hold)
}

// NewSchedule draws the faults of a chaos step from seed: the same chaos
// step, topology and seed give the same schedule (same faults, order,
// targets and durations), on any machine. step (the step's index) tells
// two chaos steps of one file apart.
//
// Faults start within c.Duration and are healed by its end. With
// Concurrent 1, each fault follows the previous one's heal after a quiet
// interval; with more, the interval separates fault starts, and a fault
// waits for a free slot. Faults in force at once act on distinct clusters.
// Times are whole milliseconds.
func NewSchedule(c *scenarios.Chaos, tp *scenarios.Topology, seed int64, step int) []Fault {
	rng := rand.New(rand.NewPCG(uint64(seed), 0x6d65736862656400+uint64(step)))
	var out []Fault
	var cursor time.Duration
	concurrent := max(c.Concurrent, 1)
	for {
		gap := draw(rng, c.Interval)
		start := cursor + gap
		var f *Fault
		for {
			var active []Fault
			for _, a := range out {
				if a.End() > start {
					active = append(active, a)
				}
			}
			if len(active) < concurrent {
				busy := map[string]bool{}
				for _, a := range active {
					for _, cl := range a.Clusters() {
						busy[cl] = true
					}
				}
				f = pick(rng, c, tp, busy)
			}
			if f != nil || len(active) == 0 {
				break
			}
			// Wait for the next heal, then the quiet interval.
			next := active[0].End()
			for _, a := range active[1:] {
				next = min(next, a.End())
			}
			start = next + gap
		}
		if f == nil || start+c.Hold.Min > c.Duration {
			return out
		}
		f.At = start
		f.Hold = min(draw(rng, c.Hold), c.Duration-start)
		out = append(out, *f)
		if concurrent == 1 {
			cursor = f.End()
		} else {
			cursor = start
		}
	}
}

// draw picks a duration in r, in whole milliseconds.
func draw(rng *rand.Rand, r scenarios.Range) time.Duration {
	lo, hi := r.Min.Milliseconds(), r.Max.Milliseconds()
	if hi <= lo {
		return time.Duration(lo) * time.Millisecond
	}
	return time.Duration(lo+rng.Int64N(hi-lo+1)) * time.Millisecond
}

// pick draws one fault on clusters that are not busy, or nil when none of
// the kinds has a target left.
func pick(rng *rand.Rand, c *scenarios.Chaos, tp *scenarios.Topology, busy map[string]bool) *Fault {
	var free []scenarios.Cluster
	for _, cl := range tp.Clusters {
		if !busy[cl.Name] {
			free = append(free, cl)
		}
	}
	kinds := append([]scenarios.FaultKind(nil), c.Faults...)
	rng.Shuffle(len(kinds), func(i, j int) { kinds[i], kinds[j] = kinds[j], kinds[i] })
	for _, k := range kinds {
		var f *Fault
		switch k {
		case scenarios.FaultPartition:
			f = pickPartition(rng, c, free)
		case scenarios.FaultStop, scenarios.FaultRestart:
			f = pickProcess(rng, c, free, tp.KVStoreMesh)
		}
		if f != nil {
			f.Kind = k
			return f
		}
	}
	return nil
}

func pickPartition(rng *rand.Rand, c *scenarios.Chaos, free []scenarios.Cluster) *Fault {
	p := &scenarios.Partition{Plane: c.Planes[rng.IntN(len(c.Planes))]}
	if c.OneWay {
		p.OneWay = rng.IntN(2) == 0
	}
	var multi []scenarios.Cluster // free clusters of two nodes or more
	for _, cl := range free {
		if cl.Nodes >= 2 {
			multi = append(multi, cl)
		}
	}
	byNode := c.Nodes && (len(multi) > 0 || len(free) >= 2) && (len(free) < 2 || rng.IntN(3) == 0)
	switch {
	case byNode:
		// One node cut off from the rest of its cluster, or from other
		// whole clusters.
		if len(free) < 2 || (len(multi) > 0 && rng.IntN(2) == 0) {
			cl := multi[rng.IntN(len(multi))]
			names := cl.NodeNames()
			i := rng.IntN(len(names))
			var rest []scenarios.Member
			for j, n := range names {
				if j != i {
					rest = append(rest, scenarios.Member{Cluster: cl.Name, Node: n})
				}
			}
			p.Groups = [][]scenarios.Member{{{Cluster: cl.Name, Node: names[i]}}, rest}
			break
		}
		order := rng.Perm(len(free))
		cl := free[order[0]]
		node := scenarios.NodeName(1 + rng.IntN(cl.Nodes))
		others := 1 + rng.IntN(len(free)-1)
		var rest []scenarios.Member
		for _, j := range order[1 : 1+others] {
			rest = append(rest, scenarios.Member{Cluster: free[j].Name})
		}
		p.Groups = [][]scenarios.Member{{{Cluster: cl.Name, Node: node}}, rest}
	case len(free) >= 2:
		// Whole clusters: m of the free ones, split in two groups.
		m := 2 + rng.IntN(len(free)-1)
		order := rng.Perm(len(free))[:m]
		cut := 1 + rng.IntN(m-1)
		var a, b []scenarios.Member
		for i, j := range order {
			mb := scenarios.Member{Cluster: free[j].Name}
			if i < cut {
				a = append(a, mb)
			} else {
				b = append(b, mb)
			}
		}
		p.Groups = [][]scenarios.Member{a, b}
	default:
		return nil
	}
	for _, g := range p.Groups {
		sort.Slice(g, func(i, j int) bool { return g[i].String() < g[j].String() })
	}
	return &Fault{Partition: p}
}

func pickProcess(rng *rand.Rand, c *scenarios.Chaos, free []scenarios.Cluster, kvstoremesh bool) *Fault {
	if len(free) == 0 {
		return nil
	}
	var comps []scenarios.Component
	for _, comp := range c.Components {
		if comp != scenarios.ComponentKVStoreMesh || kvstoremesh {
			comps = append(comps, comp)
		}
	}
	if len(comps) == 0 {
		return nil
	}
	cl := free[rng.IntN(len(free))]
	p := &scenarios.Process{Component: comps[rng.IntN(len(comps))], Cluster: cl.Name}
	if p.Component == scenarios.ComponentAgent {
		p.Node = scenarios.NodeName(1 + rng.IntN(cl.Nodes))
	}
	return &Fault{Process: p}
}

// PrintPlan writes the fault schedule that every chaos step of sc draws
// from its seed, without running anything.
func PrintPlan(w io.Writer, sc *scenarios.Scenario) {
	for _, st := range sc.Steps {
		if st.Chaos == nil {
			continue
		}
		faults := NewSchedule(st.Chaos, &sc.Topology, sc.Seed, st.Index)
		fmt.Fprintf(w, "step %d (%s), seed %d: %d faults\n", st.Index, st.Name, sc.Seed, len(faults))
		for i, f := range faults {
			fmt.Fprintf(w, "  %3d  %s\n", i+1, f)
		}
	}
}
