// Package node is one node's whole datapath: the eBPF programs and maps
// (package datapath), the VXLAN device or native routes to other nodes
// (package overlay), and pod interfaces (package endpoint), all in the
// node's network namespace. It implements state.Datapath and state.Plumber,
// which is everything the agent needs from a node, and it is the same on a
// real node (the host namespace) and on a simulated one.
package node

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
	"sync"

	"github.com/meshbed/meshbed/datapath"
	"github.com/meshbed/meshbed/datapath/endpoint"
	"github.com/meshbed/meshbed/datapath/masq"
	"github.com/meshbed/meshbed/datapath/monitor"
	"github.com/meshbed/meshbed/datapath/netns"
	"github.com/meshbed/meshbed/datapath/overlay"
	"github.com/meshbed/meshbed/datapath/state"
)

// Config of a node's datapath.
type Config struct {
	// NS is the node's network namespace (netns.Host() on a real node). The
	// caller keeps ownership.
	NS *netns.NS
	// NodeIP is the node's underlay address: the tunnel endpoint, and the
	// address by which other nodes route to its pods.
	NodeIP netip.Addr
	// UnderlayIf is the name of the node's underlay interface (native
	// routing sends remote pod traffic through it).
	UnderlayIf string
	ClusterID  uint32
	Routing    state.RoutingMode
	// Trace makes the datapath report every forwarded packet.
	Trace bool
	// PinPath pins the BPF maps and program attachments there, so that they
	// survive a restart of the agent process with the connections through
	// them (datapath.Options.PinPath). A BPF filesystem is mounted at
	// datapath.DefaultBPFFS if PinPath is under it and none is. Empty: no
	// pinning (the simulator).
	PinPath string
	// Masquerade makes what the node's pods send outside the mesh's pod
	// networks leave with the node's address (package masq); the agent's
	// --enable-ipv4-masquerade, DefaultMasquerade unless told otherwise.
	Masquerade bool
	Logger     *slog.Logger
}

// DefaultMasquerade is on, as in Cilium: without it a pod cannot reach the
// host network of another node through kube-proxy (see package masq).
const DefaultMasquerade = true

// Node is a node's datapath.
type Node struct {
	cfg   Config
	dp    *datapath.Datapath
	route overlay.Routing
	mtu   int

	mu         sync.Mutex
	remotes    []overlay.Remote
	masq       *masq.Config // last synced; nil before the first
	programmed *state.State // last state applied without error
}

// New prepares the node namespace, loads the programs and, in tunnel mode,
// creates (or adopts) the VXLAN device and attaches the overlay program.
func New(cfg Config) (*Node, error) {
	if cfg.NS == nil || !cfg.NodeIP.Is4() {
		return nil, errors.New("node datapath: a namespace and an IPv4 node address are required")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if err := endpoint.PrepareNode(cfg.NS); err != nil {
		return nil, fmt.Errorf("node datapath: %w", err)
	}
	if cfg.PinPath != "" && underDir(cfg.PinPath, datapath.DefaultBPFFS) {
		if err := datapath.MountBPFFS(datapath.DefaultBPFFS); err != nil {
			return nil, fmt.Errorf("node datapath: %w", err)
		}
	}
	dp, err := datapath.New(datapath.Options{ClusterID: cfg.ClusterID, Routing: cfg.Routing, Trace: cfg.Trace,
		PinPath: cfg.PinPath, Logger: cfg.Logger})
	if err != nil {
		return nil, fmt.Errorf("node datapath: %w", err)
	}
	n := &Node{cfg: cfg, dp: dp, route: overlay.Routing{Mode: cfg.Routing}, mtu: endpoint.DefaultMTU}
	h, err := cfg.NS.Handle()
	if err != nil {
		dp.Close()
		return nil, fmt.Errorf("node datapath: %w", err)
	}
	switch cfg.Routing {
	case state.Tunnel:
		vx, err := overlay.SetupVXLAN(cfg.NS, overlay.VXLANConfig{NodeIP: cfg.NodeIP})
		if err != nil {
			dp.Close()
			return nil, fmt.Errorf("node datapath: %w", err)
		}
		err = cfg.NS.Do(func() error { return dp.AttachOverlay(vx.Name) })
		if err != nil {
			dp.Close()
			return nil, fmt.Errorf("node datapath: %w", err)
		}
		n.route.Device, n.mtu = vx.Index, vx.MTU
	case state.Native:
		link, err := h.LinkByName(cfg.UnderlayIf)
		if err != nil {
			dp.Close()
			return nil, fmt.Errorf("node datapath: underlay interface %q: %w", cfg.UnderlayIf, err)
		}
		n.route.Device = link.Attrs().Index
	}
	return n, nil
}

// Datapath returns the BPF side, for dumps and flow events.
func (n *Node) Datapath() *datapath.Datapath { return n.dp }

// Events opens a reader of the node's flow events (monitor.Source).
func (n *Node) Events() (monitor.Reader, error) {
	r, err := n.dp.Events()
	if err != nil {
		return nil, err
	}
	return r, nil
}

// LostEvents is how many flow events the datapath lost (monitor.Source).
func (n *Node) LostEvents() (uint64, error) { return n.dp.LostEvents() }

// Apply programs the maps (attaching to new endpoint interfaces, which live
// in the node namespace) and makes the routes to other nodes' pod CIDRs
// match s.Nodes.
func (n *Node) Apply(s *state.State) error {
	err := n.cfg.NS.Do(func() error { return n.dp.Apply(s) })
	remotes := overlay.RemotesFromNodes(n.cfg.NodeIP, s.Nodes)
	n.mu.Lock()
	defer n.mu.Unlock()
	if err == nil {
		n.programmed = s
	}
	if !equalRemotes(remotes, n.remotes) {
		if rerr := overlay.SyncRoutes(n.cfg.NS, n.route, remotes); rerr != nil {
			err = errors.Join(err, rerr)
		} else {
			n.remotes = remotes
		}
	}
	if n.cfg.Masquerade {
		if m, ok := masqConfig(n.cfg.NodeIP, s.Nodes); ok && (n.masq == nil || !equalMasq(*n.masq, m)) {
			if merr := masq.Sync(n.cfg.NS, m); merr != nil {
				err = errors.Join(err, merr)
			} else {
				n.masq = &m
			}
		}
	}
	return err
}

// masqConfig is the masquerade configuration for the node at self: its
// own pod CIDR as the source, every node's as the pod networks. ok is false
// while the node itself is not in nodes.
func masqConfig(self netip.Addr, nodes []state.Node) (masq.Config, bool) {
	var m masq.Config
	for _, nd := range nodes {
		if !nd.PodCIDR.Addr().Is4() {
			continue
		}
		p := nd.PodCIDR.Masked()
		if nd.IP == self {
			m.Local = p
		}
		m.PodCIDRs = append(m.PodCIDRs, p)
	}
	slices.SortFunc(m.PodCIDRs, func(a, b netip.Prefix) int {
		if c := a.Addr().Compare(b.Addr()); c != 0 {
			return c
		}
		return a.Bits() - b.Bits()
	})
	m.PodCIDRs = slices.Compact(m.PodCIDRs)
	return m, m.Local.IsValid()
}

func equalMasq(a, b masq.Config) bool {
	return a.Local == b.Local && slices.Equal(a.PodCIDRs, b.PodCIDRs)
}

// Programmed is what the node's datapath holds for an agent that starts:
// the last state applied in this process, or else what was taken over from
// an earlier agent's pins (Restored); nil when the datapath is new.
func (n *Node) Programmed() *state.State {
	n.mu.Lock()
	p := n.programmed
	n.mu.Unlock()
	if p != nil {
		return p
	}
	return n.Restored()
}

func equalRemotes(a, b []overlay.Remote) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// Plumb creates a pod's veth pair between the node and the pod namespace.
func (n *Node) Plumb(req state.PlumbRequest) (string, error) {
	pod, err := netns.Open(req.NetNS)
	if err != nil {
		return "", fmt.Errorf("pod %s/%s: %w", req.Namespace, req.Pod, err)
	}
	defer pod.Close()
	ep, err := endpoint.Create(n.cfg.NS, pod, endpoint.Config{
		ID: fmt.Sprintf("%s/%s/%d", req.Namespace, req.Pod, req.ID), IP: req.IP, MTU: n.mtu,
	})
	if err != nil {
		return "", fmt.Errorf("pod %s/%s: %w", req.Namespace, req.Pod, err)
	}
	return ep.HostIfName, nil
}

// Unplumb removes a pod's interface.
func (n *Node) Unplumb(hostIf string) error {
	return endpoint.Delete(n.cfg.NS, hostIf)
}

// Close releases the datapath. Without a PinPath that detaches and unloads
// the programs; with one they stay attached for the next agent. Interfaces
// go with their namespaces.
func (n *Node) Close() error {
	return n.dp.Close()
}

// Restored returns what the datapath took over from an earlier agent's
// pins (datapath.Datapath.Restored), nil if nothing was pinned.
func (n *Node) Restored() *state.State { return n.dp.Restored() }

// Remove detaches the programs, removes the pins and the masquerade rules
// (uninstall).
func (n *Node) Remove() error {
	return errors.Join(n.dp.Remove(), masq.Remove(n.cfg.NS))
}

// underDir reports whether path is dir or below it.
func underDir(path, dir string) bool {
	rel, err := filepath.Rel(dir, filepath.Clean(path))
	return err == nil && rel != ".." && !strings.HasPrefix(rel, "../")
}

var (
	_ state.Datapath = (*Node)(nil)
	_ state.Plumber  = (*Node)(nil)
	_ monitor.Source = (*Node)(nil)
)

// ReadBack reads what the node's BPF maps hold: every service with its
// active backends in slot order, and the ipcache. It is what the final
// check compares with the agent's desired state, on every target.
func (n *Node) ReadBack() ([]state.Service, []state.IPCacheEntry, error) {
	entries, err := n.dp.DumpServices()
	if err != nil {
		return nil, nil, fmt.Errorf("dump services: %w", err)
	}
	var svcs []state.Service
	for _, e := range entries {
		svc := state.Service{Name: e.Name, Frontend: e.Frontend}
		for _, b := range e.Backends {
			svc.Backends = append(svc.Backends, b.Backend)
		}
		svcs = append(svcs, svc)
	}
	ipc, err := n.dp.DumpIPCache()
	if err != nil {
		return nil, nil, fmt.Errorf("dump ipcache: %w", err)
	}
	return svcs, ipc, nil
}
