package overlay

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"time"

	"github.com/meshbed/meshbed/datapath/netns"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// DefaultUnderlay is the simulator's underlay network: cluster c's hosts in
// 172.20.c.0/24. It lives only inside namespaces, so it cannot clash with
// the machine's own networks; pod and service CIDRs must stay out of it.
var DefaultUnderlay = netip.MustParsePrefix("172.20.0.0/16")

// BridgeName is the underlay bridge's name in the underlay namespace.
const BridgeName = "mbunderlay"

// MaxHostsPerCluster is how many hosts HostAddr places in a cluster's /24
// (.1 to .254).
const MaxHostsPerCluster = 254

// maxBridgePorts is the kernel's limit on ports per bridge (BR_MAX_PORTS).
const maxBridgePorts = 1023

// ClusterPrefix is the /24 of underlay that holds cluster's hosts: the
// cluster-th /24 inside it. With the default /16 and cluster IDs 1..255 as
// indexes, cluster 3 is 172.20.3.0/24.
func ClusterPrefix(underlay netip.Prefix, cluster int) (netip.Prefix, error) {
	if !underlay.Addr().Is4() || underlay.Bits() > 24 {
		return netip.Prefix{}, fmt.Errorf("underlay %s: want an IPv4 prefix of /24 or shorter", underlay)
	}
	if n := 1 << (24 - underlay.Bits()); cluster < 0 || cluster >= n {
		return netip.Prefix{}, fmt.Errorf("cluster index %d out of range 0..%d for underlay %s", cluster, n-1, underlay)
	}
	a := underlay.Masked().Addr().As4()
	base := uint32(a[0])<<24 | uint32(a[1])<<16 | uint32(a[2])<<8
	base += uint32(cluster) << 8
	return netip.PrefixFrom(netip.AddrFrom4([4]byte{byte(base >> 24), byte(base >> 16), byte(base >> 8), 0}), 24), nil
}

// HostAddr is the underlay address of host (0-based: a node, the cluster's
// mesh-apiserver) of cluster: .host+1 in ClusterPrefix.
func HostAddr(underlay netip.Prefix, cluster, host int) (netip.Addr, error) {
	p, err := ClusterPrefix(underlay, cluster)
	if err != nil {
		return netip.Addr{}, err
	}
	if host < 0 || host >= MaxHostsPerCluster {
		return netip.Addr{}, fmt.Errorf("host index %d out of range 0..%d", host, MaxHostsPerCluster-1)
	}
	a := p.Addr().As4()
	a[3] = byte(host + 1)
	return netip.AddrFrom4(a), nil
}

// Underlay is a shared L2 segment: a bridge in its own namespace, one veth
// port per attached namespace. Partitions are the simulator's business
// (nftables in Underlay.NS); the underlay only keeps addressing flat.
type Underlay struct {
	NS     *netns.NS
	Prefix netip.Prefix
	// BridgeIndex is the bridge's ifindex in NS.
	BridgeIndex int
}

// NewUnderlay creates the bridge in ns (which the caller owns and closes:
// closing it tears down every port). Multicast snooping is off: the underlay
// carries unicast only and snooping costs memory per port.
func NewUnderlay(ns *netns.NS, prefix netip.Prefix) (*Underlay, error) {
	if !prefix.Addr().Is4() || prefix.Bits() > 30 || prefix != prefix.Masked() {
		return nil, fmt.Errorf("create underlay in %s: prefix %s: want a masked IPv4 prefix", ns, prefix)
	}
	h, err := ns.Handle()
	if err != nil {
		return nil, fmt.Errorf("create underlay in %s: %w", ns, err)
	}
	attrs := netlink.NewLinkAttrs()
	attrs.Name = BridgeName
	attrs.Flags = net.FlagUp
	off := false
	br := &netlink.Bridge{LinkAttrs: attrs, MulticastSnooping: &off}
	if err := h.LinkAdd(br); err != nil {
		return nil, fmt.Errorf("create underlay bridge in %s: %w", ns, err)
	}
	return &Underlay{NS: ns, Prefix: prefix, BridgeIndex: br.Index}, nil
}

// PortConfig describes a namespace's attachment to the underlay.
type PortConfig struct {
	// Addr is the namespace's underlay address, inside the underlay prefix
	// (see HostAddr); it is assigned with the underlay's prefix length so
	// every attached namespace is directly reachable.
	Addr netip.Addr
	// IfName is the interface name inside the attached namespace; default
	// "eth0", as on a Kind node.
	IfName string
	// MTU defaults to DefaultUnderlayMTU.
	MTU int
}

// Port is one attachment: what native routing routes through and what the
// BPF datapath may attach to.
type Port struct {
	Addr   netip.Prefix
	IfName string // in the attached namespace
	Index  int
	MAC    net.HardwareAddr
	MTU    int
	// BridgePortName and BridgePortIndex name the other end, enslaved to
	// the bridge in the underlay namespace.
	BridgePortName  string
	BridgePortIndex int
}

// PortMAC is the MAC of the underlay interface with address addr: 0a:75
// ("u") and the address bytes, so captures show which host sent a frame.
func PortMAC(addr netip.Addr) net.HardwareAddr {
	a := addr.As4()
	return net.HardwareAddr{0x0a, 0x75, a[0], a[1], a[2], a[3]}
}

// bridgePortName derives the bridge-side name from the address, unique on
// the bridge because addresses are: "mbu" and 8 hex digits.
func bridgePortName(addr netip.Addr) string {
	a := addr.As4()
	return fmt.Sprintf("mbu%02x%02x%02x%02x", a[0], a[1], a[2], a[3])
}

// Attach connects ns to the underlay with a veth pair: one end enslaved to
// the bridge, the other in ns, addressed and up. It returns once both ends
// pass traffic.
func (u *Underlay) Attach(ns *netns.NS, cfg PortConfig) (*Port, error) {
	if cfg.IfName == "" {
		cfg.IfName = "eth0"
	}
	if cfg.MTU == 0 {
		cfg.MTU = DefaultUnderlayMTU
	}
	if !u.Prefix.Contains(cfg.Addr) || cfg.Addr == u.Prefix.Addr() {
		return nil, fmt.Errorf("attach %s to underlay %s: address %v not a host address of it", ns, u.Prefix, cfg.Addr)
	}
	if len(cfg.IfName) > unix.IFNAMSIZ-1 {
		return nil, fmt.Errorf("attach %s to underlay: interface name %q too long", ns, cfg.IfName)
	}
	if cfg.MTU < 68 || cfg.MTU > 65535 {
		return nil, fmt.Errorf("attach %s to underlay: MTU %d out of range", ns, cfg.MTU)
	}
	p, err := u.attach(ns, cfg)
	if err != nil {
		return nil, fmt.Errorf("attach %s to underlay as %s: %w", ns, cfg.Addr, err)
	}
	return p, nil
}

func (u *Underlay) attach(ns *netns.NS, cfg PortConfig) (*Port, error) {
	hu, err := u.NS.Handle()
	if err != nil {
		return nil, err
	}
	hn, err := ns.Handle()
	if err != nil {
		return nil, err
	}
	p := &Port{
		Addr:           netip.PrefixFrom(cfg.Addr, u.Prefix.Bits()),
		IfName:         cfg.IfName,
		MAC:            PortMAC(cfg.Addr),
		MTU:            cfg.MTU,
		BridgePortName: bridgePortName(cfg.Addr),
	}
	attrs := netlink.NewLinkAttrs()
	attrs.Name = p.BridgePortName
	attrs.MTU = cfg.MTU
	attrs.Flags = net.FlagUp
	attrs.MasterIndex = u.BridgeIndex
	veth := &netlink.Veth{
		LinkAttrs:        attrs,
		PeerName:         cfg.IfName,
		PeerHardwareAddr: p.MAC,
		PeerNamespace:    netlink.NsFd(ns.Fd()),
	}
	if err := hu.LinkAdd(veth); err != nil {
		// LinkAdd enslaves after creating; if that step failed the pair
		// exists and must go.
		if veth.Index != 0 {
			_ = hu.LinkDel(veth)
		}
		if errors.Is(err, unix.EEXIST) {
			return nil, fmt.Errorf("add veth %s: address already attached: %w", p.BridgePortName, err)
		}
		if errors.Is(err, unix.EBUSY) || errors.Is(err, unix.ENOSPC) {
			return nil, fmt.Errorf("add veth %s (a bridge takes at most %d ports): %w", p.BridgePortName, maxBridgePorts, err)
		}
		return nil, fmt.Errorf("add veth %s: %w", p.BridgePortName, err)
	}
	ok := false
	defer func() {
		if !ok {
			_ = hu.LinkDel(veth)
		}
	}()
	p.BridgePortIndex = veth.Index
	peer, err := hn.LinkByName(cfg.IfName)
	if err != nil {
		return nil, fmt.Errorf("find %s: %w", cfg.IfName, err)
	}
	p.Index = peer.Attrs().Index
	if err := hn.LinkSetUp(peer); err != nil {
		return nil, fmt.Errorf("bring %s up: %w", cfg.IfName, err)
	}
	// The bridge end opened before its peer, with the carrier off: it
	// drops frames, and the bridge keeps the port disabled, until the
	// kernel's link watcher has seen the carrier (see netns.WaitOperUp).
	// The address comes after, so that nothing is sent before.
	if err := u.NS.WaitOperUp(p.BridgePortIndex, operUpTimeout); err != nil {
		return nil, err
	}
	if err := hn.AddrAdd(peer, &netlink.Addr{IPNet: ipNet(p.Addr)}); err != nil {
		return nil, fmt.Errorf("address %s: %w", cfg.IfName, err)
	}
	ok = true
	return p, nil
}

// Detach removes the port's veth pair (both ends, the address and every
// route through it). A port already gone is not an error.
func (u *Underlay) Detach(p *Port) error {
	h, err := u.NS.Handle()
	if err != nil {
		return fmt.Errorf("detach %s: %w", p.Addr, err)
	}
	link, err := h.LinkByName(p.BridgePortName)
	if errors.As(err, new(netlink.LinkNotFoundError)) {
		return nil
	}
	if err == nil {
		err = h.LinkDel(link)
	}
	if err != nil {
		return fmt.Errorf("detach %s: %w", p.Addr, err)
	}
	return nil
}

// operUpTimeout bounds the wait for the kernel's link watcher, which runs
// from a shared work queue and normally answers in well under a millisecond.
const operUpTimeout = 5 * time.Second
