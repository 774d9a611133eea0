// Package endpoint plumbs a pod into its node: a veth pair whose host end
// stays in the node's network namespace (where the datapath's BPF programs
// attach to it) and whose other end becomes the pod's eth0.
//
// The layout is Cilium's, chosen so that neither side ever needs ARP:
//
//	pod netns                               node netns
//	eth0  10.1.0.5/32  (MAC 0a:58:0a:01:00:05)  ── lxc…  (MAC 0a:59:0a:01:00:05)
//	default via 169.254.1.1 dev eth0 onlink      10.1.0.5 dev lxc… scope link
//	neigh 169.254.1.1 lladdr <lxc MAC> PERMANENT neigh 10.1.0.5 lladdr <eth0 MAC> PERMANENT
//
// The pod owns a single /32 address and sends everything to a gateway
// address that nobody owns: the permanent neighbour entry resolves it to the
// host end's MAC, so every packet lands on the host end, where the node's
// routing table (or a BPF program) takes over. The node reaches the pod by
// a /32 route and a permanent neighbour entry for the pod's MAC. With both
// neighbours static, proxy_arp is never needed.
//
// MACs are derived from the pod IP, so they are known before the link
// exists, are stable across re-creation and tell at a glance which pod a
// frame belongs to.
//
// The node namespace must be prepared once (NodeSysctls, PrepareNode):
// forwarding on, reverse-path filtering off.
package endpoint

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"time"

	"github.com/meshbed/meshbed/datapath/netns"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// DefaultGateway is the pod's next hop when Config.Gateway is not set. It
// is link-local so it can never collide with a pod CIDR, the same on every
// node so pods need not know theirs, and owned by nobody: the permanent
// neighbour entry in the pod makes the host end answer for it.
var DefaultGateway = netip.MustParseAddr("169.254.1.1")

// DefaultMTU is the veth MTU when Config.MTU is not set, right for native
// routing over a 1500-byte underlay; tunnel mode passes the VXLAN device's.
const DefaultMTU = 1500

// PodIfName is the pod-side interface name when Config.PodIfName is not set.
const PodIfName = "eth0"

// NodeSysctls prepare a node namespace for endpoints: forward between pods
// and the underlay, and drop reverse-path filtering, which would reject
// packets arriving on a pod's veth or the tunnel for sources routed
// elsewhere. "default" covers veths created later; "all" is combined with
// the per-device value by max, so it must be 0 too. Pass them to netns.New
// when the simulator creates the node, or use PrepareNode on an existing
// namespace.
var NodeSysctls = []netns.Sysctl{
	{Path: "net/ipv4/ip_forward", Value: "1"},
	{Path: "net/ipv4/conf/all/forwarding", Value: "1"},
	{Path: "net/ipv4/conf/all/rp_filter", Value: "0"},
	{Path: "net/ipv4/conf/default/rp_filter", Value: "0"},
}

// PrepareNode writes NodeSysctls in an existing node namespace.
func PrepareNode(node *netns.NS) error {
	if err := node.SetSysctls(NodeSysctls...); err != nil {
		return fmt.Errorf("prepare node namespace %s: %w", node, err)
	}
	return nil
}

// Config describes one endpoint.
type Config struct {
	// ID identifies the endpoint on its node (a container ID, namespace/pod,
	// or the numeric endpoint ID); the host interface name derives from it.
	ID string
	// IP is the pod's IPv4 address, from the node's pod CIDR; it is assigned
	// as a /32.
	IP netip.Addr
	// Gateway is the pod's next hop; zero means DefaultGateway.
	Gateway netip.Addr
	// MTU of both veth ends; 0 means DefaultMTU.
	MTU int
	// HostIfName overrides the name derived from ID (at most 15 bytes).
	HostIfName string
	// PodIfName overrides the pod-side name; empty means PodIfName.
	PodIfName string
}

// Endpoint is a plumbed pod: what the BPF datapath needs to attach to it and
// to redirect packets into it.
type Endpoint struct {
	ID string
	IP netip.Addr
	// Gateway is the pod's next hop, resolved to HostMAC inside the pod.
	Gateway netip.Addr
	MTU     int

	HostIfName  string // in the node namespace
	HostIfIndex int
	HostMAC     net.HardwareAddr

	PodIfName  string // in the pod namespace
	PodIfIndex int
	PodMAC     net.HardwareAddr
}

// ErrExists is returned by Create when the node already has an interface
// with the endpoint's host name, or the pod one with its pod-side name: the
// caller is creating an endpoint twice, or reusing an ID before Delete.
var ErrExists = errors.New("endpoint interface already exists")

// HostIfName is the host-side interface name of the endpoint id: "lxc" and
// 12 hex digits of its SHA-256, 15 bytes, the kernel's limit. 48 bits make a
// collision on one node (thousands of endpoints at most) vanishingly rare,
// and Create reports one as ErrExists rather than clobbering.
func HostIfName(id string) string {
	sum := sha256.Sum256([]byte(id))
	return "lxc" + hex.EncodeToString(sum[:6])
}

// PodMAC is the pod-side MAC for ip: 0a:58 and the four address bytes, the
// locally administered range Kubernetes network plugins use for pods.
func PodMAC(ip netip.Addr) net.HardwareAddr {
	a := ip.As4()
	return net.HardwareAddr{0x0a, 0x58, a[0], a[1], a[2], a[3]}
}

// HostMAC is the host-side MAC for the endpoint with pod address ip:
// 0a:59 and the four address bytes, unique on the node because the pod
// address is.
func HostMAC(ip netip.Addr) net.HardwareAddr {
	a := ip.As4()
	return net.HardwareAddr{0x0a, 0x59, a[0], a[1], a[2], a[3]}
}

func (c *Config) normalize() error {
	if c.ID == "" && c.HostIfName == "" {
		return errors.New("endpoint needs an ID or a HostIfName")
	}
	if !c.IP.Is4() {
		return fmt.Errorf("pod address %v is not IPv4", c.IP)
	}
	if !c.Gateway.IsValid() {
		c.Gateway = DefaultGateway
	}
	if !c.Gateway.Is4() || c.Gateway == c.IP {
		return fmt.Errorf("gateway %v must be IPv4 and differ from the pod address", c.Gateway)
	}
	if c.MTU == 0 {
		c.MTU = DefaultMTU
	}
	if c.MTU < 68 || c.MTU > 65535 {
		return fmt.Errorf("MTU %d out of range 68..65535", c.MTU)
	}
	if c.HostIfName == "" {
		c.HostIfName = HostIfName(c.ID)
	}
	if c.PodIfName == "" {
		c.PodIfName = PodIfName
	}
	for _, n := range []string{c.HostIfName, c.PodIfName} {
		if len(n) > unix.IFNAMSIZ-1 {
			return fmt.Errorf("interface name %q longer than %d bytes", n, unix.IFNAMSIZ-1)
		}
	}
	return nil
}

// Create plumbs a pod: it creates the veth pair from the node namespace with
// the peer born directly inside the pod namespace (no move, no rename),
// addresses and routes the pod, and installs the node's route and neighbour
// for it. On error nothing is left behind.
func Create(node, pod *netns.NS, cfg Config) (*Endpoint, error) {
	if err := cfg.normalize(); err != nil {
		return nil, fmt.Errorf("create endpoint %q: %w", cfg.ID, err)
	}
	ep, err := create(node, pod, cfg)
	if err != nil {
		return nil, fmt.Errorf("create endpoint %q (%s) in %s/%s: %w", cfg.ID, cfg.IP, node, pod, err)
	}
	return ep, nil
}

func create(node, pod *netns.NS, cfg Config) (*Endpoint, error) {
	hn, err := node.Handle()
	if err != nil {
		return nil, err
	}
	hp, err := pod.Handle()
	if err != nil {
		return nil, err
	}
	ep := &Endpoint{
		ID:         cfg.ID,
		IP:         cfg.IP,
		Gateway:    cfg.Gateway,
		MTU:        cfg.MTU,
		HostIfName: cfg.HostIfName,
		HostMAC:    HostMAC(cfg.IP),
		PodIfName:  cfg.PodIfName,
		PodMAC:     PodMAC(cfg.IP),
	}

	attrs := netlink.NewLinkAttrs()
	attrs.Name = ep.HostIfName
	attrs.MTU = ep.MTU
	attrs.HardwareAddr = ep.HostMAC
	attrs.Flags = net.FlagUp
	veth := &netlink.Veth{
		LinkAttrs:        attrs,
		PeerName:         ep.PodIfName,
		PeerHardwareAddr: ep.PodMAC,
		PeerNamespace:    netlink.NsFd(pod.Fd()),
	}
	if err := hn.LinkAdd(veth); err != nil {
		if errors.Is(err, unix.EEXIST) {
			return nil, fmt.Errorf("add veth %s: %w", ep.HostIfName, ErrExists)
		}
		return nil, fmt.Errorf("add veth %s: %w", ep.HostIfName, err)
	}
	// From here on the pair exists; deleting the host end removes both.
	ok := false
	defer func() {
		if !ok {
			_ = hn.LinkDel(veth)
		}
	}()
	if veth.Index == 0 {
		return nil, fmt.Errorf("veth %s vanished right after creation", ep.HostIfName)
	}
	ep.HostIfIndex = veth.Index

	peer, err := hp.LinkByName(ep.PodIfName)
	if err != nil {
		return nil, fmt.Errorf("find %s in the pod: %w", ep.PodIfName, err)
	}
	ep.PodIfIndex = peer.Attrs().Index
	if err := configurePod(hp, peer, ep); err != nil {
		return nil, err
	}
	// A veth drops what it is given until its queueing discipline is
	// attached, which happens when the device opens with the carrier
	// already on. The pod end, opened last, found its peer up and is ready;
	// the host end opened first, carrier off, and waits for the kernel's
	// link watcher (netns.WaitOperUp). A SYN-ACK sent before that is lost
	// and the pod retries only after a full second.
	if err := node.WaitOperUp(ep.HostIfIndex, operUpTimeout); err != nil {
		return nil, err
	}
	if err := configureNode(hn, ep); err != nil {
		return nil, err
	}
	ok = true
	return ep, nil
}

// operUpTimeout bounds the wait for the kernel's link watcher, which runs
// from a shared work queue and normally answers in well under a millisecond.
const operUpTimeout = 5 * time.Second

func configurePod(h *netlink.Handle, peer netlink.Link, ep *Endpoint) error {
	// Up first: the kernel refuses routes through a device that is down.
	if err := h.LinkSetUp(peer); err != nil {
		return fmt.Errorf("bring %s up: %w", ep.PodIfName, err)
	}
	addr := &netlink.Addr{IPNet: hostNet(ep.IP)}
	if err := h.AddrAdd(peer, addr); err != nil {
		return fmt.Errorf("address %s: %w", ep.PodIfName, err)
	}
	if err := h.NeighAdd(&netlink.Neigh{
		LinkIndex:    ep.PodIfIndex,
		Family:       unix.AF_INET,
		State:        netlink.NUD_PERMANENT,
		IP:           ep.Gateway.AsSlice(),
		HardwareAddr: ep.HostMAC,
	}); err != nil {
		return fmt.Errorf("gateway neighbour in the pod: %w", err)
	}
	if err := h.RouteAdd(&netlink.Route{
		LinkIndex: ep.PodIfIndex,
		Dst:       &net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)},
		Gw:        ep.Gateway.AsSlice(),
		Flags:     int(netlink.FLAG_ONLINK),
	}); err != nil {
		return fmt.Errorf("default route in the pod: %w", err)
	}
	return nil
}

func configureNode(h *netlink.Handle, ep *Endpoint) error {
	if err := h.NeighAdd(&netlink.Neigh{
		LinkIndex:    ep.HostIfIndex,
		Family:       unix.AF_INET,
		State:        netlink.NUD_PERMANENT,
		IP:           ep.IP.AsSlice(),
		HardwareAddr: ep.PodMAC,
	}); err != nil {
		return fmt.Errorf("pod neighbour on the node: %w", err)
	}
	if err := h.RouteAdd(&netlink.Route{
		LinkIndex: ep.HostIfIndex,
		Dst:       hostNet(ep.IP),
		Scope:     netlink.SCOPE_LINK,
	}); err != nil {
		return fmt.Errorf("pod route on the node: %w", err)
	}
	return nil
}

// Delete removes the endpoint's veth pair from the node, and with it the
// node's route and neighbour entry and the pod's eth0. It is synchronous,
// unlike closing the pod namespace (the kernel dismantles namespaces in the
// background), so call it before reusing the ID. Deleting an endpoint that
// is already gone is not an error.
func Delete(node *netns.NS, hostIfName string) error {
	h, err := node.Handle()
	if err != nil {
		return fmt.Errorf("delete endpoint %s: %w", hostIfName, err)
	}
	link, err := h.LinkByName(hostIfName)
	if err != nil {
		var notFound netlink.LinkNotFoundError
		if errors.As(err, &notFound) {
			return nil
		}
		return fmt.Errorf("delete endpoint %s: %w", hostIfName, err)
	}
	if err := h.LinkDel(link); err != nil && !errors.Is(err, unix.ENODEV) {
		return fmt.Errorf("delete endpoint %s: %w", hostIfName, err)
	}
	return nil
}

func hostNet(ip netip.Addr) *net.IPNet {
	return &net.IPNet{IP: ip.AsSlice(), Mask: net.CIDRMask(32, 32)}
}
