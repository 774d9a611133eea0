// Package agent is the per-node mesh agent. It watches the local Kubernetes
// API and every remote cluster (directly, or through the local kvstoremesh
// cache), merges global services, resolves identities and policy, owns the
// node's endpoints (address management and plumbing on request of the CNI
// path), and hands the node's complete desired datapath state to a
// state.Datapath.
//
// The agent never touches netlink or BPF itself: plumbing and the datapath
// are interfaces, supplied by cmd/meshbed-agent on a real node and by the
// simulator on a virtual one.
package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"sort"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/dynamic/dynamicinformer"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"

	"github.com/meshbed/meshbed/datapath/monitor"
	"github.com/meshbed/meshbed/datapath/state"
	"github.com/meshbed/meshbed/mesh/flow"
	"github.com/meshbed/meshbed/mesh/identity"
	"github.com/meshbed/meshbed/mesh/policy"
	"github.com/meshbed/meshbed/mesh/remote"
	"github.com/meshbed/meshbed/mesh/service"
	"github.com/meshbed/meshbed/mesh/wire"
)

// CiliumNetworkPolicies is the resource the agent reads CNPs from.
var CiliumNetworkPolicies = schema.GroupVersionResource{Group: "cilium.io", Version: "v2", Resource: "ciliumnetworkpolicies"}

// Defaults.
const (
	DefaultSyncTimeout = 30 * time.Second
	DefaultCoalesce    = 5 * time.Millisecond
)

// DefaultConfig is the agent's configuration before the environment
// (names, clients, datapath, remote, state directory, logger) is filled in.
// The meshbed-agent binary takes its flags' defaults from it and the
// simulator starts every agent from it, so the two cannot drift apart;
// New itself still fills in zero durations and MaxConnectedClusters.
func DefaultConfig() Config {
	return Config{
		MaxConnectedClusters: wire.MaxConnectedClusters255,
		Mode:                 service.ModeWithdraw,
		PolicyAllClusters:    false,
		PolicyAllowLocalhost: true,
		SyncTimeout:          DefaultSyncTimeout,
		Coalesce:             DefaultCoalesce,
	}
}

// Config of an agent.
type Config struct {
	ClusterName          string
	ClusterID            uint32
	MaxConnectedClusters uint32
	NodeName             string

	Kube    kubernetes.Interface
	Dynamic dynamic.Interface

	Datapath state.Datapath
	Plumber  state.Plumber
	// Monitor is the node datapath's flow events; the agent observes them
	// (Flows) when set.
	Monitor monitor.Source
	// Remote delivers the state of remote clusters; nil runs a single
	// cluster.
	Remote Remote

	// Mode says what happens to an unreachable cluster's backends.
	Mode service.Mode
	// PolicyAllClusters makes CNP selectors without a cluster label match
	// every cluster (the pre-1.19 Cilium default).
	PolicyAllClusters bool
	// PolicyAllowLocalhost lets the node itself reach every local endpoint
	// whatever the policy (Cilium's allow-localhost), so kubelet probes keep
	// working on a real node.
	PolicyAllowLocalhost bool
	// SyncTimeout bounds how long the agent waits for remote services to
	// sync before it programs services (and so prunes stale backends).
	SyncTimeout time.Duration
	// Coalesce is how long a change waits for more before the desired
	// state is recomputed.
	Coalesce time.Duration
	// Restored is what the node's datapath holds when the agent starts (an
	// earlier agent's work). Until remote services have synced, the agent
	// keeps its services and never drops its ipcache entries or nodes, so
	// a restart does not cut established connections.
	Restored *state.State
	// WireguardPubKey is this node's WireGuard public key (from its
	// datapath), which the agent publishes on its Node object
	// (wire.WireguardPubKeyAnnotation) for the mesh-apiserver to export.
	// Empty: the node does not encrypt, and an annotation left by an
	// earlier configuration is removed, so no peer keeps sending to a key
	// nobody holds.
	WireguardPubKey string
	// StateDir keeps the node's endpoints across agent restarts, so a
	// restarted agent restores them instead of tearing them down. Empty
	// keeps them in memory only.
	StateDir string

	Logger *slog.Logger
}

// Remote is the agent's view of the remote clusters (a *remote.Manager).
// Run delivers changes to sink until ctx ends.
type Remote interface {
	Run(ctx context.Context, sink RemoteSink) error
}

// RemoteSink receives the state of remote clusters; mesh/remote's Manager
// drives it. An unreachable cluster keeps its identities and ipcache
// entries; its backends are withdrawn unless the agent runs fail-static.
type RemoteSink = remote.Sink

// Agent is one node's agent.
type Agent struct {
	cfg Config
	log *slog.Logger

	ids      *identity.Cache
	alloc    *identity.Allocator
	factory  informers.SharedInformerFactory
	dfactory dynamicinformer.DynamicSharedInformerFactory
	svcInf   cache.SharedIndexInformer
	sliceInf cache.SharedIndexInformer
	podInf   cache.SharedIndexInformer
	nodeInf  cache.SharedIndexInformer
	npInf    cache.SharedIndexInformer
	nsInf    cache.SharedIndexInformer
	cnpInf   cache.SharedIndexInformer

	dirty  chan struct{}
	runCtx context.Context // for work started by informer events
	flows  *flow.Observer  // nil without Config.Monitor

	mu        sync.Mutex
	remotes   map[string]*remoteCluster
	policies  *policy.Repository
	badPolicy map[policy.Ref]error
	warnings  map[policy.Ref][]string // accepted policies enforced with a limitation
	endpoints map[string]*endpoint    // by pod namespace/name
	ipam      *ipam
	started   time.Time
	synced    bool // services may be programmed (remote services synced or timed out)
	last      *state.State
	lastErr   error
	decisions []service.Decision
	applied   chan struct{} // closed and replaced after every Apply
}

// New validates cfg and returns an agent; Run starts it.
func New(cfg Config) (*Agent, error) {
	if err := wire.ValidateClusterName(cfg.ClusterName); err != nil {
		return nil, fmt.Errorf("agent: cluster name: %w", err)
	}
	if cfg.MaxConnectedClusters == 0 {
		cfg.MaxConnectedClusters = wire.MaxConnectedClusters255
	}
	if err := wire.ValidateClusterID(cfg.ClusterID, cfg.MaxConnectedClusters); err != nil {
		return nil, fmt.Errorf("agent: cluster %q: %w", cfg.ClusterName, err)
	}
	switch {
	case cfg.NodeName == "":
		return nil, errors.New("agent: node name is required")
	case cfg.Kube == nil || cfg.Dynamic == nil:
		return nil, errors.New("agent: Kubernetes clients are required")
	case cfg.Datapath == nil:
		return nil, errors.New("agent: a datapath is required")
	}
	if cfg.SyncTimeout == 0 {
		cfg.SyncTimeout = DefaultSyncTimeout
	}
	if cfg.Coalesce == 0 {
		cfg.Coalesce = DefaultCoalesce
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	log := cfg.Logger.With("cluster", cfg.ClusterName, "node", cfg.NodeName)
	ids, err := identity.NewCache(cfg.Dynamic, identity.Config{
		Cluster: cfg.ClusterName, ClusterID: cfg.ClusterID,
		MaxConnectedClusters: cfg.MaxConnectedClusters, Logger: log,
	})
	if err != nil {
		return nil, fmt.Errorf("agent: %w", err)
	}
	repo, err := policy.NewRepository(policy.Config{ClusterName: cfg.ClusterName,
		AllClusters: cfg.PolicyAllClusters, AllowLocalhost: cfg.PolicyAllowLocalhost})
	if err != nil {
		return nil, fmt.Errorf("agent: %w", err)
	}
	f := informers.NewSharedInformerFactory(cfg.Kube, 0)
	df := dynamicinformer.NewDynamicSharedInformerFactory(cfg.Dynamic, 0)
	a := &Agent{
		cfg: cfg, log: log,
		ids: ids, alloc: identity.NewAllocator(cfg.Dynamic, ids),
		factory: f, dfactory: df,
		svcInf:    f.Core().V1().Services().Informer(),
		sliceInf:  f.Discovery().V1().EndpointSlices().Informer(),
		podInf:    f.Core().V1().Pods().Informer(),
		nodeInf:   f.Core().V1().Nodes().Informer(),
		npInf:     f.Networking().V1().NetworkPolicies().Informer(),
		nsInf:     f.Core().V1().Namespaces().Informer(),
		cnpInf:    df.ForResource(CiliumNetworkPolicies).Informer(),
		dirty:     make(chan struct{}, 1),
		remotes:   map[string]*remoteCluster{},
		policies:  repo,
		badPolicy: map[policy.Ref]error{},
		warnings:  map[policy.Ref][]string{},
		endpoints: map[string]*endpoint{},
		applied:   make(chan struct{}),
	}
	changed := cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { a.markDirty() },
		UpdateFunc: func(any, any) { a.markDirty() },
		DeleteFunc: func(any) { a.markDirty() },
	}
	for _, inf := range []cache.SharedIndexInformer{a.svcInf, a.sliceInf, a.nodeInf} {
		_, _ = inf.AddEventHandler(changed)
	}
	_, _ = a.podInf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { a.markDirty() },
		UpdateFunc: func(_, obj any) { a.podUpdated(obj); a.markDirty() },
		DeleteFunc: func(any) { a.markDirty() },
	})
	_, _ = a.cnpInf.AddEventHandler(a.policyHandler(policy.SourceCiliumNetworkPolicy))
	_, _ = a.npInf.AddEventHandler(a.policyHandler(policy.SourceNetworkPolicy))
	_, _ = a.nsInf.AddEventHandler(a.namespaceHandler())
	ids.AddHandler(a.localIdentity)
	if err := a.newFlowObserver(); err != nil {
		return nil, err
	}
	return a, nil
}

func (a *Agent) markDirty() {
	select {
	case a.dirty <- struct{}{}:
	default:
	}
}

// Run runs the agent until ctx ends.
func (a *Agent) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	defer wg.Wait()
	a.mu.Lock()
	a.runCtx = ctx
	a.mu.Unlock()
	idErr := make(chan error, 1)
	wg.Go(func() { idErr <- a.ids.Run(ctx) })
	a.factory.Start(ctx.Done())
	a.dfactory.Start(ctx.Done())
	defer a.factory.Shutdown()
	defer a.dfactory.Shutdown()
	for typ, ok := range a.factory.WaitForCacheSync(ctx.Done()) {
		if !ok {
			return fmt.Errorf("agent: informer for %v did not sync", typ)
		}
	}
	for typ, ok := range a.dfactory.WaitForCacheSync(ctx.Done()) {
		if !ok {
			return fmt.Errorf("agent: informer for %v did not sync", typ)
		}
	}
	if err := a.ids.WaitSynced(ctx); err != nil {
		return fmt.Errorf("agent: identities: %w", err)
	}
	a.mu.Lock()
	a.started = time.Now()
	node, err := a.cfg.Kube.CoreV1().Nodes().Get(ctx, a.cfg.NodeName, metav1GetOptions)
	if err != nil {
		a.mu.Unlock()
		return fmt.Errorf("agent: read own node %s: %w", a.cfg.NodeName, err)
	}
	if a.ipam, err = newIPAM(node); err != nil {
		a.mu.Unlock()
		return fmt.Errorf("agent: node %s: %w", a.cfg.NodeName, err)
	}
	if err := a.publishKey(ctx, node); err != nil {
		a.mu.Unlock()
		return fmt.Errorf("agent: node %s: %w", a.cfg.NodeName, err)
	}
	restored, rebuild, err := a.restoreEndpointsLocked()
	a.mu.Unlock()
	if err != nil {
		return fmt.Errorf("agent: restore endpoints: %w", err)
	}
	if rebuild {
		if restored, err = a.rebuildEndpoints(ctx); err != nil {
			return fmt.Errorf("agent: rebuild endpoints: %w", err)
		}
		a.log.Info("Rebuilt endpoints from Kubernetes and the datapath", "count", restored)
	} else if restored > 0 {
		a.log.Info("Restored endpoints", "count", restored)
	}
	a.log.Info("Agent started", "podCIDR", a.ipam.cidr)

	if a.flows != nil {
		wg.Go(func() {
			if err := a.flows.Run(ctx); err != nil && ctx.Err() == nil {
				a.log.Error("Flow observer stopped", "err", err)
			}
		})
	}
	if a.cfg.Remote != nil {
		wg.Go(func() {
			if err := a.cfg.Remote.Run(ctx, (*sink)(a)); err != nil && ctx.Err() == nil {
				a.log.Error("Remote clusters stopped", "err", err)
			}
		})
	}
	syncDeadline := time.NewTimer(a.cfg.SyncTimeout)
	defer syncDeadline.Stop()
	a.markDirty()
	for {
		select {
		case <-ctx.Done():
			return nil
		case err := <-idErr:
			if ctx.Err() == nil {
				return fmt.Errorf("agent: identities: %w", err)
			}
			return nil
		case <-syncDeadline.C:
			a.mu.Lock()
			if !a.synced {
				a.log.Warn("Remote services did not sync in time; programming services anyway",
					"timeout", a.cfg.SyncTimeout, "pending", a.pendingSyncLocked())
				a.synced = true
			}
			a.mu.Unlock()
			a.markDirty()
		case <-a.dirty:
			// Let a burst of changes land before recomputing.
			t := time.NewTimer(a.cfg.Coalesce)
			select {
			case <-ctx.Done():
				t.Stop()
				return nil
			case <-t.C:
			}
			a.rebuild()
		}
	}
}

// rebuild computes the desired state and hands it to the datapath.
func (a *Agent) rebuild() {
	a.mu.Lock()
	defer a.mu.Unlock()
	if !a.synced && a.allSyncedLocked() {
		a.synced = true
		a.log.Info("Remote services synced", "after", time.Since(a.started).Round(time.Millisecond))
	}
	s := &state.State{}
	var warns []error
	prev := a.last
	if prev == nil {
		prev = a.cfg.Restored
	}
	if a.synced {
		res := service.Merge(a.mergeInputLocked())
		s.Services = res.Services
		a.decisions = res.Decisions
		warns = append(warns, res.Warnings...)
	} else if prev != nil {
		// Until remotes have synced, keep what is programmed: pruning now
		// would drop backends that are merely not relisted yet.
		s.Services = prev.Services
	}
	s.Nodes = a.nodesLocked()
	s.IPCache = a.ipcacheLocked(s.Nodes)
	if !a.synced && prev != nil {
		// Likewise, remote addresses and nodes not relearnt yet stay.
		s.Nodes = keepNodes(s.Nodes, prev.Nodes)
		s.IPCache = keepIPCache(s.IPCache, prev.IPCache)
	}
	s.Endpoints = a.endpointsLocked()
	for _, w := range warns {
		a.log.Warn("Service merge", "err", w)
	}
	err := a.cfg.Datapath.Apply(s)
	if err != nil {
		a.log.Error("Datapath apply failed; will retry", "err", err)
		go func() {
			time.Sleep(100 * time.Millisecond)
			a.markDirty()
		}()
	}
	a.last, a.lastErr = s, err
	close(a.applied)
	a.applied = make(chan struct{})
}

// State returns the last desired state handed to the datapath, whether the
// datapath accepted it, and whether services are programmed (remote
// services synced or the bounded wait expired).
func (a *Agent) State() (s *state.State, applyErr error, servicesSynced bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.last, a.lastErr, a.synced
}

// Applied returns a channel closed after the next Apply.
func (a *Agent) Applied() <-chan struct{} {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.applied
}

// Decisions returns the merge decisions of the last rebuild (affinity
// fall-backs, withdrawn clusters), for flow reports.
func (a *Agent) Decisions() []service.Decision {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]service.Decision(nil), a.decisions...)
}

func (a *Agent) mergeInputLocked() *service.Input {
	in := &service.Input{Options: service.Options{LocalClusterID: a.cfg.ClusterID, Mode: a.cfg.Mode}}
	slicesBySvc := map[string][]*discoveryv1.EndpointSlice{}
	for _, o := range a.sliceInf.GetStore().List() {
		s := o.(*discoveryv1.EndpointSlice)
		name := s.Labels[discoveryv1.LabelServiceName]
		if name == "" {
			continue
		}
		key := s.Namespace + "/" + name
		slicesBySvc[key] = append(slicesBySvc[key], s)
	}
	for _, o := range a.svcInf.GetStore().List() {
		svc := o.(*corev1.Service)
		ls, err := service.FromKubernetes(svc, slicesBySvc[svc.Namespace+"/"+svc.Name])
		if err != nil {
			// The service stays usable; only the ports named here are left out.
			a.log.Warn("Service ports left out", "service", svc.Namespace+"/"+svc.Name, "err", err)
		}
		in.Local = append(in.Local, ls)
	}
	sort.Slice(in.Local, func(i, j int) bool { return in.Local[i].NamespacedName() < in.Local[j].NamespacedName() })
	for _, name := range a.remoteNamesLocked() {
		rc := a.remotes[name]
		in.Remote = append(in.Remote, service.RemoteCluster{
			Name: name, ID: rc.id, Reachable: rc.reachable, Services: rc.serviceList(),
		})
	}
	return in
}

// nodesLocked lists this cluster's nodes (from Kubernetes) and every remote
// cluster's (from the kvstore).
func (a *Agent) nodesLocked() []state.Node {
	var nodes []state.Node
	for _, o := range a.nodeInf.GetStore().List() {
		n := o.(*corev1.Node)
		ip, ok := nodeInternalIP(n)
		if !ok {
			continue
		}
		cidr, _ := netip.ParsePrefix(n.Spec.PodCIDR)
		nodes = append(nodes, state.Node{Name: n.Name, Cluster: a.cfg.ClusterName, ClusterID: a.cfg.ClusterID, IP: ip, PodCIDR: cidr,
			WireguardPubKey: n.Annotations[wire.WireguardPubKeyAnnotation]})
	}
	for _, name := range a.remoteNamesLocked() {
		nodes = append(nodes, a.remotes[name].nodeList()...)
	}
	sort.Slice(nodes, func(i, j int) bool {
		if nodes[i].Cluster != nodes[j].Cluster {
			return nodes[i].Cluster < nodes[j].Cluster
		}
		return nodes[i].Name < nodes[j].Name
	})
	return nodes
}

func nodeInternalIP(n *corev1.Node) (netip.Addr, bool) {
	for _, addr := range n.Status.Addresses {
		if addr.Type == corev1.NodeInternalIP {
			ip, err := netip.ParseAddr(addr.Address)
			return ip, err == nil
		}
	}
	return netip.Addr{}, false
}

// ipcacheLocked maps every known address to its identity: node addresses
// (host for this node's cluster, remote-node for the others), local pods
// (from Kubernetes), remote pods (from the kvstore), and the CIDR identities
// that policies need.
func (a *Agent) ipcacheLocked(nodes []state.Node) []state.IPCacheEntry {
	byPrefix := map[netip.Prefix]state.IPCacheEntry{}
	var self netip.Addr
	for _, n := range nodes {
		id := state.IdentityRemoteNode
		if n.Cluster == a.cfg.ClusterName {
			id = state.IdentityHost
			if n.Name == a.cfg.NodeName {
				self = n.IP
			}
		}
		byPrefix[netip.PrefixFrom(n.IP, n.IP.BitLen())] = state.IPCacheEntry{
			Prefix: netip.PrefixFrom(n.IP, n.IP.BitLen()), Identity: id, ClusterID: n.ClusterID,
		}
	}
	for _, name := range a.remoteNamesLocked() {
		for _, e := range a.remotes[name].ipcacheList() {
			byPrefix[e.Prefix] = e
		}
	}
	for _, o := range a.podInf.GetStore().List() {
		p := o.(*corev1.Pod)
		if p.Spec.HostNetwork || p.Status.PodIP == "" {
			continue
		}
		ip, err := netip.ParseAddr(p.Status.PodIP)
		if err != nil {
			continue
		}
		id, ok := a.ids.LookupLabels(identity.PodLabels(a.cfg.ClusterName, p.Namespace, p.Labels))
		if !ok {
			continue // not allocated yet; the identity event marks us dirty
		}
		e := state.IPCacheEntry{Prefix: netip.PrefixFrom(ip, ip.BitLen()), Identity: id, ClusterID: a.cfg.ClusterID}
		if hostIP, err := netip.ParseAddr(p.Status.HostIP); err == nil && hostIP != self {
			e.TunnelEndpoint = hostIP
		}
		byPrefix[e.Prefix] = e
	}
	for _, e := range a.policies.CIDRIdentities() {
		if _, taken := byPrefix[e.Prefix]; !taken {
			byPrefix[e.Prefix] = e
		}
	}
	out := make([]state.IPCacheEntry, 0, len(byPrefix))
	for _, e := range byPrefix {
		out = append(out, e)
	}
	sort.Slice(out, func(i, j int) bool {
		if c := out[i].Prefix.Addr().Compare(out[j].Prefix.Addr()); c != 0 {
			return c < 0
		}
		return out[i].Prefix.Bits() < out[j].Prefix.Bits()
	})
	return out
}

func (a *Agent) remoteNamesLocked() []string {
	names := make([]string, 0, len(a.remotes))
	for name := range a.remotes {
		names = append(names, name)
	}
	sort.Strings(names)
	return names
}

// policyHandler feeds one kind of policy object into the repository. A
// policy that fails to decode is reported and the last good version of it
// stays in force.
func (a *Agent) policyHandler(src policy.Source) cache.ResourceEventHandlerFuncs {
	decode := func(obj any) (*policy.Policy, error) {
		switch o := obj.(type) {
		case *unstructured.Unstructured:
			return policy.DecodeCNPObject(o.Object)
		case *networkingv1.NetworkPolicy:
			return policy.DecodeNetworkPolicy(o)
		}
		return nil, fmt.Errorf("unexpected %T", obj)
	}
	upsert := func(obj any) {
		p, err := decode(obj)
		a.mu.Lock()
		defer a.mu.Unlock()
		if err != nil {
			ref := refOf(src, obj)
			a.badPolicy[ref] = err
			a.log.Error("Rejected policy; the last good version stays in force", "policy", ref, "err", err)
			return
		}
		if _, err := a.policies.UpsertPolicy(p); err != nil {
			ref := refOf(src, obj)
			a.badPolicy[ref] = err
			a.log.Error("Rejected policy; the last good version stays in force", "policy", ref, "err", err)
			return
		}
		delete(a.badPolicy, refOf(src, obj))
		delete(a.warnings, refOf(src, obj))
		for _, w := range p.Warnings {
			a.log.Warn("Policy accepted with a limitation", "policy", refOf(src, obj), "warning", w)
			a.warnings[refOf(src, obj)] = append(a.warnings[refOf(src, obj)], w)
		}
		a.markDirty()
	}
	return cache.ResourceEventHandlerFuncs{
		AddFunc:    upsert,
		UpdateFunc: func(_, obj any) { upsert(obj) },
		DeleteFunc: func(obj any) {
			if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
				obj = d.Obj
			}
			a.mu.Lock()
			ref := refOf(src, obj)
			a.policies.DeletePolicy(ref)
			delete(a.badPolicy, ref)
			delete(a.warnings, ref)
			a.mu.Unlock()
			a.markDirty()
		},
	}
}

func refOf(src policy.Source, obj any) policy.Ref {
	type named interface {
		GetNamespace() string
		GetName() string
	}
	if n, ok := obj.(named); ok {
		return policy.Ref{Source: src, Namespace: n.GetNamespace(), Name: n.GetName()}
	}
	return policy.Ref{Source: src}
}

// PolicyErrors returns the policies currently rejected, with why.
func (a *Agent) PolicyErrors() map[string]error {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := map[string]error{}
	for ref, err := range a.badPolicy {
		out[ref.String()] = err
	}
	return out
}

// PolicyWarnings returns, per policy in force, the limitations it is
// enforced with (e.g. DNS rules enforced at L4 only).
func (a *Agent) PolicyWarnings() map[string][]string {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := map[string][]string{}
	for ref, ws := range a.warnings {
		out[ref.String()] = append([]string(nil), ws...)
	}
	return out
}

func (a *Agent) namespaceHandler() cache.ResourceEventHandlerFuncs {
	set := func(obj any) {
		ns, ok := obj.(*corev1.Namespace)
		if !ok {
			return
		}
		a.mu.Lock()
		a.policies.SetNamespaceLabels(ns.Name, ns.Labels)
		a.mu.Unlock()
		a.markDirty()
	}
	return cache.ResourceEventHandlerFuncs{AddFunc: set, UpdateFunc: func(_, o any) { set(o) }}
}

// localIdentity mirrors this cluster's identities into the policy
// repository.
func (a *Agent) localIdentity(ev identity.Event) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if ev.Deleted {
		a.policies.DeleteIdentity(ev.ID)
	} else if _, err := a.policies.UpsertIdentity(policy.Identity{ID: ev.ID, Labels: plainLabels(ev.Labels)}); err != nil {
		a.log.Warn("Identity not usable by policy", "identity", ev.ID, "err", err)
	}
	a.markDirty()
}

func plainLabels(l wire.Labels) map[string]string {
	m := make(map[string]string, len(l))
	for _, lbl := range l {
		m[lbl.Key] = lbl.Value
	}
	return m
}

// keepNodes adds to nodes those of prev it does not list.
func keepNodes(nodes, prev []state.Node) []state.Node {
	have := map[[2]string]bool{}
	for _, n := range nodes {
		have[[2]string{n.Cluster, n.Name}] = true
	}
	for _, n := range prev {
		if !have[[2]string{n.Cluster, n.Name}] {
			nodes = append(nodes, n)
		}
	}
	return nodes
}

// keepIPCache adds to entries those of prev whose prefix it does not map.
func keepIPCache(entries, prev []state.IPCacheEntry) []state.IPCacheEntry {
	have := make(map[netip.Prefix]bool, len(entries))
	for _, e := range entries {
		have[e.Prefix] = true
	}
	for _, e := range prev {
		if !have[e.Prefix] {
			entries = append(entries, e)
		}
	}
	return entries
}

// publishKey makes the node's WireGuard key annotation say
// cfg.WireguardPubKey (removing it when that is empty).
func (a *Agent) publishKey(ctx context.Context, node *corev1.Node) error {
	have, ok := node.Annotations[wire.WireguardPubKeyAnnotation]
	want := a.cfg.WireguardPubKey
	if have == want && ok == (want != "") {
		return nil
	}
	var value any // nil removes the key in a merge patch
	if want != "" {
		value = want
	}
	patch, err := json.Marshal(map[string]any{"metadata": map[string]any{"annotations": map[string]any{wire.WireguardPubKeyAnnotation: value}}})
	if err != nil {
		return err
	}
	if _, err := a.cfg.Kube.CoreV1().Nodes().Patch(ctx, node.Name, types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
		return fmt.Errorf("publish WireGuard key: %w", err)
	}
	if want != "" {
		a.log.Info("Published WireGuard public key", "publicKey", want, "previous", have)
	} else {
		a.log.Info("Withdrew WireGuard public key: this node does not encrypt", "previous", have)
	}
	return nil
}
