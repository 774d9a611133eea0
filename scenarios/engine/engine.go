// Package engine runs scenario files (package scenarios) against the
// simulator (package sim): it builds the topology, applies the manifests,
// executes every step with its expectations, and ends with a Jepsen-style
// check that nothing is lost or stale once every fault is healed.
package engine

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/meshbed/meshbed/datapath/state"
	"github.com/meshbed/meshbed/scenarios"
	"github.com/meshbed/meshbed/sim"
	"github.com/meshbed/meshbed/sim/kube"
)

// Options of a run.
type Options struct {
	// Progress receives human-readable progress; nil discards it.
	Progress io.Writer
	// Logger receives the mesh components' logs; nil discards them.
	Logger *slog.Logger
	// SettleTimeout bounds every wait for the mesh to converge (after the
	// manifests, and in the final check); zero means 60 s.
	SettleTimeout time.Duration
	// Keep, when set, is called with the running mesh after the final check
	// and before teardown (the CLI's --keep waits there for Ctrl-C).
	Keep func(*sim.Mesh)
}

// ErrEnvironment wraps failures of the environment (not root, a kernel
// feature missing, the mesh failing to come up): the scenario could not be
// judged.
var ErrEnvironment = errors.New("environment")

// Session is a running scenario: the mesh is up and steps can be run one
// by one (the CLI's sim verbs do that by hand).
type Session struct{ r *runner }

// Start builds the mesh of sc, applies its manifests and waits for the mesh
// to converge. The error wraps ErrEnvironment when the mesh could not come
// up. Close the session when done.
func Start(ctx context.Context, sc *scenarios.Scenario, opts Options) (*Session, error) {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Progress == nil {
		opts.Progress = io.Discard
	}
	if opts.SettleTimeout == 0 {
		opts.SettleTimeout = 60 * time.Second
	}
	r := &runner{sc: sc, opts: opts, progress: scenarios.NewProgress(opts.Progress),
		traffic: map[string]*stream{}, start: time.Now()}
	r.report = &scenarios.Report{Scenario: sc.Name, Seed: sc.Seed, Steps: []scenarios.StepReport{}}
	r.progress.Begin(sc)
	mesh, err := sim.New(ctx, specOf(sc, opts.Logger))
	if err == nil {
		r.mesh = mesh
		err = r.bringUp(ctx)
	}
	r.progress.BringUp(time.Since(r.start), err)
	if err != nil {
		if mesh != nil {
			mesh.Close()
		}
		return nil, fmt.Errorf("%w: bring-up: %w", ErrEnvironment, err)
	}
	r.report.BringUpSeconds = seconds(time.Since(r.start))
	return &Session{r: r}, nil
}

// Mesh returns the running mesh.
func (s *Session) Mesh() *sim.Mesh { return s.r.mesh }

// Step runs one step with its expectations and records it in the report.
func (s *Session) Step(ctx context.Context, st *scenarios.Step) scenarios.StepReport {
	s.r.progress.StepStarted(st)
	rep := s.r.step(ctx, st)
	s.r.collectWarnings()
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
	r.collectWarnings()
	fin := r.final(ctx)
	r.report.Final = fin
	r.progress.Final(fin)
	passed := fin.Passed
	for _, st := range r.report.Steps {
		passed = passed && st.Passed
	}
	r.report.Passed = passed
	r.report.DurationSeconds = seconds(time.Since(r.start))
	r.progress.End(r.report)
	return r.report
}

// Close tears the mesh down.
func (s *Session) Close() error { return s.r.mesh.Close() }

// Run runs sc from bring-up to the final check. The report says whether it
// passed; an error means it could not be run (it wraps ErrEnvironment when
// the environment is at fault).
func Run(ctx context.Context, sc *scenarios.Scenario, opts Options) (*scenarios.Report, error) {
	s, err := Start(ctx, sc, opts)
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
		opts.Keep(s.Mesh())
	}
	return rep, nil
}

func specOf(sc *scenarios.Scenario, log *slog.Logger) sim.Spec {
	t := sc.Topology
	spec := sim.Spec{
		KVStoreMesh: t.KVStoreMesh,
		FailStatic:  t.RemoteLoss == scenarios.RemoteLossFailStatic,
		Seed:        uint64(sc.Seed),
		Logger:      log,
		Connections: t.Connections,
	}
	if t.Routing == scenarios.RoutingNative {
		spec.Routing = state.Native
	}
	if spec.Connections == nil {
		spec.Connections = [][2]string{}
	}
	for _, c := range t.Clusters {
		spec.Clusters = append(spec.Clusters, sim.ClusterSpec{
			Name: c.Name, ID: uint32(c.ID), Nodes: c.Nodes, PodCIDR: c.PodCIDR, ServiceCIDR: c.ServiceCIDR,
		})
	}
	return spec
}

type runner struct {
	sc       *scenarios.Scenario
	opts     Options
	mesh     *sim.Mesh
	progress *scenarios.Progress
	report   *scenarios.Report
	start    time.Time

	mu      sync.Mutex
	traffic map[string]*stream

	warned map[string]bool // warnings already in the report
}

func seconds(d time.Duration) float64 {
	return float64(d.Round(time.Millisecond)) / float64(time.Second)
}

// bringUp applies the manifests and waits for the mesh to settle.
func (r *runner) bringUp(ctx context.Context) error {
	for _, mf := range r.sc.Manifests {
		if err := r.applyManifest(ctx, mf); err != nil {
			return err
		}
	}
	ctx, cancel := context.WithTimeout(ctx, r.opts.SettleTimeout)
	defer cancel()
	return r.mesh.Settle(ctx)
}

func (r *runner) applyManifest(ctx context.Context, mf scenarios.Manifest) error {
	for _, name := range mf.Clusters {
		c, ok := r.mesh.Cluster(name)
		if !ok {
			return fmt.Errorf("no cluster %q", name)
		}
		for _, obj := range mf.Objects {
			if err := c.API.Apply(ctx, obj.Object); err != nil {
				return fmt.Errorf("cluster %s: %w", name, err)
			}
		}
	}
	return nil
}

// outcome is what one execution of a step's action produced.
type outcome struct {
	took       time.Duration
	responses  map[string]int
	errors     int
	requests   int
	maxOutage  time.Duration
	hasTraffic bool
}

// step runs one step: its action, then its expectations, retried (curl)
// or re-checked (everything else) until they hold when within is set.
func (r *runner) step(ctx context.Context, st *scenarios.Step) scenarios.StepReport {
	rep := scenarios.StepReport{Name: st.Name, Action: st.Action().ActionName(),
		Responses: map[string]int{}, StartSeconds: seconds(time.Since(r.start))}
	begin := time.Now()
	deadline := begin.Add(st.Expect.Within)
	retryAction := st.Curl != nil
	var out outcome
	var err error
	for attempt := 0; ; attempt++ {
		if attempt == 0 || retryAction {
			out, err = r.act(ctx, st)
		}
		var fails []string
		if err != nil {
			fails = []string{err.Error()}
		} else {
			fails = r.check(ctx, st, out)
		}
		rep.Seconds = seconds(out.took)
		rep.Responses, rep.Errors, rep.MaxOutageSeconds = out.responses, out.errors, seconds(out.maxOutage)
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

// act executes a step's action once.
func (r *runner) act(ctx context.Context, st *scenarios.Step) (outcome, error) {
	t0 := time.Now()
	out := outcome{}
	var err error
	switch {
	case st.Apply != nil:
		err = r.applyManifest(ctx, st.Apply.Manifest)
	case st.Delete != nil:
		d := st.Delete
		err = r.cluster(d.Cluster, func(c *sim.Cluster) error {
			return c.API.Delete(ctx, d.Kind, d.Namespace, d.Name, grace(d.GracePeriod)...)
		})
	case st.Scale != nil:
		s := st.Scale
		err = r.cluster(s.Cluster, func(c *sim.Cluster) error {
			return c.API.Scale(ctx, s.Namespace, s.Deployment, int32(s.Replicas), grace(s.GracePeriod)...)
		})
	case st.Annotate != nil:
		a := st.Annotate
		err = r.cluster(a.Cluster, func(c *sim.Cluster) error { return c.API.Annotate(ctx, a.Namespace, a.Service, a.Annotations) })
	case st.Curl != nil:
		out, err = r.curl(ctx, st.Curl)
	case st.Traffic != nil:
		err = r.startTraffic(ctx, st.Traffic)
	case st.StopTraffic != nil:
		out, err = r.stopTraffic(st.StopTraffic.Name)
	case st.Partition != nil:
		p := st.Partition
		groups := make([][]sim.Member, len(p.Groups))
		for i, g := range p.Groups {
			for _, m := range g {
				groups[i] = append(groups[i], sim.Member{Cluster: m.Cluster, Node: m.Node})
			}
		}
		err = r.mesh.Partition(groups, sim.Plane(p.Plane), p.OneWay)
	case st.Heal != nil:
		err = r.mesh.Heal()
	case st.Stop != nil:
		err = r.process(st.Stop.Process, "stop")
	case st.Start != nil:
		err = r.process(st.Start.Process, "start")
	case st.Restart != nil:
		err = r.process(st.Restart.Process, "restart")
	case st.Wait != nil:
		select {
		case <-ctx.Done():
			err = ctx.Err()
		case <-time.After(st.Wait.Duration):
		}
	default:
		err = errors.New("step has no action")
	}
	if out.took == 0 {
		out.took = time.Since(t0)
	}
	return out, err
}

func (r *runner) cluster(name string, fn func(*sim.Cluster) error) error {
	c, ok := r.mesh.Cluster(name)
	if !ok {
		return fmt.Errorf("no cluster %q", name)
	}
	return fn(c)
}

func (r *runner) process(p scenarios.Process, verb string) error {
	return r.cluster(p.Cluster, func(c *sim.Cluster) error {
		return c.Process(sim.Component(p.Component), p.Node, verb)
	})
}

// curl makes count sequential requests from one pod of the source
// deployment, each a new connection.
func (r *runner) curl(ctx context.Context, cu *scenarios.Curl) (outcome, error) {
	out := outcome{responses: map[string]int{}, hasTraffic: true}
	c, ok := r.mesh.Cluster(cu.From.Cluster)
	if !ok {
		return out, fmt.Errorf("no cluster %q", cu.From.Cluster)
	}
	client, _, err := c.Client(cu.From.Namespace, cu.From.Deployment, cu.Timeout)
	if err != nil {
		return out, err
	}
	url, err := c.ResolveURL(ctx, cu.URL.String(), cu.From.Namespace)
	if err != nil {
		return out, err
	}
	t0 := time.Now()
	var results []result
	for range cu.Count {
		res := client.Get(ctx, url)
		results = append(results, result{at: res.Start, took: res.Duration, cluster: res.Cluster})
		out.requests++
		if res.Err != nil {
			out.errors++
		} else {
			out.responses[res.Cluster]++
		}
	}
	out.took = time.Since(t0)
	out.maxOutage = maxOutage(results)
	return out, nil
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
	return fails
}

// checkBackends reads every node's BPF service map in the cluster: the
// service's frontends must hold active backends from exactly b.From.
func (r *runner) checkBackends(ctx context.Context, b scenarios.BackendsExpect) error {
	c, ok := r.mesh.Cluster(b.Cluster)
	if !ok {
		return fmt.Errorf("backends: no cluster %q", b.Cluster)
	}
	names := map[uint32]string{}
	for _, o := range r.mesh.Clusters() {
		names[o.Spec().ID] = o.Name()
	}
	want := strings.Join(b.From, ",")
	for _, n := range c.Nodes() {
		clusters, err := n.ServiceBackendClusters(ctx, b.Namespace, b.Service)
		if err != nil {
			return fmt.Errorf("backends of %s/%s on %s/%s: %w", b.Namespace, b.Service, b.Cluster, n.Name(), err)
		}
		var got []string
		for _, id := range clusters {
			name := names[id]
			if name == "" {
				name = fmt.Sprintf("cluster-id-%d", id)
			}
			got = append(got, name)
		}
		sort.Strings(got)
		if strings.Join(got, ",") != want {
			return fmt.Errorf("backends of %s/%s on %s/%s from [%s], want [%s]",
				b.Namespace, b.Service, b.Cluster, n.Name(), strings.Join(got, ", "), strings.Join(b.From, ", "))
		}
	}
	return nil
}

func (r *runner) checkKVStore(ctx context.Context, k scenarios.KVStoreExpect) error {
	c, ok := r.mesh.Cluster(k.Cluster)
	if !ok {
		return fmt.Errorf("kvstore: no cluster %q", k.Cluster)
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if k.Prefix != "" {
		n, err := c.KVStoreCount(ctx, k.Prefix)
		if err != nil {
			return fmt.Errorf("kvstore %s %s: %w", k.Cluster, k.Prefix, err)
		}
		if k.Count != nil && !k.Count.Match(n, n) {
			return fmt.Errorf("kvstore %s: %d keys under %s, want %s", k.Cluster, n, k.Prefix, *k.Count)
		}
		return nil
	}
	val, found, err := c.KVStoreGet(ctx, k.Key)
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
func (r *runner) collectWarnings() {
	if r.warned == nil {
		r.warned = map[string]bool{}
	}
	seen := r.warned
	out := r.report.Warnings
	for _, c := range r.mesh.Clusters() {
		for _, n := range c.Nodes() {
			a := n.Agent()
			if a == nil {
				continue
			}
			for ref, ws := range a.PolicyWarnings() {
				for _, w := range ws {
					line := fmt.Sprintf("cluster %s: policy %s: %s", c.Name(), ref, w)
					if !seen[line] {
						seen[line] = true
						out = append(out, line)
					}
				}
			}
			for ref, err := range a.PolicyErrors() {
				line := fmt.Sprintf("cluster %s: policy %s rejected, the last good version stays in force: %v", c.Name(), ref, err)
				if !seen[line] {
					seen[line] = true
					out = append(out, line)
				}
			}
		}
	}
	sort.Strings(out)
	r.report.Warnings = out
}

// grace is a step's gracePeriodSeconds as the simulated API takes it.
func grace(g *scenarios.GracePeriod) []kube.Grace {
	if g == nil {
		return nil
	}
	return []kube.Grace{{Seconds: g.Seconds}}
}
