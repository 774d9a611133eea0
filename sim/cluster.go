package sim

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/meshbed/meshbed/datapath/netns"
	"github.com/meshbed/meshbed/datapath/overlay"
	"github.com/meshbed/meshbed/mesh/apiserver"
	"github.com/meshbed/meshbed/mesh/kvstoremesh"
	"github.com/meshbed/meshbed/sim/kube"
)

// Cluster is a simulated cluster.
type Cluster struct {
	mesh *Mesh
	spec ClusterSpec
	log  *slog.Logger

	// API is the cluster's in-memory Kubernetes API.
	API      *kube.API
	ctrl     *kube.Controllers
	ctrlProc *proc

	apiNS   *netns.NS
	apiIP   netip.Addr
	apiPort *overlay.Port

	mu          sync.Mutex
	srv         *apiserver.Server
	apiserver   *proc
	km          *kvstoremesh.Mesh
	kvstoremesh *proc
	kmWanted    bool // kvstoremesh runs whenever the apiserver does
	nodes       []*Node
}

// Name returns the cluster's name.
func (c *Cluster) Name() string { return c.spec.Name }

// Spec returns the cluster's spec.
func (c *Cluster) Spec() ClusterSpec { return c.spec }

// Nodes returns the cluster's nodes in order.
func (c *Cluster) Nodes() []*Node { return c.nodes }

// APIServerIP returns the underlay address of the mesh-apiserver.
func (c *Cluster) APIServerIP() netip.Addr { return c.apiIP }

func (c *Cluster) node(name string) (*Node, bool) {
	for _, n := range c.nodes {
		if n.name == name {
			return n, true
		}
	}
	return nil, false
}

// Node returns a node by name.
func (c *Cluster) Node(name string) (*Node, bool) { return c.node(name) }

func (m *Mesh) newCluster(cs ClusterSpec, seed uint64) (*Cluster, error) {
	c := &Cluster{mesh: m, spec: cs, log: m.log.With("cluster", cs.Name), kmWanted: m.spec.KVStoreMesh}
	var err error
	if c.API, err = kube.NewAPI(cs.ServiceCIDR); err != nil {
		return nil, err
	}
	if c.apiIP, err = overlay.HostAddr(m.spec.Underlay, int(cs.ID), 0); err != nil {
		return nil, err
	}
	if c.apiNS, err = netns.New(cs.Name + "/apiserver"); err != nil {
		return nil, err
	}
	if c.apiPort, err = m.underlay.Attach(c.apiNS, overlay.PortConfig{Addr: c.apiIP}); err != nil {
		return nil, fmt.Errorf("apiserver: %w", err)
	}
	if err := c.prepareTLS(); err != nil {
		return nil, err
	}
	for _, d := range []string{c.agentConfigDir(), c.kvstoremeshConfigDir()} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, err
		}
	}
	for i := 1; i <= cs.Nodes; i++ {
		n, err := c.newNode(i)
		if err != nil {
			return nil, err
		}
		c.nodes = append(c.nodes, n)
	}
	var kn []kube.Node
	for _, n := range c.nodes {
		kn = append(kn, kube.Node{Name: n.name, IP: n.ip, PodCIDR: n.podCIDR})
	}
	c.ctrl = kube.NewControllers(c.API, kn, (*kubelet)(c), seed, c.log.With("component", "kube"))
	c.ctrlProc = startProc(m.ctx, c.log, "kube-controllers", c.ctrl.Run)
	select {
	case <-c.ctrl.Synced():
	case <-c.ctrlProc.done:
		return nil, fmt.Errorf("kube controllers: %w", c.ctrlProc.err)
	}
	return c, nil
}

func (c *Cluster) agentConfigDir() string {
	return filepath.Join(c.mesh.dir, "clustermesh", c.spec.Name, "agent")
}

// KVStoreMeshConfigDir is the clustermesh config directory of the cluster's
// kvstoremesh: one file per connected cluster, in Cilium's etcd config
// format, with this cluster's remote-reader certificate. Another
// kvstoremesh (Cilium's, in the interop tests) can be pointed at it.
func (c *Cluster) KVStoreMeshConfigDir() string { return c.kvstoremeshConfigDir() }

func (c *Cluster) kvstoremeshConfigDir() string {
	return filepath.Join(c.mesh.dir, "clustermesh", c.spec.Name, "kvstoremesh")
}

// startNodes starts every node's agent and waits until each has
// programmed its first state.
func (c *Cluster) startNodes() error {
	var errs []error
	for _, n := range c.nodes {
		if err := n.StartAgent(); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	for _, n := range c.nodes {
		if err := n.WaitAgentReady(c.mesh.ctx); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func (c *Cluster) close() error {
	var errs []error
	for _, n := range c.nodes {
		errs = append(errs, n.close())
	}
	c.mu.Lock()
	km, as := c.kvstoremesh, c.apiserver
	c.kvstoremesh, c.apiserver, c.srv, c.km = nil, nil, nil, nil
	c.mu.Unlock()
	if km != nil {
		errs = append(errs, km.stop())
	}
	if as != nil {
		errs = append(errs, as.stop())
	}
	if c.ctrlProc != nil {
		errs = append(errs, c.ctrlProc.stop())
	}
	if c.apiNS != nil {
		errs = append(errs, c.apiNS.Close())
	}
	return errors.Join(errs...)
}

// WaitReady waits until every agent of every cluster has synced its remote
// clusters' services.
func (m *Mesh) WaitReady(ctx context.Context) error {
	for _, c := range m.clusters {
		for _, n := range c.nodes {
			for {
				a := n.Agent()
				if a == nil {
					return fmt.Errorf("agent on %s/%s is not running", c.spec.Name, n.name)
				}
				if _, _, synced := a.State(); synced {
					break
				}
				select {
				case <-ctx.Done():
					return fmt.Errorf("agent on %s/%s has not synced its remote clusters: %w", c.spec.Name, n.name, ctx.Err())
				case <-a.Applied():
				case <-time.After(100 * time.Millisecond):
				}
			}
		}
	}
	return nil
}

// AddNode adds the next node (node-N+1) to the running cluster: its
// namespace on the underlay, its datapath, its Kubernetes Node (which the
// mesh-apiserver exports to the other clusters) and its agent, and returns
// once the agent has programmed its first state.
func (c *Cluster) AddNode(ctx context.Context) (*Node, error) {
	c.mu.Lock()
	i := len(c.nodes) + 1
	c.mu.Unlock()
	if i >= overlay.MaxHostsPerCluster {
		return nil, fmt.Errorf("cluster %s: no room for node %d on the underlay", c.spec.Name, i)
	}
	n, err := c.newNode(i)
	if err != nil {
		return nil, fmt.Errorf("cluster %s: add node: %w", c.spec.Name, err)
	}
	if err := c.ctrl.AddNode(ctx, kube.Node{Name: n.name, IP: n.ip, PodCIDR: n.podCIDR}); err != nil {
		_ = n.close()
		return nil, fmt.Errorf("cluster %s: add node: %w", c.spec.Name, err)
	}
	c.mu.Lock()
	c.nodes = append(c.nodes, n)
	c.mu.Unlock()
	if err := n.StartAgent(); err != nil {
		return n, fmt.Errorf("cluster %s: add node: %w", c.spec.Name, err)
	}
	if err := n.WaitAgentReady(ctx); err != nil {
		return n, fmt.Errorf("cluster %s: add node: %w", c.spec.Name, err)
	}
	return n, nil
}
