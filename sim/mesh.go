// Package sim builds a simulated mesh inside one process: every cluster
// gets an in-memory Kubernetes API (sim/kube), a mesh-apiserver with its
// etcd in its own network namespace, and nodes that are network namespaces
// with the real eBPF datapath and the real agent; pods are network
// namespaces plumbed by the agent. An underlay bridge joins every node and
// apiserver of every cluster; partitions are cut into it per group,
// direction and plane.
//
// The simulator supplies environment only: namespaces, the in-memory API,
// dialers that connect from inside a namespace, processes to start and
// stop. Every decision is made by the mesh components themselves.
package sim

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/meshbed/meshbed/datapath/netns"
	"github.com/meshbed/meshbed/datapath/node"
	"github.com/meshbed/meshbed/datapath/overlay"
	"github.com/meshbed/meshbed/datapath/state"
	"github.com/meshbed/meshbed/mesh/event"
	"github.com/meshbed/meshbed/mesh/pki"
	"github.com/meshbed/meshbed/mesh/wire"
	"github.com/meshbed/meshbed/sim/kube"
)

// Spec describes the mesh to build.
type Spec struct {
	Routing state.RoutingMode
	// KVStoreMesh makes each apiserver cache the remote clusters for its
	// agents; otherwise every agent connects to every remote cluster.
	KVStoreMesh bool
	// FailStatic keeps an unreachable cluster's backends (Cilium's
	// behaviour) instead of withdrawing them.
	FailStatic bool
	// Encryption of traffic between nodes (node.EncryptionWireGuard), and
	// whether nodes without a key are refused (EncryptionStrict).
	Encryption       node.EncryptionMode
	EncryptionStrict bool
	Clusters         []ClusterSpec
	// Connections lists connected cluster pairs; nil connects every pair.
	Connections [][2]string
	// Seed makes pod names and placement reproducible.
	Seed uint64
	// LossDetection bounds how fast a lost remote cluster is noticed
	// (health interval + timeout); zero keeps the components' defaults.
	HealthInterval, HealthTimeout time.Duration
	// Underlay is the node network; zero means overlay.DefaultUnderlay.
	Underlay netip.Prefix
	Logger   *slog.Logger
}

// ClusterSpec is one cluster of a Spec.
type ClusterSpec struct {
	Name        string
	ID          uint32
	Nodes       int
	PodCIDR     netip.Prefix
	ServiceCIDR netip.Prefix
}

// Mesh is a running simulated mesh.
type Mesh struct {
	spec Spec
	log  *slog.Logger
	dir  string // certificates, remote configs, agent state
	tls  pki.Dir
	ca   *pki.CA

	underlayNS *netns.NS
	underlay   *overlay.Underlay
	clusters   []*Cluster
	byName     map[string]*Cluster

	ctx    context.Context
	cancel context.CancelFunc

	// events collects every component's decision events (the components
	// record them; the mesh only keeps them).
	events *event.Log

	// registries holds each component's metrics (under mu); a component
	// that starts gets a new one.
	registries map[component]*prometheus.Registry

	mu         sync.Mutex
	blackholes []blackhole
	ruled      map[*netns.NS]bool // namespaces with the partition rule
}

// Validate checks a spec the way the mesh itself would refuse it: cluster
// names and IDs, node counts, and CIDRs that must not overlap, naming both
// clusters.
func (s *Spec) Validate() error {
	var errs []error
	names := map[string]bool{}
	ids := map[uint32]string{}
	for i, c := range s.Clusters {
		if err := wire.ValidateClusterName(c.Name); err != nil {
			errs = append(errs, fmt.Errorf("cluster %d: %w", i, err))
		}
		if names[c.Name] {
			errs = append(errs, fmt.Errorf("cluster %q is listed twice", c.Name))
		}
		names[c.Name] = true
		if err := wire.ValidateClusterID(c.ID, wire.MaxConnectedClusters255); err != nil {
			errs = append(errs, fmt.Errorf("cluster %q: %w", c.Name, err))
		}
		if other, ok := ids[c.ID]; ok {
			errs = append(errs, fmt.Errorf("clusters %q and %q have the same ID %d", other, c.Name, c.ID))
		}
		ids[c.ID] = c.Name
		if c.Nodes < 1 || c.Nodes > overlay.MaxHostsPerCluster-1 {
			errs = append(errs, fmt.Errorf("cluster %q: %d nodes (want 1..%d)", c.Name, c.Nodes, overlay.MaxHostsPerCluster-1))
		}
		if !c.PodCIDR.IsValid() || c.PodCIDR.Bits() > 24-bitsFor(c.Nodes) {
			errs = append(errs, fmt.Errorf("cluster %q: pod CIDR %s cannot hold a /24 per node for %d nodes", c.Name, c.PodCIDR, c.Nodes))
		}
		if !c.ServiceCIDR.IsValid() {
			errs = append(errs, fmt.Errorf("cluster %q: service CIDR is required", c.Name))
		}
		for _, o := range s.Clusters[:i] {
			for _, p := range []struct {
				what string
				a, b netip.Prefix
			}{{"pod", c.PodCIDR, o.PodCIDR}, {"service", c.ServiceCIDR, o.ServiceCIDR}, {"pod/service", c.PodCIDR, o.ServiceCIDR}, {"service/pod", c.ServiceCIDR, o.PodCIDR}} {
				if p.a.IsValid() && p.b.IsValid() && p.a.Overlaps(p.b) {
					errs = append(errs, fmt.Errorf("clusters %q and %q: %s CIDRs %s and %s overlap", c.Name, o.Name, p.what, p.a, p.b))
				}
			}
		}
	}
	for _, pair := range s.Connections {
		for _, n := range pair {
			if !names[n] {
				errs = append(errs, fmt.Errorf("connection %s-%s: no cluster %q", pair[0], pair[1], n))
			}
		}
	}
	return errors.Join(errs...)
}

func bitsFor(n int) int {
	b := 0
	for 1<<b < n+1 {
		b++
	}
	return b
}

// connected reports whether clusters a and b are connected.
func (s *Spec) connected(a, b string) bool {
	if a == b {
		return false
	}
	if s.Connections == nil {
		return true
	}
	for _, p := range s.Connections {
		if (p[0] == a && p[1] == b) || (p[0] == b && p[1] == a) {
			return true
		}
	}
	return false
}

// New builds and starts the mesh: underlay, clusters, apiservers, nodes,
// agents. It returns once every cluster's controllers run and every agent
// has started; the mesh converges from there (see WaitReady).
func New(ctx context.Context, spec Spec) (_ *Mesh, err error) {
	if err := spec.Validate(); err != nil {
		return nil, fmt.Errorf("invalid topology: %w", err)
	}
	if spec.Logger == nil {
		spec.Logger = slog.New(slog.DiscardHandler)
	}
	if !spec.Underlay.IsValid() {
		spec.Underlay = overlay.DefaultUnderlay
	}
	dir, err := os.MkdirTemp("", "meshbed-sim-")
	if err != nil {
		return nil, err
	}
	mctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	m := &Mesh{spec: spec, log: spec.Logger, dir: dir, tls: pki.Dir(filepath.Join(dir, "tls")),
		byName: map[string]*Cluster{}, ruled: map[*netns.NS]bool{}, ctx: mctx, cancel: cancel,
		events: event.NewLog(0), registries: map[component]*prometheus.Registry{}}
	defer func() {
		if err != nil {
			m.Close()
		}
	}()
	if m.ca, err = m.tls.LoadOrCreateCA("meshbed simulated mesh", 24*time.Hour); err != nil {
		return nil, fmt.Errorf("mesh CA: %w", err)
	}
	if m.underlayNS, err = netns.New("underlay"); err != nil {
		return nil, fmt.Errorf("underlay: %w", err)
	}
	if m.underlay, err = overlay.NewUnderlay(m.underlayNS, spec.Underlay); err != nil {
		return nil, fmt.Errorf("underlay: %w", err)
	}
	for i, cs := range spec.Clusters {
		c, err := m.newCluster(cs, spec.Seed+uint64(i))
		if err != nil {
			return nil, fmt.Errorf("cluster %s: %w", cs.Name, err)
		}
		m.clusters = append(m.clusters, c)
		m.byName[cs.Name] = c
	}
	// Apiservers first (agents and kvstoremesh dial them), then
	// kvstoremesh, then the nodes.
	for _, c := range m.clusters {
		if err := c.writeRemoteConfigs(); err != nil {
			return nil, fmt.Errorf("cluster %s: %w", c.spec.Name, err)
		}
		if err := c.withLock(c.startAPIServerLocked); err != nil {
			return nil, fmt.Errorf("cluster %s: %w", c.spec.Name, err)
		}
	}
	if spec.KVStoreMesh {
		for _, c := range m.clusters {
			if !c.kmWanted {
				continue
			}
			if err := c.withLock(c.startKVStoreMeshLocked); err != nil {
				return nil, fmt.Errorf("cluster %s: kvstoremesh: %w", c.spec.Name, err)
			}
		}
	}
	var wg sync.WaitGroup
	errs := make([]error, len(m.clusters))
	for i, c := range m.clusters {
		wg.Go(func() { errs[i] = c.startNodes() })
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return m, nil
}

// Cluster returns a cluster by name.
func (m *Mesh) Cluster(name string) (*Cluster, bool) {
	c, ok := m.byName[name]
	return c, ok
}

// Clusters returns the clusters in spec order.
func (m *Mesh) Clusters() []*Cluster { return m.clusters }

// Spec returns the mesh's spec.
func (m *Mesh) Spec() Spec { return m.spec }

// Close stops everything and removes every namespace, interface and BPF
// object the mesh created. It is safe to call on a partly built mesh.
func (m *Mesh) Close() error {
	var errs []error
	if len(m.blackholes) > 0 {
		errs = append(errs, m.Heal())
	}
	for i := len(m.clusters) - 1; i >= 0; i-- {
		errs = append(errs, m.clusters[i].close())
	}
	m.cancel()
	if m.underlayNS != nil {
		errs = append(errs, m.underlayNS.Close())
	}
	errs = append(errs, os.RemoveAll(m.dir))
	return errors.Join(errs...)
}

// Apply applies Kubernetes objects to a cluster, as kubectl apply.
func (m *Mesh) Apply(ctx context.Context, cluster string, manifest []byte) error {
	c, ok := m.byName[cluster]
	if !ok {
		return fmt.Errorf("no cluster %q", cluster)
	}
	objs, err := kube.Decode(manifest)
	if err != nil {
		return err
	}
	for _, o := range objs {
		if err := c.API.Apply(ctx, o); err != nil {
			return fmt.Errorf("cluster %s: %w", cluster, err)
		}
	}
	return nil
}

// clusterNames returns the names of the clusters connected to c, sorted.
func (m *Mesh) peersOf(c *Cluster) []*Cluster {
	var out []*Cluster
	for _, o := range m.clusters {
		if m.spec.connected(c.spec.Name, o.spec.Name) {
			out = append(out, o)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].spec.Name < out[j].spec.Name })
	return out
}

// Events returns the decision events the mesh's components recorded at or
// after since, in time order.
func (m *Mesh) Events(since time.Time) []event.Event { return m.events.Since(since) }

// recorder is the event recorder of one component of the mesh.
func (m *Mesh) recorder(cluster, node, component string) event.Recorder {
	return event.Scope(m.events, cluster, node, component)
}
