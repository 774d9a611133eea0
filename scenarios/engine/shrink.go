package engine

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sort"
	"time"

	"github.com/meshbed/meshbed/scenarios"
)

// DefaultShrinkBudget bounds the shrinking of a failed chaos step.
const DefaultShrinkBudget = 4 * time.Minute

// Shrinking a failed chaos step: the failing prefix of its schedule (the
// faults injected up to the broken promise) is reduced, each candidate
// replayed on a fresh mesh (Options.NewTarget) with the steps before the
// chaos step, and kept when it breaks the same promise (same failure kind;
// for an outage, on the same stream). In order, until the budget is spent:
//
//  1. the last fault alone, then chunks of faults dropped (as ddmin does,
//     halves first, then smaller chunks);
//  2. quiet intervals cut to minQuiet;
//  3. each hold halved while the failure persists (down to minHold);
//  4. members dropped from partition groups of more than one member.
//
// A shorter hold is kept only when the outage still exceeds the bound by
// holdMargin, so that the result does not sit on the edge of the bound.
// At the end the smallest schedule is replayed once more; when it passes
// that time, the schedule accepted before it is tried, and so on (the
// confirmations may overrun the budget by confirmReplays replays), so
// that repro.yaml failed at least twice.
//
// The smallest failing schedule is written as an ordinary scenario
// (Report.Repro, repro.yaml): the steps before the chaos step, then
// explicit wait, partition, stop, restart, heal and start steps, each heal
// that leaves no fault in force expecting the step's converge, and a
// stopTraffic for every stream, with the step's maxOutage on the stream
// whose outage broke the promise.
const (
	minQuiet       = time.Second
	minHold        = 500 * time.Millisecond
	holdMargin     = 1.25
	confirmReplays = 3
)

// shrinker holds what a shrinking needs.
type shrinker struct {
	sc       *scenarios.Scenario
	step     *scenarios.Step
	opts     Options
	want     *chaosError
	deadline time.Time
	replays  int
	spent    bool
}

// shrink reduces the failing chaos step's schedule and returns its report
// and repro.yaml; nil when there is nothing to shrink.
func (r *runner) shrink(ctx context.Context) (*scenarios.ShrinkReport, []byte) {
	ch := r.lastChaos
	var ce *chaosError
	if ch == nil || r.opts.NewTarget == nil || !errors.As(ch.failure, &ce) || ce.kind == failInject || ch.injected == 0 {
		return nil, nil
	}
	budget := r.opts.ShrinkBudget
	if budget <= 0 {
		budget = DefaultShrinkBudget
	}
	t0 := time.Now()
	s := &shrinker{sc: r.sc, step: ch.st, opts: r.opts, want: ce, deadline: t0.Add(budget)}
	r.progress.Note(fmt.Sprintf("shrinking the failing schedule of %d faults (budget %s)", ch.injected, budget))
	best, msg := s.run(ctx, normalize(ch.faults[:ch.injected]))
	rep := &scenarios.ShrinkReport{Replays: s.replays, Seconds: seconds(time.Since(t0)),
		FaultsBefore: ch.injected, BudgetSpent: s.spent}
	if best == nil {
		rep.Message = "no replay reproduced the failure"
		r.progress.Note(fmt.Sprintf("shrinking: %d replays in %.1fs, none reproduced the failure", rep.Replays, rep.Seconds))
		return rep, nil
	}
	repro := reproScenario(r.sc, ch.st, best, ce, ch.streamNames())
	data, err := scenarios.Encode(repro)
	if err != nil {
		rep.Message = fmt.Sprintf("encode repro.yaml: %v", err)
		return rep, nil
	}
	rep.FaultsAfter, rep.Steps, rep.Message = len(best), len(repro.Steps), msg
	r.progress.Note(fmt.Sprintf("shrinking: %d replays in %.1fs, %d faults down to %d, repro.yaml has %d steps",
		rep.Replays, rep.Seconds, rep.FaultsBefore, rep.FaultsAfter, rep.Steps))
	return rep, data
}

func (ch *chaosRun) streamNames() []string {
	var out []string
	for _, s := range ch.streams {
		out = append(out, s.name)
	}
	return out
}

// run returns the smallest failing schedule found and its failure, or nil
// when no candidate failed the same way.
func (s *shrinker) run(ctx context.Context, prefix []Fault) ([]Fault, string) {
	var best []Fault
	type accepted struct {
		fs  []Fault
		msg string
	}
	var stack []accepted
	margin := 0.0 // the outage ratio a candidate must reach
	try := func(c []Fault) bool {
		if s.spent || ctx.Err() != nil {
			return false
		}
		if time.Now().After(s.deadline) {
			s.spent = true
			return false
		}
		ce := s.fails(ctx, c)
		if ce == nil || (ce.kind == failOutage && ce.ratio < margin) {
			return false
		}
		best = c
		stack = append(stack, accepted{c, ce.msg})
		return true
	}
	// 1. Drop faults: the last one alone, else the whole prefix, then ddmin.
	last := []Fault{prefix[len(prefix)-1]}
	if len(prefix) == 1 || !try(normalize(last)) {
		if !try(prefix) {
			return nil, ""
		}
		cur := prefix
		for n := 2; len(cur) >= 2 && !s.spent; {
			chunk := (len(cur) + n - 1) / n
			reduced := false
			for i := 0; i < len(cur); i += chunk {
				cand := normalize(append(append([]Fault(nil), cur[:i]...), cur[min(i+chunk, len(cur)):]...))
				if len(cand) > 0 && try(cand) {
					cur, reduced = cand, true
					n = max(n-1, 2)
					break
				}
			}
			if !reduced {
				if n >= len(cur) {
					break
				}
				n = min(n*2, len(cur))
			}
		}
	}
	// 2. Quiet intervals cut short.
	if quiet := compress(best, minQuiet); !sameSchedule(quiet, best) {
		try(quiet)
	}
	// 3. Holds halved while the failure persists, by a margin.
	margin = holdMargin
	for i := range best {
		for !s.spent && best[i].Hold/2 >= minHold {
			cand := append([]Fault(nil), best...)
			cand[i].Hold /= 2
			if !try(normalize(cand)) {
				break
			}
		}
	}
	margin = 0
	// 4. Partition groups with fewer members.
	for i := range best {
		p := best[i].Partition
		if p == nil {
			continue
		}
		for g := range p.Groups {
			for m := 0; len(best[i].Partition.Groups[g]) > 1 && m < len(best[i].Partition.Groups[g]) && !s.spent; {
				cand := append([]Fault(nil), best...)
				np := *best[i].Partition
				np.Groups = append([][]scenarios.Member(nil), np.Groups...)
				np.Groups[g] = append(append([]scenarios.Member(nil), np.Groups[g][:m]...), np.Groups[g][m+1:]...)
				cand[i].Partition = &np
				if !try(cand) {
					m++
				}
			}
		}
	}
	// Confirm: the result must fail again.
	for n := 0; len(stack) > 0 && n < confirmReplays && ctx.Err() == nil; n++ {
		top := stack[len(stack)-1]
		if ce := s.fails(ctx, top.fs); ce != nil {
			return top.fs, top.msg
		}
		stack = stack[:len(stack)-1]
	}
	if len(stack) == 0 {
		return nil, ""
	}
	// Out of confirmations: the last accepted schedule, failed once.
	return stack[len(stack)-1].fs, stack[len(stack)-1].msg
}

func sameSchedule(a, b []Fault) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i].At != b[i].At || a[i].Hold != b[i].Hold {
			return false
		}
	}
	return true
}

// normalize shifts a schedule so that its first fault starts after the
// quiet time it had (at most minQuiet·8), keeping every other gap.
func normalize(fs []Fault) []Fault {
	out := append([]Fault(nil), fs...)
	if len(out) == 0 {
		return out
	}
	shift := out[0].At - min(out[0].At, 8*minQuiet)
	for i := range out {
		out[i].At -= shift
	}
	return out
}

// compress cuts the quiet time before every fault that follows a heal to
// at most quiet; overlapping faults keep their offsets to each other.
func compress(fs []Fault, quiet time.Duration) []Fault {
	out := append([]Fault(nil), fs...)
	var shift, lastEnd time.Duration // lastEnd on the original clock
	for i, f := range fs {
		if gap := f.At - lastEnd; gap > quiet {
			shift += gap - quiet
		}
		out[i].At = f.At - shift
		lastEnd = max(lastEnd, f.End())
	}
	return out
}

// fails replays the scenario up to the chaos step with schedule c on a
// fresh mesh, and returns its failure when it broke the same promise.
func (s *shrinker) fails(ctx context.Context, c []Fault) *chaosError {
	s.replays++
	sc := *s.sc
	idx := -1
	for i := range s.sc.Steps {
		if s.sc.Steps[i].Index == s.step.Index {
			idx = i
		}
	}
	sc.Steps = s.sc.Steps[:idx+1]
	opts := Options{Progress: io.Discard, SettleTimeout: s.opts.SettleTimeout,
		schedules: map[int][]Fault{s.step.Index: c}}
	end := time.Duration(0)
	for _, f := range c {
		end = max(end, f.End())
	}
	rctx, cancel := context.WithTimeout(ctx, end+3*time.Minute)
	defer cancel()
	sess, err := Start(rctx, &sc, s.opts.NewTarget(), opts)
	if err != nil {
		return nil
	}
	defer sess.Close()
	for i := range sc.Steps {
		sess.Step(rctx, &sc.Steps[i])
	}
	sess.r.stopAllTraffic()
	var ce *chaosError
	got := sess.r.lastChaos
	if got == nil || !errors.As(got.failure, &ce) || ce.kind != s.want.kind || ce.stream != s.want.stream {
		return nil
	}
	return ce
}

// stopAllTraffic stops every stream still running.
func (r *runner) stopAllTraffic() {
	r.mu.Lock()
	streams := r.traffic
	r.traffic = map[string]*stream{}
	r.mu.Unlock()
	for _, st := range streams {
		st.stop()
	}
}

// reproScenario writes schedule fs of chaos step st as explicit steps
// after the steps before st.
func reproScenario(sc *scenarios.Scenario, st *scenarios.Step, fs []Fault, want *chaosError, streams []string) *scenarios.Scenario {
	out := *sc
	out.Name = sc.Name + "-repro"
	out.Description = fmt.Sprintf("Shrunk from chaos step %d (%s) of %s, seed %d: %s", st.Index, st.Name, sc.File, sc.Seed, want.msg)
	var steps []scenarios.Step
	for _, s := range sc.Steps {
		if s.Index == st.Index {
			break
		}
		steps = append(steps, s)
	}
	converge := st.Expect.Converge
	if converge == 0 {
		converge = scenarios.DefaultConverge
	}
	type event struct {
		at  time.Duration
		i   int
		end bool
	}
	var events []event
	for i, f := range fs {
		events = append(events, event{f.At, i, false}, event{f.End(), i, true})
	}
	sort.SliceStable(events, func(a, b int) bool {
		if events[a].at != events[b].at {
			return events[a].at < events[b].at
		}
		return events[a].end && !events[b].end
	})
	add := func(s scenarios.Step) { steps = append(steps, s) }
	var now time.Duration
	active := map[int]bool{}
	for _, ev := range events {
		if d := ev.at - now; d > 0 {
			add(scenarios.Step{Name: "wait " + d.String(), Wait: &scenarios.Wait{Duration: d}})
		}
		now = ev.at
		f := fs[ev.i]
		if !ev.end {
			active[ev.i] = true
			name := fmt.Sprintf("fault %d: %s %s", ev.i+1, f.Kind, f.Targets())
			switch f.Kind {
			case scenarios.FaultPartition:
				p := *f.Partition
				add(scenarios.Step{Name: name, Partition: &p})
			case scenarios.FaultStop:
				add(scenarios.Step{Name: name, Stop: &scenarios.Stop{Process: *f.Process}})
			case scenarios.FaultRestart:
				add(scenarios.Step{Name: name, Restart: &scenarios.Restart{Process: *f.Process}})
			}
			continue
		}
		delete(active, ev.i)
		heal := scenarios.Step{Name: fmt.Sprintf("heal fault %d", ev.i+1)}
		if f.Kind == scenarios.FaultStop {
			heal.Start = &scenarios.Start{Process: *f.Process}
		} else {
			heal.Heal = &scenarios.Heal{}
		}
		if len(active) == 0 {
			heal.Name += ": the mesh converges"
			heal.Expect.Converge = converge
		}
		add(heal)
		if f.Kind == scenarios.FaultPartition {
			for _, j := range sortedInts(active) {
				if p := fs[j].Partition; p != nil {
					cp := *p
					add(scenarios.Step{Name: fmt.Sprintf("fault %d again: %s", j+1, fs[j].Targets()), Partition: &cp})
				}
			}
		}
	}
	for _, name := range streams {
		s := scenarios.Step{Name: "stop " + name, StopTraffic: &scenarios.StopTraffic{Name: name}}
		if want.kind == failOutage && want.stream == name && st.Expect.MaxOutage != nil {
			d := *st.Expect.MaxOutage
			s.Expect.MaxOutage = &d
		}
		add(s)
	}
	for i := range steps {
		steps[i].Index = i + 1
	}
	out.Steps = steps
	return &out
}
