// Package target runs scenarios in the simulator: it implements
// engine.Target on a sim.Mesh built from the scenario's topology. It only
// translates: every action and read is the simulator's own (sim.Mesh,
// sim.Cluster, sim.Node); the engine decides what to do and what to expect.
package target

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/meshbed/meshbed/datapath/node"
	"github.com/meshbed/meshbed/datapath/state"
	"github.com/meshbed/meshbed/mesh/event"
	"github.com/meshbed/meshbed/scenarios"
	"github.com/meshbed/meshbed/scenarios/engine"
	"github.com/meshbed/meshbed/sim"
	"github.com/meshbed/meshbed/sim/kube"
	"github.com/meshbed/meshbed/sim/workload"
)

// Name is the simulator target's name in reports and errors.
const Name = "sim"

// Options of the simulator target.
type Options struct {
	// Logger receives the mesh components' logs; nil discards them.
	Logger *slog.Logger
}

// Target is the simulator as an engine.Target. Up builds its mesh; Mesh
// returns it for tools that poke it by hand (meshbed sim up).
type Target struct {
	opts Options
	mesh *sim.Mesh
}

var _ engine.Target = (*Target)(nil)

// New returns a simulator target; nothing is built before Up.
func New(opts Options) *Target {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	return &Target{opts: opts}
}

// Mesh returns the running mesh, nil before Up.
func (t *Target) Mesh() *sim.Mesh { return t.mesh }

// Name implements engine.Target.
func (t *Target) Name() string { return Name }

// Supports implements engine.Target: the simulator can do everything a
// scenario file can ask.
func (t *Target) Supports(engine.Capability) bool { return true }

// Up builds the mesh of sc's topology.
func (t *Target) Up(ctx context.Context, sc *scenarios.Scenario) error {
	if t.mesh != nil {
		return errors.New("simulated mesh is already up")
	}
	m, err := sim.New(ctx, SpecOf(sc, t.opts.Logger))
	if err != nil {
		return err
	}
	t.mesh = m
	return nil
}

// SpecOf is the simulated mesh of a scenario's topology.
func SpecOf(sc *scenarios.Scenario, log *slog.Logger) sim.Spec {
	tp := sc.Topology
	spec := sim.Spec{
		KVStoreMesh: tp.KVStoreMesh,
		FailStatic:  tp.RemoteLoss == scenarios.RemoteLossFailStatic,
		Seed:        uint64(sc.Seed),
		Logger:      log,
		Connections: tp.Connections,
	}
	if tp.Routing == scenarios.RoutingNative {
		spec.Routing = state.Native
	}
	if tp.Encryption == scenarios.EncryptionWireGuard {
		spec.Encryption = node.EncryptionWireGuard
	}
	if spec.Connections == nil {
		spec.Connections = [][2]string{}
	}
	for _, c := range tp.Clusters {
		spec.Clusters = append(spec.Clusters, sim.ClusterSpec{
			Name: c.Name, ID: uint32(c.ID), Nodes: c.Nodes, PodCIDR: c.PodCIDR, ServiceCIDR: c.ServiceCIDR,
		})
	}
	return spec
}

// Close tears the mesh down.
func (t *Target) Close() error {
	if t.mesh == nil {
		return nil
	}
	m := t.mesh
	t.mesh = nil
	return m.Close()
}

func (t *Target) up() (*sim.Mesh, error) {
	if t.mesh == nil {
		return nil, errors.New("simulated mesh is not up")
	}
	return t.mesh, nil
}

func (t *Target) cluster(name string) (*sim.Cluster, error) {
	m, err := t.up()
	if err != nil {
		return nil, err
	}
	c, ok := m.Cluster(name)
	if !ok {
		return nil, fmt.Errorf("no cluster %q", name)
	}
	return c, nil
}

// Settle implements engine.Target.
func (t *Target) Settle(ctx context.Context) error {
	m, err := t.up()
	if err != nil {
		return err
	}
	return m.Settle(ctx)
}

// Recover implements engine.Target.
func (t *Target) Recover(context.Context) error {
	m, err := t.up()
	if err != nil {
		return err
	}
	return m.Recover()
}

// Objects implements engine.Reader.
func (t *Target) Objects(ctx context.Context, cluster string) (*engine.ClusterObjects, error) {
	c, err := t.cluster(cluster)
	if err != nil {
		return nil, err
	}
	svcs, slices, pods, err := c.Objects(ctx)
	if err != nil {
		return nil, err
	}
	return &engine.ClusterObjects{Services: svcs, EndpointSlices: slices, Pods: pods}, nil
}

// Nodes implements engine.Reader.
func (t *Target) Nodes(_ context.Context, cluster string) ([]engine.NodeState, error) {
	c, err := t.cluster(cluster)
	if err != nil {
		return nil, err
	}
	var out []engine.NodeState
	for _, n := range c.Nodes() {
		s, err := n.ReadState()
		if err != nil {
			return nil, fmt.Errorf("%s/%s: %w", cluster, n.Name(), err)
		}
		ns := engine.NodeState{Node: n.Name(), Running: s.Running, Desired: s.Desired, Services: s.Services, IPCache: s.IPCache}
		if wg := n.Datapath().WireGuard(); wg != nil {
			peers, err := wg.Peers()
			if err != nil {
				return nil, fmt.Errorf("%s/%s: %w", cluster, n.Name(), err)
			}
			ns.Encryption = &engine.NodeEncryption{PublicKey: wg.PublicKey()}
			for _, p := range peers {
				ns.Encryption.Peers = append(ns.Encryption.Peers, engine.EncryptionPeer{
					PublicKey: p.PublicKey, Endpoint: p.Endpoint.Addr(), AllowedIPs: p.AllowedIPs})
			}
		}
		out = append(out, ns)
	}
	return out, nil
}

// Apply implements engine.Target.
func (t *Target) Apply(ctx context.Context, cluster string, objs []scenarios.Object) error {
	c, err := t.cluster(cluster)
	if err != nil {
		return err
	}
	for _, o := range objs {
		if err := c.API.Apply(ctx, o.Object); err != nil {
			return err
		}
	}
	return nil
}

// Delete implements engine.Target.
func (t *Target) Delete(ctx context.Context, cluster, kind, namespace, name string, grace *scenarios.GracePeriod) error {
	c, err := t.cluster(cluster)
	if err != nil {
		return err
	}
	return c.API.Delete(ctx, kind, namespace, name, kubeGrace(grace)...)
}

// Scale implements engine.Target.
func (t *Target) Scale(ctx context.Context, cluster, namespace, deployment string, replicas int, grace *scenarios.GracePeriod) error {
	c, err := t.cluster(cluster)
	if err != nil {
		return err
	}
	return c.API.Scale(ctx, namespace, deployment, int32(replicas), kubeGrace(grace)...)
}

// Annotate implements engine.Target.
func (t *Target) Annotate(ctx context.Context, cluster, namespace, service string, annotations map[string]*string) error {
	c, err := t.cluster(cluster)
	if err != nil {
		return err
	}
	return c.API.Annotate(ctx, namespace, service, annotations)
}

// Client implements engine.Target: the first running pod of the
// deployment sends, and service names resolve in the pod's cluster.
func (t *Target) Client(ctx context.Context, from scenarios.Workload, url string, timeout time.Duration) (engine.Client, error) {
	c, err := t.cluster(from.Cluster)
	if err != nil {
		return nil, err
	}
	client, pod, err := c.Client(from.Namespace, from.Deployment, timeout)
	if err != nil {
		return nil, err
	}
	resolved, err := c.ResolveURL(ctx, url, from.Namespace)
	if err != nil {
		return nil, err
	}
	return podClient{client, resolved, from.Cluster + "/" + pod.Node}, nil
}

type podClient struct {
	c    *workload.Client
	url  string
	node string // cluster/node of the client pod
}

func (p podClient) Get(ctx context.Context) engine.Result {
	res := p.c.Get(ctx, p.url)
	return engine.Result{Start: res.Start, Duration: res.Duration, Cluster: res.Cluster, Node: res.Node, Err: res.Err}
}

// SourceNode implements engine.SourceNoder.
func (p podClient) SourceNode() string { return p.node }

// Partition implements engine.Target.
func (t *Target) Partition(_ context.Context, groups [][]scenarios.Member, plane scenarios.Plane, oneWay bool) error {
	m, err := t.up()
	if err != nil {
		return err
	}
	gs := make([][]sim.Member, len(groups))
	for i, g := range groups {
		for _, mb := range g {
			gs[i] = append(gs[i], sim.Member{Cluster: mb.Cluster, Node: mb.Node})
		}
	}
	return m.Partition(gs, sim.Plane(plane), oneWay)
}

// Heal implements engine.Target.
func (t *Target) Heal(context.Context) error {
	m, err := t.up()
	if err != nil {
		return err
	}
	return m.Heal()
}

func (t *Target) process(p scenarios.Process, verb string) error {
	c, err := t.cluster(p.Cluster)
	if err != nil {
		return err
	}
	return c.Process(sim.Component(p.Component), p.Node, verb)
}

// Stop implements engine.Target.
func (t *Target) Stop(_ context.Context, p scenarios.Process) error { return t.process(p, "stop") }

// Start implements engine.Target.
func (t *Target) Start(_ context.Context, p scenarios.Process) error { return t.process(p, "start") }

// Restart implements engine.Target.
func (t *Target) Restart(_ context.Context, p scenarios.Process) error {
	return t.process(p, "restart")
}

// Backends implements engine.Target from every node's BPF service map.
func (t *Target) Backends(ctx context.Context, cluster, namespace, service string) ([]engine.NodeBackends, error) {
	c, err := t.cluster(cluster)
	if err != nil {
		return nil, err
	}
	var out []engine.NodeBackends
	for _, n := range c.Nodes() {
		ids, err := n.ServiceBackendClusters(ctx, namespace, service)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", n.Name(), err)
		}
		out = append(out, engine.NodeBackends{Node: n.Name(), ClusterIDs: ids})
	}
	return out, nil
}

// KVGet implements engine.Target.
func (t *Target) KVGet(ctx context.Context, cluster, key string) ([]byte, bool, error) {
	c, err := t.cluster(cluster)
	if err != nil {
		return nil, false, err
	}
	return c.KVStoreGet(ctx, key)
}

// KVList implements engine.Target.
func (t *Target) KVList(ctx context.Context, cluster, prefix string) (map[string][]byte, error) {
	c, err := t.cluster(cluster)
	if err != nil {
		return nil, err
	}
	return c.KVStoreScan(ctx, prefix)
}

// Policies implements engine.Target from the running agents.
func (t *Target) Policies(_ context.Context, cluster string) (map[string][]string, map[string]string, error) {
	c, err := t.cluster(cluster)
	if err != nil {
		return nil, nil, err
	}
	warnings, rejected := map[string][]string{}, map[string]string{}
	for _, n := range c.Nodes() {
		a := n.Agent()
		if a == nil {
			continue
		}
		for ref, ws := range a.PolicyWarnings() {
			warnings[ref] = appendNew(warnings[ref], ws...)
		}
		for ref, err := range a.PolicyErrors() {
			rejected[ref] = err.Error()
		}
	}
	return warnings, rejected, nil
}

func appendNew(dst []string, vs ...string) []string {
next:
	for _, v := range vs {
		for _, d := range dst {
			if d == v {
				continue next
			}
		}
		dst = append(dst, v)
	}
	return dst
}

// kubeGrace is a step's gracePeriodSeconds as the simulated API takes it.
func kubeGrace(g *scenarios.GracePeriod) []kube.Grace {
	if g == nil {
		return nil
	}
	return []kube.Grace{{Seconds: g.Seconds}}
}

// StartCapture implements engine.Capturer: a packet socket in the
// underlay's namespace.
func (t *Target) StartCapture(_ context.Context, needles []string) (engine.Capture, error) {
	m, err := t.up()
	if err != nil {
		return nil, err
	}
	c, err := m.StartCapture(needles)
	if err != nil {
		return nil, err
	}
	return capture{c}, nil
}

type capture struct{ c *sim.Capture }

func (c capture) Stop() (engine.CaptureResult, error) {
	r, err := c.c.Stop()
	return engine.CaptureResult{Packets: r.Packets, Clear: r.Clear, ClearCount: r.ClearCount}, err
}

// AddNode implements engine.NodeAdder.
func (t *Target) AddNode(ctx context.Context, cluster string) (string, error) {
	c, err := t.cluster(cluster)
	if err != nil {
		return "", err
	}
	n, err := c.AddNode(ctx)
	if err != nil {
		return "", err
	}
	return n.Name(), nil
}

var (
	_ engine.Capturer  = (*Target)(nil)
	_ engine.NodeAdder = (*Target)(nil)
)

var _ engine.EventSource = (*Target)(nil)

// Events implements engine.EventSource: the decision events the mesh's
// components recorded.
func (t *Target) Events(_ context.Context, since time.Time) ([]event.Event, error) {
	m, err := t.up()
	if err != nil {
		return nil, err
	}
	return m.Events(since), nil
}
