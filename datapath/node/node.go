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
	"github.com/meshbed/meshbed/datapath/wireguard"
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
	// Encryption of traffic to other nodes; the zero value encrypts
	// nothing (and removes a WireGuard device an earlier configuration
	// left).
	Encryption Encryption
	Logger     *slog.Logger
}

// EncryptionMode says how traffic between nodes is protected.
type EncryptionMode string

const (
	EncryptionNone      EncryptionMode = "none"
	EncryptionWireGuard EncryptionMode = "wireguard"
)

// ParseEncryptionMode accepts "none" (or empty) and "wireguard".
func ParseEncryptionMode(s string) (EncryptionMode, error) {
	switch EncryptionMode(s) {
	case "", EncryptionNone:
		return EncryptionNone, nil
	case EncryptionWireGuard:
		return EncryptionWireGuard, nil
	}
	return "", fmt.Errorf("unknown encryption %q (want none or wireguard)", s)
}

// Encryption configures transparent encryption (package wireguard).
type Encryption struct {
	Mode EncryptionMode
	// StateDir keeps the node's private key (wireguard.KeyFileName), so a
	// restart keeps the key; required with WireGuard.
	StateDir string
	// Strict refuses traffic to nodes that publish no usable key instead
	// of sending it in clear.
	Strict bool
	// Impl forces the kernel or the userspace implementation; empty picks.
	Impl wireguard.Impl
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

	wg *wireguard.Device // nil without encryption

	mu         sync.Mutex
	remotes    []overlay.Remote
	masq       *masq.Config     // last synced; nil before the first
	peers      []wireguard.Peer // last synced without error
	programmed *state.State     // last state applied without error
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
	// WireGuard's overhead comes off the underlay MTU first; the tunnel's
	// then comes off what is left.
	var vxMTU int
	if cfg.Encryption.Mode == EncryptionWireGuard {
		under := overlay.DefaultUnderlayMTU
		if link, err := h.LinkByName(cfg.UnderlayIf); err == nil && cfg.UnderlayIf != "" {
			under = link.Attrs().MTU
		}
		wcfg := wireguard.Config{NS: cfg.NS, NodeIP: cfg.NodeIP, KeyFile: filepath.Join(cfg.Encryption.StateDir, wireguard.KeyFileName),
			MTU: under - wireguard.Overhead, Strict: cfg.Encryption.Strict, Impl: cfg.Encryption.Impl,
			Logger: cfg.Logger.With("component", "wireguard")}
		if cfg.Routing == state.Tunnel {
			wcfg.TunnelPort = overlay.DefaultVXLANPort
			vxMTU = wcfg.MTU - overlay.VXLANOverhead
		} else {
			n.mtu = wcfg.MTU
		}
		if cfg.Encryption.StateDir == "" {
			dp.Close()
			return nil, errors.New("node datapath: WireGuard needs a state directory for its key")
		}
		if n.wg, err = wireguard.Setup(wcfg); err != nil {
			dp.Close()
			return nil, fmt.Errorf("node datapath: %w", err)
		}
	} else if err := wireguard.Delete(cfg.NS); err != nil {
		dp.Close()
		return nil, fmt.Errorf("node datapath: remove encryption: %w", err)
	}
	switch cfg.Routing {
	case state.Tunnel:
		vx, err := overlay.SetupVXLAN(cfg.NS, overlay.VXLANConfig{NodeIP: cfg.NodeIP, MTU: vxMTU})
		if err != nil {
			n.Close()
			return nil, fmt.Errorf("node datapath: %w", err)
		}
		err = cfg.NS.Do(func() error { return dp.AttachOverlay(vx.Name) })
		if err != nil {
			n.Close()
			return nil, fmt.Errorf("node datapath: %w", err)
		}
		n.route.Device, n.mtu = vx.Index, vx.MTU
	case state.Native:
		link, err := h.LinkByName(cfg.UnderlayIf)
		if err != nil {
			n.Close()
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
	if n.wg != nil {
		peers := peersFromNodes(n.cfg.NodeIP, s.Nodes)
		if !slices.Equal(peers, n.peers) {
			// A rejected key is not an error of Apply (retrying would not
			// fix it): the device names it and leaves that node unpeered.
			if werr := n.wg.Sync(peers); werr != nil {
				err = errors.Join(err, werr)
			} else {
				n.peers = peers
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

// peersFromNodes lists every node but self as a WireGuard peer.
func peersFromNodes(self netip.Addr, nodes []state.Node) []wireguard.Peer {
	var out []wireguard.Peer
	for _, sn := range nodes {
		if sn.IP == self || !sn.IP.Is4() {
			continue
		}
		out = append(out, wireguard.Peer{Node: sn.Cluster + "/" + sn.Name, PublicKey: sn.WireguardPubKey, IP: sn.IP, PodCIDR: sn.PodCIDR})
	}
	return out
}

// WireGuard returns the node's WireGuard device, nil without encryption.
func (n *Node) WireGuard() *wireguard.Device { return n.wg }

// PublicKey is the node's WireGuard public key to publish, empty without
// encryption.
func (n *Node) PublicKey() string {
	if n.wg == nil {
		return ""
	}
	return n.wg.PublicKey()
}

// MTU is the MTU pods get: the underlay's less the tunnel's and
// WireGuard's overheads as configured.
func (n *Node) MTU() int { return n.mtu }

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
	err := n.dp.Close()
	if n.wg != nil {
		err = errors.Join(err, n.wg.Close())
	}
	return err
}

// Restored returns what the datapath took over from an earlier agent's
// pins (datapath.Datapath.Restored), nil if nothing was pinned.
func (n *Node) Restored() *state.State { return n.dp.Restored() }

// Remove detaches the programs, removes the pins, the masquerade rules
// and the WireGuard device (uninstall).
func (n *Node) Remove() error {
	err := errors.Join(n.dp.Remove(), masq.Remove(n.cfg.NS))
	if n.wg != nil {
		err = errors.Join(err, n.wg.Remove())
	}
	return err
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
