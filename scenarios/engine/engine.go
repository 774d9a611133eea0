// Package engine runs scenario files (package scenarios) against a Target
// (the simulator, sim/target, or real clusters): it checks that the target
// can perform every step, builds the topology, applies the manifests,
// executes every step with its expectations, and ends with a Jepsen-style
// check that nothing is lost or stale once every fault is healed. It
// imports no target: internal/run (for cmd/meshbed) wires one in.
package engine

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/meshbed/meshbed/scenarios"
)

// Options of a run.
type Options struct {
	// Progress receives human-readable progress; nil discards it.
	Progress io.Writer
	// SettleTimeout bounds every wait for the mesh to converge (after the
	// manifests, and in the final check); zero means 60 s.
	SettleTimeout time.Duration
	// Keep, when set, is called after the final check and before teardown
	// (the CLI's --keep waits there for Ctrl-C).
	Keep func()

	// NewTarget, when set, makes a fresh target for every replay of a
	// failed chaos step's shrinking (shrink.go); without it nothing is
	// shrunk. ShrinkBudget bounds the shrinking (zero: DefaultShrinkBudget).
	NewTarget    func() Target
	ShrinkBudget time.Duration

	// schedules replaces the drawn schedule of chaos steps, by step index
	// (shrinking's replays).
	schedules map[int][]Fault
}

// Substituter is a Target that replaces images (Kind, without a
// registry); the report lists what it replaced.
type Substituter interface {
	Substitutions() []string
}

// ErrEnvironment wraps failures of the environment (not root, a kernel
// feature missing, the mesh failing to come up): the scenario could not be
// judged.
var ErrEnvironment = errors.New("environment")

// Session is a running scenario: the mesh is up and steps can be run one
// by one (the CLI's sim verbs do that by hand).
type Session struct {
	r      *runner
	closed bool
}

// Start checks that t can perform every step of sc (an error wrapping
// ErrUnsupported names each step it cannot), builds the mesh of sc on t,
// applies its manifests and waits for the mesh to converge. The error wraps
// ErrEnvironment when the mesh could not come up. Close the session when
// done; it closes t.
func Start(ctx context.Context, sc *scenarios.Scenario, t Target, opts Options) (*Session, error) {
	if err := CheckSupported(sc, t); err != nil {
		return nil, err
	}
	if opts.Progress == nil {
		opts.Progress = io.Discard
	}
	if opts.SettleTimeout == 0 {
		opts.SettleTimeout = 60 * time.Second
	}
	r := &runner{sc: sc, t: t, opts: opts, progress: scenarios.NewProgress(opts.Progress),
		traffic: map[string]*stream{}, start: time.Now()}
	r.report = &scenarios.Report{Scenario: sc.Name, Target: t.Name(), Seed: sc.Seed, Steps: []scenarios.StepReport{}}
	r.progress.Begin(sc)
	err := t.Up(ctx, sc)
	if err == nil {
		err = r.bringUp(ctx)
	}
	r.progress.BringUp(time.Since(r.start), err)
	if err != nil {
		t.Close()
		return nil, fmt.Errorf("%w: bring-up: %w", ErrEnvironment, err)
	}
	r.report.BringUpSeconds = seconds(time.Since(r.start))
	return &Session{r: r}, nil
}

// Step runs one step with its expectations and records it in the report.
func (s *Session) Step(ctx context.Context, st *scenarios.Step) scenarios.StepReport {
	s.r.progress.StepStarted(st)
	rep := s.r.step(ctx, st)
	s.r.collectWarnings(ctx)
	s.r.report.Steps = append(s.r.report.Steps, rep)
	s.r.progress.StepDone(rep)
	return rep
}

// Finish stops every traffic stream still running, runs the final check
// and returns the complete report.
func (s *Session) Finish(ctx context.Context) *scenarios.Report {
	r := s.r
	r.mu.Lock()
	streams := r.traffic
	r.traffic = map[string]*stream{}
	r.mu.Unlock()
	for _, st := range streams {
		st.stop()
	}
	r.collectWarnings(ctx)
	if s, ok := r.t.(Substituter); ok {
		r.report.Substitutions = s.Substitutions()
	}
	fin := r.final(ctx)
	r.collectEvents(ctx)
	r.report.Final = fin
	r.progress.Final(fin)
	passed := fin.Passed
	for _, st := range r.report.Steps {
		passed = passed && st.Passed
	}
	r.report.Passed = passed
	r.report.DurationSeconds = seconds(time.Since(r.start))
	r.explain()
	r.progress.End(r.report)
	return r.report
}

// Close tears the mesh down.
func (s *Session) Close() error {
	if s.closed {
		return nil
	}
	s.closed = true
	return s.r.t.Close()
}

// Run runs sc on t from bring-up to the final check, and closes t. The
// report says whether it passed; an error means it could not be run (it
// wraps ErrUnsupported when t cannot perform a step, ErrEnvironment when
// the environment is at fault).
func Run(ctx context.Context, sc *scenarios.Scenario, t Target, opts Options) (*scenarios.Report, error) {
	s, err := Start(ctx, sc, t, opts)
	if err != nil {
		return nil, err
	}
	defer s.Close()
	for i := range sc.Steps {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		s.Step(ctx, &sc.Steps[i])
	}
	rep := s.Finish(ctx)
	if opts.Keep != nil {
		opts.Keep()
	}
	if !rep.Passed && s.r.lastChaos != nil && s.r.lastChaos.failure != nil {
		// Shrinking replays on fresh meshes: this one goes first.
		s.Close()
		shrunk, repro := s.r.shrink(ctx)
		if shrunk != nil {
			for i := range rep.Steps {
				if c := rep.Steps[i].Chaos; c != nil && rep.Steps[i].Name == s.r.lastChaos.st.Name && !rep.Steps[i].Passed {
					c.Shrink = shrunk
				}
			}
			rep.Repro = repro
		}
	}
	return rep, nil
}

type runner struct {
	sc       *scenarios.Scenario
	t        Target
	opts     Options
	progress *scenarios.Progress
	report   *scenarios.Report
	start    time.Time

	mu      sync.Mutex
	traffic map[string]*stream

	warned map[string]bool // warnings already in the report
	// stepBegin is when the running step began (events expectations
	// count from there).
	stepBegin time.Time

	// lastChaos is the last chaos step run, for shrinking.
	lastChaos *chaosRun
}

func seconds(d time.Duration) float64 {
	return float64(d.Round(time.Millisecond)) / float64(time.Second)
}

// bringUp applies the manifests and waits for the mesh to settle.
func (r *runner) bringUp(ctx context.Context) error {
	for _, mf := range r.sc.Manifests {
		if err := applyManifest(ctx, r.t, mf); err != nil {
			return err
		}
	}
	ctx, cancel := context.WithTimeout(ctx, r.opts.SettleTimeout)
	defer cancel()
	return r.t.Settle(ctx)
}

// outcome is what one execution of a step's action produced.
type outcome struct {
	took       time.Duration
	responses  map[string]int
	errors     int
	requests   int
	maxOutage  time.Duration
	hasTraffic bool
	// crossNode counts answers from a node other than the client's.
	crossNode int
	// capture is what the underlay showed while a curl ran (encrypted).
	capture *CaptureResult
	chaos   *scenarios.ChaosReport
}

// step runs one step: its action, then its expectations, retried (curl)
// or re-checked (everything else) until they hold when within is set.
func (r *runner) step(ctx context.Context, st *scenarios.Step) scenarios.StepReport {
	rep := scenarios.StepReport{Name: st.Name, Action: st.Action().ActionName(),
		Responses: map[string]int{}, StartSeconds: seconds(time.Since(r.start))}
	begin := time.Now()
	r.stepBegin = begin
	deadline := begin.Add(st.Expect.Within)
	_, retryAction := st.Action().(*scenarios.Curl)
	act, err := actionOf(st, r)
	var out outcome
	for attempt := 0; ; attempt++ {
		if act != nil && (attempt == 0 || retryAction) {
			t0 := time.Now()
			out, err = act.Run(ctx, r.t)
			if out.took == 0 {
				out.took = time.Since(t0)
			}
		}
		var fails []string
		if err != nil {
			fails = []string{err.Error()}
		} else {
			fails = r.check(ctx, st, out)
		}
		rep.Seconds = seconds(out.took)
		rep.Responses, rep.Errors, rep.MaxOutageSeconds = out.responses, out.errors, seconds(out.maxOutage)
		rep.Chaos = out.chaos
		if rep.Responses == nil {
			rep.Responses = map[string]int{}
		}
		if len(fails) == 0 {
			rep.Passed = true
			rep.HeldAfterSeconds = seconds(time.Since(begin))
			return rep
		}
		if err != nil && !retryAction || time.Now().After(deadline) || ctx.Err() != nil {
			rep.HeldAfterSeconds = seconds(time.Since(begin))
			rep.Message = strings.Join(fails, "; ")
			if st.Expect.Within > 0 {
				rep.Message += fmt.Sprintf(" (still failing after %s)", st.Expect.Within)
			}
			return rep
		}
		select {
		case <-ctx.Done():
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// check evaluates a step's expectations against the outcome and the mesh.
func (r *runner) check(ctx context.Context, st *scenarios.Step, out outcome) []string {
	var fails []string
	e := st.Expect
	ok := 0
	for _, n := range out.responses {
		ok += n
	}
	clusters := make([]string, 0, len(e.Responses))
	for cl := range e.Responses {
		clusters = append(clusters, cl)
	}
	sort.Strings(clusters)
	for _, cl := range clusters {
		m := e.Responses[cl]
		if !m.Match(out.responses[cl], ok) {
			fails = append(fails, fmt.Sprintf("responses from %s: %d of %d successful, want %s", cl, out.responses[cl], ok, m))
		}
	}
	if e.Errors != nil && !e.Errors.Match(out.errors, out.requests) {
		fails = append(fails, fmt.Sprintf("errors: %d of %d requests, want %s", out.errors, out.requests, *e.Errors))
	}
	if e.MaxOutage != nil && out.maxOutage > *e.MaxOutage {
		fails = append(fails, fmt.Sprintf("max outage %s, want at most %s", out.maxOutage.Round(time.Millisecond), *e.MaxOutage))
	}
	if e.Encrypted != nil {
		fails = append(fails, checkEncrypted(*e.Encrypted, out)...)
	}
	if e.Converge > 0 && out.chaos == nil {
		if err := r.converged(ctx, e.Converge); err != nil {
			fails = append(fails, err.Error())
		}
	}
	for _, b := range e.Backends {
		if err := r.checkBackends(ctx, b); err != nil {
			fails = append(fails, err.Error())
		}
	}
	for _, k := range e.KVStore {
		if err := r.checkKVStore(ctx, k); err != nil {
			fails = append(fails, err.Error())
		}
	}
	if len(e.Events) > 0 {
		fails = append(fails, r.checkEvents(ctx, r.stepBegin, e.Events)...)
	}
	return fails
}

// checkBackends reads every node's BPF service map in the cluster: the
// service's frontends must hold active backends from exactly b.From.
func (r *runner) checkBackends(ctx context.Context, b scenarios.BackendsExpect) error {
	names := map[uint32]string{}
	for _, c := range r.sc.Topology.Clusters {
		names[uint32(c.ID)] = c.Name
	}
	nodes, err := r.t.Backends(ctx, b.Cluster, b.Namespace, b.Service)
	if err != nil {
		return fmt.Errorf("backends of %s/%s in %s: %w", b.Namespace, b.Service, b.Cluster, err)
	}
	want := strings.Join(b.From, ",")
	for _, n := range nodes {
		var got []string
		for _, id := range n.ClusterIDs {
			name := names[id]
			if name == "" {
				name = fmt.Sprintf("cluster-id-%d", id)
			}
			got = append(got, name)
		}
		sort.Strings(got)
		if strings.Join(got, ",") != want {
			return fmt.Errorf("backends of %s/%s on %s/%s from [%s], want [%s]",
				b.Namespace, b.Service, b.Cluster, n.Node, strings.Join(got, ", "), strings.Join(b.From, ", "))
		}
	}
	return nil
}

func (r *runner) checkKVStore(ctx context.Context, k scenarios.KVStoreExpect) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if k.Prefix != "" {
		// A plain key prefix, as etcdctl get --prefix takes it.
		kvs, err := r.t.KVList(ctx, k.Cluster, k.Prefix)
		n := len(kvs)
		if err != nil {
			return fmt.Errorf("kvstore %s %s: %w", k.Cluster, k.Prefix, err)
		}
		if k.Count != nil && !k.Count.Match(n, n) {
			return fmt.Errorf("kvstore %s: %d keys begin with %s, want %s", k.Cluster, n, k.Prefix, *k.Count)
		}
		return nil
	}
	val, found, err := r.t.KVGet(ctx, k.Cluster, k.Key)
	if err != nil {
		return fmt.Errorf("kvstore %s %s: %w", k.Cluster, k.Key, err)
	}
	if found != k.Exists {
		if found {
			return fmt.Errorf("kvstore %s: key %s exists, want it absent", k.Cluster, k.Key)
		}
		return fmt.Errorf("kvstore %s: key %s does not exist", k.Cluster, k.Key)
	}
	if found && k.JSON != nil {
		match, err := scenarios.MatchJSONSubset(k.JSON, val)
		if err != nil {
			return fmt.Errorf("kvstore %s: key %s: %w", k.Cluster, k.Key, err)
		}
		if !match {
			return fmt.Errorf("kvstore %s: key %s is %s, which does not contain the expected fields", k.Cluster, k.Key, truncate(string(val), 200))
		}
	}
	return nil
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}

// result is one request of a curl or traffic stream.
type result struct {
	at      time.Time
	took    time.Duration
	cluster string // "" when it failed
}

// maxOutage is the longest stretch in which every request failed: from the
// start of the first failure of a run to the start of the next success (or
// the end of the last failure when no success follows).
func maxOutage(rs []result) time.Duration {
	sort.Slice(rs, func(i, j int) bool { return rs[i].at.Before(rs[j].at) })
	var worst time.Duration
	var since time.Time
	var lastEnd time.Time
	for _, res := range rs {
		if res.cluster == "" {
			if since.IsZero() {
				since = res.at
			}
			if end := res.at.Add(res.took); end.After(lastEnd) {
				lastEnd = end
			}
			continue
		}
		if !since.IsZero() {
			worst = max(worst, res.at.Sub(since))
			since = time.Time{}
		}
	}
	if !since.IsZero() {
		worst = max(worst, lastEnd.Sub(since))
	}
	return worst
}

// collectWarnings adds to the report what the agents say they enforce
// with a limitation (one line per cluster and policy) and the policies they
// rejected. It runs after every step, so a policy deleted later is still
// reported.
func (r *runner) collectWarnings(ctx context.Context) {
	if r.warned == nil {
		r.warned = map[string]bool{}
	}
	seen := r.warned
	out := r.report.Warnings
	for _, c := range r.sc.Topology.Clusters {
		warnings, rejected, err := r.t.Policies(ctx, c.Name)
		if err != nil {
			continue // a cluster that cannot answer now is asked again after the next step
		}
		for _, ref := range sortedKeys(warnings) {
			for _, w := range warnings[ref] {
				line := fmt.Sprintf("cluster %s: policy %s: %s", c.Name, ref, w)
				if !seen[line] {
					seen[line] = true
					out = append(out, line)
				}
			}
		}
		for _, ref := range sortedKeys(rejected) {
			line := fmt.Sprintf("cluster %s: policy %s rejected, the last good version stays in force: %s", c.Name, ref, rejected[ref])
			if !seen[line] {
				seen[line] = true
				out = append(out, line)
			}
		}
	}
	sort.Strings(out)
	r.report.Warnings = out
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
