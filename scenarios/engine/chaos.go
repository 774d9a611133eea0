package engine

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"sort"
	"strings"
	"time"

	"github.com/meshbed/meshbed/scenarios"
)

// A chaos step (scenarios.Chaos) runs a schedule of faults drawn from the
// seed (NewSchedule) under whatever traffic streams run, and checks the
// mesh's promises as it goes:
//
//   - outage: from a fault's start until the mesh converged after its
//     heal, no running stream has a stretch longer than expect.maxOutage
//     in which every request failed, unless the stream's client cluster
//     was cut off (data plane) from every cluster that had backends for
//     its service when the step began;
//   - convergence: once no fault is in force, the final check (FinalCheck)
//     passes within expect.converge (default scenarios.DefaultConverge);
//   - no crash: at every injection, heal and convergence, every mesh
//     process runs except those the schedule stopped.
//
// The step stops at the first broken promise (the mesh is healed by the
// run's final check), so that its failing schedule is a prefix of the drawn
// one, which shrinking then reduces. When the checks take longer than the
// quiet interval, the rest of the schedule shifts later; holds and order
// never change.

type chaosAction struct {
	c  *scenarios.Chaos
	st *scenarios.Step
	r  *runner
}

func (a chaosAction) needs() []Capability {
	var caps []Capability
	for _, k := range a.c.Faults {
		switch k {
		case scenarios.FaultPartition:
			caps = append(caps, CapPartition)
			for _, p := range a.c.Planes {
				switch p {
				case scenarios.PlaneData:
					caps = append(caps, CapPartitionData)
				case scenarios.PlaneControl:
					caps = append(caps, CapPartitionControl)
				}
			}
			if a.c.OneWay {
				caps = append(caps, CapPartitionOneWay)
			}
			if a.c.Nodes {
				caps = append(caps, CapPartitionNode)
			}
		case scenarios.FaultStop, scenarios.FaultRestart:
			for _, comp := range a.c.Components {
				caps = append(caps, Capability("process/"+string(comp)))
			}
		}
	}
	seen := map[Capability]bool{}
	var out []Capability
	for _, c := range caps {
		if !seen[c] {
			seen[c] = true
			out = append(out, c)
		}
	}
	return out
}

func (a chaosAction) Run(ctx context.Context, t Target) (outcome, error) {
	r := a.r
	faults, fixed := r.opts.schedules[a.st.Index]
	if !fixed {
		faults = NewSchedule(a.c, &r.sc.Topology, r.sc.Seed, a.st.Index)
	}
	ch := &chaosRun{r: r, t: t, st: a.st, faults: faults,
		converge: a.st.Expect.Converge, maxOutage: a.st.Expect.MaxOutage,
		rep: &scenarios.ChaosReport{Seed: r.sc.Seed, Planned: len(faults), Faults: []scenarios.FaultReport{}}}
	if ch.converge == 0 {
		ch.converge = scenarios.DefaultConverge
	}
	t0 := time.Now()
	err := ch.run(ctx)
	out := outcome{took: time.Since(t0), chaos: ch.rep, maxOutage: ch.worst}
	if err != nil {
		ch.failure = err
	}
	r.lastChaos = ch
	return out, err
}

// chaosRun is one execution of a chaos step.
type chaosRun struct {
	r         *runner
	t         Target
	st        *scenarios.Step
	faults    []Fault
	converge  time.Duration
	maxOutage *time.Duration
	rep       *scenarios.ChaosReport

	streams []*chaosStream
	// worst is the longest outage that counted.
	worst time.Duration
	// failure is the first broken promise, with its kind.
	failure error
	// injected counts the faults injected: the schedule's failing prefix.
	injected int
}

// chaosStream is a traffic stream as the checker sees it.
type chaosStream struct {
	name string
	s    *stream
	from scenarios.Workload
	// backends are the clusters that had backends for the stream's
	// service, seen from its client's cluster, when the step began; nil
	// when the URL names no service.
	backends []string
	timeout  time.Duration
	// ns and svc name the stream's service ("" when the URL names none).
	ns, svc string
}

// Failure kinds, which shrinking keeps: a smaller schedule counts only if
// it breaks the same promise.
const (
	failOutage   = "outage"
	failConverge = "converge"
	failCrash    = "crash"
	failInject   = "inject"
)

// chaosError is a broken promise of a chaos step.
type chaosError struct {
	kind string
	// stream is the stream of an outage, ratio the outage over the bound.
	stream string
	ratio  float64
	msg    string
}

func (e *chaosError) Error() string { return e.msg }

// inForce is a fault being injected.
type inForce struct {
	i     int
	f     Fault
	start time.Time
	end   time.Time
	watch *withdrawWatch
}

func (ch *chaosRun) run(ctx context.Context) error {
	if err := ch.watchStreams(ctx); err != nil {
		return err
	}
	type event struct {
		at  time.Duration
		i   int
		end bool
	}
	var events []event
	for i, f := range ch.faults {
		events = append(events, event{f.At, i, false}, event{f.End(), i, true})
	}
	sort.SliceStable(events, func(a, b int) bool {
		if events[a].at != events[b].at {
			return events[a].at < events[b].at
		}
		return events[a].end && !events[b].end
	})
	begin := time.Now()
	var lag time.Duration
	active := map[int]*inForce{}
	var healed []*inForce // healed since the mesh last converged
	for k, ev := range events {
		if err := sleepUntil(ctx, begin.Add(lag+ev.at)); err != nil {
			return err
		}
		f := ch.faults[ev.i]
		if !ev.end {
			if err := ch.checkComponents(ctx, active); err != nil {
				return err
			}
			now := time.Now()
			watch := ch.watchWithdraw(ctx, now)
			if err := ch.inject(ctx, f); err != nil {
				watch.stop()
				return &chaosError{kind: failInject, msg: fmt.Sprintf("fault %d (%s %s): %v", ev.i+1, f.Kind, f.Targets(), err)}
			}
			active[ev.i] = &inForce{i: ev.i, f: f, start: now, watch: watch}
			ch.injected = ev.i + 1
			ch.r.progress.Note(fmt.Sprintf("fault %d/%d: %s %s for %s", ev.i+1, len(ch.faults), f.Kind, f.Targets(), f.Hold))
			continue
		}
		a := active[ev.i]
		delete(active, ev.i)
		if err := ch.heal(ctx, f, active); err != nil {
			return &chaosError{kind: failInject, msg: fmt.Sprintf("fault %d (%s %s): heal: %v", ev.i+1, f.Kind, f.Targets(), err)}
		}
		a.end = time.Now()
		healed = append(healed, a)
		if len(active) > 0 {
			continue
		}
		err := ch.settle(ctx, healed)
		healed = nil
		if err != nil {
			return err
		}
		// The checks took their time: what is left of the schedule starts
		// no earlier than now.
		if k+1 < len(events) {
			if late := time.Since(begin) - (lag + events[k+1].at); late > 0 {
				lag += late
			}
		}
	}
	return nil
}

func sleepUntil(ctx context.Context, t time.Time) error {
	d := time.Until(t)
	if d <= 0 {
		return ctx.Err()
	}
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(d):
		return nil
	}
}

// watchStreams takes the running traffic streams and the clusters that
// back each one's service.
func (ch *chaosRun) watchStreams(ctx context.Context) error {
	r := ch.r
	r.mu.Lock()
	names := sortedKeys(r.traffic)
	streams := map[string]*stream{}
	for _, n := range names {
		streams[n] = r.traffic[n]
	}
	r.mu.Unlock()
	for _, n := range names {
		s := streams[n]
		cs := &chaosStream{name: n, s: s, from: s.from, timeout: s.timeout}
		if ns, svc, ok := serviceOf(s.url, s.from.Namespace); ok {
			cs.ns, cs.svc = ns, svc
			bs, err := ch.backendClusters(ctx, cs)
			if err != nil {
				return err
			}
			cs.backends = bs
		}
		ch.streams = append(ch.streams, cs)
	}
	return nil
}

// backendClusters reads, on every node of the stream's client cluster, the
// clusters that back its service, as a sorted set.
func (ch *chaosRun) backendClusters(ctx context.Context, s *chaosStream) ([]string, error) {
	nodes, err := ch.t.Backends(ctx, s.from.Cluster, s.ns, s.svc)
	if err != nil {
		return nil, fmt.Errorf("backends of %s/%s seen from %s: %w", s.ns, s.svc, s.from.Cluster, err)
	}
	names := map[uint32]string{}
	for _, c := range ch.r.sc.Topology.Clusters {
		names[uint32(c.ID)] = c.Name
	}
	seen := map[string]bool{}
	for _, nb := range nodes {
		for _, id := range nb.ClusterIDs {
			seen[names[id]] = true
		}
	}
	out := sortedKeys(seen)
	if out == nil {
		out = []string{}
	}
	return out, nil
}

// withdrawWatch polls, during one fault, which clusters back each stream's
// service from its client cluster, and notes when that first changed: the
// time the mesh took to withdraw (or add back) backends.
type withdrawWatch struct {
	cancel context.CancelFunc
	done   chan struct{}
	// changed maps a stream to the first change after the fault's start.
	changed map[string]time.Duration
}

func (ch *chaosRun) watchWithdraw(ctx context.Context, start time.Time) *withdrawWatch {
	wctx, cancel := context.WithCancel(ctx)
	w := &withdrawWatch{cancel: cancel, done: make(chan struct{}), changed: map[string]time.Duration{}}
	base := map[string]string{}
	for _, s := range ch.streams {
		if s.svc == "" {
			continue
		}
		if bs, err := ch.backendClusters(wctx, s); err == nil {
			base[s.name] = strings.Join(bs, ",")
		}
	}
	go func() {
		defer close(w.done)
		for len(w.changed) < len(base) {
			if sleepUntil(wctx, time.Now().Add(100*time.Millisecond)) != nil {
				return
			}
			for _, s := range ch.streams {
				b, ok := base[s.name]
				if _, seen := w.changed[s.name]; !ok || seen {
					continue
				}
				bs, err := ch.backendClusters(wctx, s)
				if err == nil && strings.Join(bs, ",") != b {
					w.changed[s.name] = time.Since(start)
				}
			}
		}
	}()
	return w
}

// stop ends the watch; changed is complete after it.
func (w *withdrawWatch) stop() {
	w.cancel()
	<-w.done
}

// serviceOf reads the service of a URL whose host is a service name
// ("rebel-base", "rebel-base.default", "rebel-base.default.svc...").
func serviceOf(raw, namespace string) (ns, svc string, ok bool) {
	u, err := url.Parse(raw)
	if err != nil {
		return "", "", false
	}
	host := u.Hostname()
	if host == "" || strings.Trim(host, "0123456789.") == "" {
		return "", "", false // an IP address
	}
	parts := strings.Split(host, ".")
	if len(parts) == 1 {
		return namespace, parts[0], true
	}
	return parts[1], parts[0], true
}

func (ch *chaosRun) inject(ctx context.Context, f Fault) error {
	switch f.Kind {
	case scenarios.FaultPartition:
		return ch.t.Partition(ctx, f.Partition.Groups, f.Partition.Plane, f.Partition.OneWay)
	case scenarios.FaultStop:
		return ch.t.Stop(ctx, *f.Process)
	case scenarios.FaultRestart:
		return ch.t.Restart(ctx, *f.Process)
	}
	return fmt.Errorf("unknown fault kind %q", f.Kind)
}

// heal ends a fault. Heal removes every partition, so the partitions still
// in force are cut again at once.
func (ch *chaosRun) heal(ctx context.Context, f Fault, active map[int]*inForce) error {
	switch f.Kind {
	case scenarios.FaultPartition:
		if err := ch.t.Heal(ctx); err != nil {
			return err
		}
		for _, i := range sortedInts(active) {
			if p := active[i].f.Partition; p != nil {
				if err := ch.t.Partition(ctx, p.Groups, p.Plane, p.OneWay); err != nil {
					return fmt.Errorf("cut fault %d again: %w", i+1, err)
				}
			}
		}
	case scenarios.FaultStop:
		return ch.t.Start(ctx, *f.Process)
	}
	return nil
}

func sortedInts[V any](m map[int]V) []int {
	out := make([]int, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Ints(out)
	return out
}

// expectedDown is what the faults in force stopped: a stopped apiserver
// takes its cluster's kvstoremesh with it.
func expectedDown(active map[int]*inForce) map[scenarios.Process]bool {
	down := map[scenarios.Process]bool{}
	for _, a := range active {
		p := a.f.Process
		if a.f.Kind != scenarios.FaultStop || p == nil {
			continue
		}
		down[*p] = true
		if p.Component == scenarios.ComponentAPIServer {
			down[scenarios.Process{Component: scenarios.ComponentKVStoreMesh, Cluster: p.Cluster}] = true
		}
	}
	return down
}

// checkComponents fails when a mesh process is down that no fault in
// force stopped.
func (ch *chaosRun) checkComponents(ctx context.Context, active map[int]*inForce) error {
	down := expectedDown(active)
	var bad []string
	for _, c := range ch.r.sc.Topology.Clusters {
		cs, err := ch.t.Components(ctx, c.Name)
		if err != nil {
			return fmt.Errorf("components of %s: %w", c.Name, err)
		}
		for _, s := range cs {
			if s.Running || down[s.Process] {
				continue
			}
			what := processName(s.Process) + " is not running"
			if s.Exited != "" {
				what = processName(s.Process) + " exited: " + s.Exited
			}
			bad = append(bad, what)
		}
	}
	if bad != nil {
		return &chaosError{kind: failCrash, msg: "no fault stopped it, yet " + strings.Join(bad, "; ")}
	}
	return nil
}

func processName(p scenarios.Process) string {
	if p.Node != "" {
		return fmt.Sprintf("%s of %s/%s", p.Component, p.Cluster, p.Node)
	}
	return fmt.Sprintf("%s of %s", p.Component, p.Cluster)
}

// settle runs once no fault is in force: it waits until the final check
// passes (at most converge), then measures what every stream saw from the
// start of each healed fault until then, and records the faults.
func (ch *chaosRun) settle(ctx context.Context, healed []*inForce) error {
	lastHeal := healed[len(healed)-1].end
	deadline := lastHeal.Add(ch.converge)
	var checkErr error
	converged := time.Time{}
	for {
		checkErr = ch.checkComponents(ctx, nil)
		if checkErr == nil {
			cctx, cancel := context.WithDeadline(ctx, deadline.Add(5*time.Second))
			checkErr = FinalCheck(cctx, ch.t, &ch.r.sc.Topology)
			cancel()
		}
		if checkErr == nil {
			converged = time.Now()
			break
		}
		// A component started again may take its time (a pod on a real
		// cluster): it too must be back within converge.
		if time.Now().After(deadline) || ctx.Err() != nil {
			break
		}
		if err := sleepUntil(ctx, time.Now().Add(200*time.Millisecond)); err != nil {
			return err
		}
	}
	windowEnd := converged
	if converged.IsZero() {
		windowEnd = time.Now()
	}
	// Requests still in flight at the end of the window belong to it.
	var wait time.Duration
	for _, s := range ch.streams {
		wait = max(wait, s.timeout)
	}
	if err := sleepUntil(ctx, windowEnd.Add(wait+50*time.Millisecond)); err != nil {
		return err
	}
	for _, a := range healed {
		a.watch.stop()
	}
	var firstErr error
	for _, a := range healed {
		fr := scenarios.FaultReport{
			Index: a.i + 1, Kind: string(a.f.Kind), Targets: a.f.Targets(), Clusters: a.f.Clusters(),
			PlannedSeconds: seconds(a.f.At), HoldSeconds: seconds(a.f.Hold),
			StartSeconds: seconds(a.start.Sub(ch.r.start)), EndSeconds: seconds(a.end.Sub(ch.r.start)),
			ConvergeSeconds: -1, Outages: []scenarios.OutageReport{}, Passed: true,
		}
		if !converged.IsZero() {
			fr.ConvergeSeconds = seconds(converged.Sub(lastHeal))
		}
		var fails []string
		for _, s := range ch.streams {
			o, counted := ch.outage(s, a, windowEnd)
			if d, ok := a.watch.changed[s.name]; ok {
				sec := seconds(d)
				o.BackendsChangedSeconds = &sec
			}
			fr.Outages = append(fr.Outages, o)
			if !counted {
				continue
			}
			d := time.Duration(o.Seconds * float64(time.Second))
			ch.worst = max(ch.worst, d)
			if ch.maxOutage != nil && d > *ch.maxOutage {
				msg := fmt.Sprintf("stream %s (%s): outage %s, want at most %s", s.name, s.from, d.Round(time.Millisecond), *ch.maxOutage)
				fails = append(fails, msg)
				if firstErr == nil {
					firstErr = &chaosError{kind: failOutage, stream: s.name, ratio: float64(d) / float64(*ch.maxOutage),
						msg: fmt.Sprintf("fault %d (%s %s): %s", a.i+1, a.f.Kind, a.f.Targets(), msg)}
				}
			}
		}
		if checkErr != nil {
			var ce *chaosError
			kind := failConverge
			msg := fmt.Sprintf("the final check did not pass within %s of the heal: %v", ch.converge, checkErr)
			if errors.As(checkErr, &ce) {
				kind, msg = ce.kind, ce.msg
			}
			fails = append(fails, msg)
			if firstErr == nil {
				firstErr = &chaosError{kind: kind, msg: fmt.Sprintf("fault %d (%s %s): %s", a.i+1, a.f.Kind, a.f.Targets(), msg)}
			}
		}
		if fails != nil {
			fr.Passed = false
			fr.Message = strings.Join(fails, "; ")
		}
		ch.rep.Faults = append(ch.rep.Faults, fr)
		ch.r.progress.Note(faultLine(fr))
	}
	return firstErr
}

func faultLine(fr scenarios.FaultReport) string {
	worst := 0.0
	for _, o := range fr.Outages {
		if o.Excused == "" {
			worst = max(worst, o.Seconds)
		}
	}
	conv := "did not converge"
	if fr.ConvergeSeconds >= 0 {
		conv = fmt.Sprintf("converged in %.2fs", fr.ConvergeSeconds)
	}
	status := "ok"
	if !fr.Passed {
		status = "FAIL: " + fr.Message
	}
	return fmt.Sprintf("fault %d healed: max outage %.2fs, %s — %s", fr.Index, worst, conv, status)
}

// outage measures what stream s saw from the fault's start until end; it
// counts unless the client's cluster was cut off from every backend.
func (ch *chaosRun) outage(s *chaosStream, a *inForce, end time.Time) (scenarios.OutageReport, bool) {
	s.s.mu.Lock()
	var rs []result
	for _, res := range s.s.results {
		if !res.at.Before(a.start) && res.at.Before(end) {
			rs = append(rs, res)
		}
	}
	s.s.mu.Unlock()
	o := scenarios.OutageReport{Stream: s.name, From: s.from.String(), Requests: len(rs)}
	for _, res := range rs {
		if res.cluster == "" {
			o.Errors++
		}
	}
	o.Seconds = seconds(maxOutage(rs))
	o.Excused = excuse(s, a.f)
	return o, o.Excused == ""
}

// excuse says why a fault may cut a stream off from every backend, or "".
// A cluster named by node may hold the client's pod on the cut node, so it
// counts as cut (the checker gives the benefit of the doubt).
func excuse(s *chaosStream, f Fault) string {
	p := f.Partition
	if p == nil || p.Plane == scenarios.PlaneControl || s.backends == nil {
		return ""
	}
	if len(s.backends) == 0 {
		return "no cluster had backends for the service"
	}
	for _, b := range s.backends {
		if !cut(p, s.from.Cluster, b) {
			return ""
		}
	}
	return fmt.Sprintf("%s was cut off from every backend cluster (%s)", s.from.Cluster, strings.Join(s.backends, ", "))
}

// cut reports whether partition p may cut pods of cluster x from pods of
// cluster b (in either direction: a one-way cut breaks TCP both ways).
func cut(p *scenarios.Partition, x, b string) bool {
	for i, gi := range p.Groups {
		for j, gj := range p.Groups {
			if i == j || (p.OneWay && i != 0 && j != 0) {
				continue
			}
			for _, m := range gi {
				if m.Cluster != x {
					continue
				}
				for _, n := range gj {
					if n.Cluster == b {
						return true
					}
				}
			}
		}
	}
	return false
}

// converged is the converge expectation of a heal, start or restart step:
// the final check passes within d of the step's action.
func (r *runner) converged(ctx context.Context, d time.Duration) error {
	deadline := time.Now().Add(d)
	for {
		cctx, cancel := context.WithDeadline(ctx, deadline.Add(5*time.Second))
		err := FinalCheck(cctx, r.t, &r.sc.Topology)
		cancel()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("the final check did not pass within %s: %w", d, err)
		}
		if err := sleepUntil(ctx, time.Now().Add(200*time.Millisecond)); err != nil {
			return err
		}
	}
}
