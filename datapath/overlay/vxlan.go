// Package overlay connects nodes: the VXLAN device of tunnel mode, the routes
// that send remote pod CIDRs into it (or, in native routing mode, to the
// remote node over the underlay), and the underlay itself as the simulator
// builds it — a bridge in its own namespace with one veth port per node.
//
// # Tunnel mode
//
// Each node has one VXLAN device in collect-metadata ("external") mode: it
// has no VNI or remote of its own; whoever sends through it supplies them
// per packet. The BPF datapath does so with bpf_skb_set_tunnel_key (the
// sender's security identity in the VNI, as Cilium does). So that the
// kernel alone can also tunnel — for host-originated traffic and for tests
// of the plumbing without BPF — every remote pod CIDR is routed
//
//	10.2.0.0/24 via 172.20.1.2 dev meshbed_vxlan onlink encap ip id 0 dst 172.20.1.2 ttl 64
//
// with a permanent neighbour entry 172.20.1.2 → VXLANMAC(172.20.1.2) on the
// device. The lightweight-tunnel encap gives the packet its tunnel metadata
// (VNI 0: "identity unknown", which the receiving datapath resolves from its
// ipcache); a BPF program that sets its own tunnel key overrides it.
//
// MACs matter because the receiving VXLAN device hands the inner frame to
// its stack only if it is addressed to the device's own MAC, and drops it as
// a loop if it comes from that MAC. Every device's MAC is therefore derived
// from its node's underlay address (VXLANMAC), so each node can address its
// peers without learning anything.
//
// The UDP port is 8472, Cilium's default (and Linux's historical VXLAN
// port) rather than IANA's 4789, so a meshbed node and a Cilium node agree
// on the wire without configuration; VXLANConfig.Port overrides it.
//
// # Native routing mode
//
// Remote pod CIDRs are routed via the remote node's underlay address; the
// underlay (a flat L2 segment in the simulator) delivers them unencapsulated.
//
// # Underlay addressing
//
// The simulator's underlay is one /16 (DefaultUnderlay). Cluster c's hosts
// (nodes and the cluster's mesh-apiserver) live in the c-th /24 of it
// (ClusterPrefix), host h at .h+1 (HostAddr), so a partition between groups
// of clusters is a handful of nftables rules on /24 prefixes in the underlay
// namespace.
package overlay

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/meshbed/meshbed/datapath/netns"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

const (
	// DefaultVXLANName is the tunnel device's name in every node namespace.
	DefaultVXLANName = "meshbed_vxlan"
	// DefaultVXLANPort is the VXLAN UDP port: Cilium's default, see the
	// package comment.
	DefaultVXLANPort = 8472
	// VXLANOverhead is what VXLAN over IPv4 adds to a packet: outer IPv4
	// (20), UDP (8), VXLAN (8) and the inner Ethernet header (14). Pods in
	// tunnel mode use the underlay MTU minus this.
	VXLANOverhead = 50
	// DefaultUnderlayMTU is the MTU of underlay ports when not set.
	DefaultUnderlayMTU = 1500
)

// VXLANMAC is the MAC of the VXLAN device of the node whose underlay address
// is nodeIP: 0a:6d ("m", locally administered) and the address bytes.
func VXLANMAC(nodeIP netip.Addr) net.HardwareAddr {
	a := nodeIP.As4()
	return net.HardwareAddr{0x0a, 0x6d, a[0], a[1], a[2], a[3]}
}

// VXLANConfig describes a node's tunnel device.
type VXLANConfig struct {
	// NodeIP is the node's underlay IPv4 address; the device's MAC derives
	// from it (VXLANMAC).
	NodeIP netip.Addr
	// Name defaults to DefaultVXLANName.
	Name string
	// Port defaults to DefaultVXLANPort.
	Port int
	// MTU defaults to DefaultUnderlayMTU - VXLANOverhead.
	MTU int
}

// VXLAN is a node's tunnel device, what the BPF datapath attaches to and
// redirects into.
type VXLAN struct {
	Name  string
	Index int
	MAC   net.HardwareAddr
	MTU   int
	Port  int
}

func (c *VXLANConfig) normalize() error {
	if !c.NodeIP.Is4() {
		return fmt.Errorf("node address %v is not IPv4", c.NodeIP)
	}
	if c.Name == "" {
		c.Name = DefaultVXLANName
	}
	if len(c.Name) > unix.IFNAMSIZ-1 {
		return fmt.Errorf("device name %q longer than %d bytes", c.Name, unix.IFNAMSIZ-1)
	}
	if c.Port == 0 {
		c.Port = DefaultVXLANPort
	}
	if c.Port < 1 || c.Port > 65535 {
		return fmt.Errorf("port %d out of range", c.Port)
	}
	if c.MTU == 0 {
		c.MTU = DefaultUnderlayMTU - VXLANOverhead
	}
	if c.MTU < 68 || c.MTU > 65535-VXLANOverhead {
		return fmt.Errorf("MTU %d out of range", c.MTU)
	}
	return nil
}

// SetupVXLAN creates the node's collect-metadata VXLAN device, up, or adopts
// one left by an earlier run (an agent restart must not cut tunnels). A
// device of that name that is not a collect-metadata VXLAN on the right port
// is replaced.
func SetupVXLAN(node *netns.NS, cfg VXLANConfig) (*VXLAN, error) {
	if err := cfg.normalize(); err != nil {
		return nil, fmt.Errorf("set up VXLAN device in %s: %w", node, err)
	}
	vx, err := setupVXLAN(node, cfg)
	if err != nil {
		return nil, fmt.Errorf("set up VXLAN device %s in %s: %w", cfg.Name, node, err)
	}
	return vx, nil
}

func setupVXLAN(node *netns.NS, cfg VXLANConfig) (*VXLAN, error) {
	h, err := node.Handle()
	if err != nil {
		return nil, err
	}
	mac := VXLANMAC(cfg.NodeIP)
	link, err := h.LinkByName(cfg.Name)
	switch {
	case err == nil:
		if old, ok := link.(*netlink.Vxlan); !ok || !old.FlowBased || old.Port != cfg.Port {
			if err := h.LinkDel(link); err != nil {
				return nil, fmt.Errorf("replace mismatched %s device: %w", link.Type(), err)
			}
			link = nil
		}
	case errors.As(err, new(netlink.LinkNotFoundError)):
		link = nil
	default:
		return nil, err
	}
	if link == nil {
		attrs := netlink.NewLinkAttrs()
		attrs.Name = cfg.Name
		attrs.MTU = cfg.MTU
		attrs.HardwareAddr = mac
		link = &netlink.Vxlan{
			LinkAttrs: attrs,
			FlowBased: true,
			Port:      cfg.Port,
			// Forwarding decisions come from the tunnel key or the route,
			// never from a learnt FDB.
			Learning: false,
		}
		if err := h.LinkAdd(link); err != nil {
			return nil, fmt.Errorf("add: %w", err)
		}
	} else {
		// Adopted: bring MTU and MAC to what this configuration says.
		if err := h.LinkSetMTU(link, cfg.MTU); err != nil {
			return nil, fmt.Errorf("set MTU: %w", err)
		}
		if err := h.LinkSetHardwareAddr(link, mac); err != nil {
			return nil, fmt.Errorf("set MAC: %w", err)
		}
	}
	if err := h.LinkSetUp(link); err != nil {
		return nil, fmt.Errorf("bring up: %w", err)
	}
	return &VXLAN{Name: cfg.Name, Index: link.Attrs().Index, MAC: mac, MTU: cfg.MTU, Port: cfg.Port}, nil
}

// DeleteVXLAN removes the tunnel device and, with it, every route through
// it. A missing device is not an error.
func DeleteVXLAN(node *netns.NS, name string) error {
	h, err := node.Handle()
	if err != nil {
		return fmt.Errorf("delete VXLAN device %s: %w", name, err)
	}
	link, err := h.LinkByName(name)
	if errors.As(err, new(netlink.LinkNotFoundError)) {
		return nil
	}
	if err == nil {
		err = h.LinkDel(link)
	}
	if err != nil {
		return fmt.Errorf("delete VXLAN device %s in %s: %w", name, node, err)
	}
	return nil
}
