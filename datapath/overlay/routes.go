package overlay

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"

	"github.com/meshbed/meshbed/datapath/netns"
	"github.com/meshbed/meshbed/datapath/state"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// RouteProtocol marks the routes SyncRoutes installs (rtm_protocol 109,
// unassigned in iproute2's rt_protos), so it can prune its own and never
// touches anyone else's.
const RouteProtocol netlink.RouteProtocol = 109

// tunnelTTL is the outer TTL of kernel-encapsulated packets; 0 would mean
// "copy the inner TTL", which makes traceroute across the tunnel confusing.
const tunnelTTL = 64

// Remote is another node as routing needs it: its pod CIDR and its underlay
// address.
type Remote struct {
	PodCIDR netip.Prefix
	NodeIP  netip.Addr
}

// Routing says how a node reaches remote pod CIDRs.
type Routing struct {
	Mode state.RoutingMode
	// Device is the interface remote pod traffic leaves through: the VXLAN
	// device in tunnel mode, the node's underlay interface in native mode.
	Device int
}

// RemotesFromNodes lists every node but self (by underlay address) as a
// Remote, skipping nodes without an IPv4 address or pod CIDR.
func RemotesFromNodes(self netip.Addr, nodes []state.Node) []Remote {
	var out []Remote
	for _, n := range nodes {
		if n.IP == self || !n.IP.Is4() || !n.PodCIDR.Addr().Is4() {
			continue
		}
		out = append(out, Remote{PodCIDR: n.PodCIDR.Masked(), NodeIP: n.IP})
	}
	return out
}

// SyncRoutes makes the node's routes to remote pod CIDRs exactly remotes:
// missing or changed routes are replaced, routes of ours for CIDRs no longer
// listed are deleted, routes of anyone else are left alone. In tunnel mode it
// also keeps the permanent neighbour entries that give each remote node's
// VXLAN MAC (see the package comment). It is idempotent and cheap to call
// on every change of the node set.
func SyncRoutes(node *netns.NS, r Routing, remotes []Remote) error {
	if err := syncRoutes(node, r, remotes); err != nil {
		return fmt.Errorf("sync %s routes in %s: %w", modeName(r.Mode), node, err)
	}
	return nil
}

func modeName(m state.RoutingMode) string {
	if m == state.Native {
		return "native"
	}
	return "tunnel"
}

func syncRoutes(node *netns.NS, r Routing, remotes []Remote) error {
	if r.Mode != state.Tunnel && r.Mode != state.Native {
		return fmt.Errorf("unknown routing mode %d", r.Mode)
	}
	if r.Device <= 0 {
		return fmt.Errorf("no device (ifindex %d)", r.Device)
	}
	desired := make(map[netip.Prefix]Remote, len(remotes))
	for _, rm := range remotes {
		if !rm.PodCIDR.Addr().Is4() || rm.PodCIDR != rm.PodCIDR.Masked() || !rm.NodeIP.Is4() {
			return fmt.Errorf("invalid remote %s via %s: want a masked IPv4 CIDR and an IPv4 node address", rm.PodCIDR, rm.NodeIP)
		}
		if prev, dup := desired[rm.PodCIDR]; dup && prev.NodeIP != rm.NodeIP {
			return fmt.Errorf("pod CIDR %s claimed by nodes %s and %s", rm.PodCIDR, prev.NodeIP, rm.NodeIP)
		}
		desired[rm.PodCIDR] = rm
	}
	h, err := node.Handle()
	if err != nil {
		return err
	}

	if r.Mode == state.Tunnel {
		if err := syncTunnelNeighbours(h, r.Device, desired); err != nil {
			return err
		}
	}

	current, err := h.RouteListFiltered(unix.AF_INET,
		&netlink.Route{Protocol: RouteProtocol, Table: unix.RT_TABLE_MAIN},
		netlink.RT_FILTER_PROTOCOL|netlink.RT_FILTER_TABLE)
	if err != nil {
		return fmt.Errorf("list routes: %w", err)
	}
	have := make(map[netip.Prefix]netlink.Route, len(current))
	var errs []error
	for _, rt := range current {
		p, ok := prefixOf(rt.Dst)
		if _, want := desired[p]; !ok || !want {
			if err := h.RouteDel(&rt); err != nil && !errors.Is(err, unix.ESRCH) {
				errs = append(errs, fmt.Errorf("delete route %s: %w", rt.Dst, err))
			}
			continue
		}
		have[p] = rt
	}
	for p, rm := range desired {
		want := route(r, rm)
		if got, ok := have[p]; ok && sameRoute(got, want) {
			continue
		}
		if err := h.RouteReplace(want); err != nil {
			errs = append(errs, fmt.Errorf("route %s via %s: %w", p, rm.NodeIP, err))
		}
	}
	return errors.Join(errs...)
}

func route(r Routing, rm Remote) *netlink.Route {
	rt := &netlink.Route{
		LinkIndex: r.Device,
		Dst:       ipNet(rm.PodCIDR),
		Gw:        rm.NodeIP.AsSlice(),
		Protocol:  RouteProtocol,
		Table:     unix.RT_TABLE_MAIN,
	}
	if r.Mode == state.Tunnel {
		// The remote node's address is not on the VXLAN device's link;
		// onlink says "next hop is here anyway", and the permanent
		// neighbour entry gives its MAC.
		rt.Flags = int(netlink.FLAG_ONLINK)
		rt.Encap = &IPEncap{Dst: rm.NodeIP, TTL: tunnelTTL}
	}
	return rt
}

// sameRoute compares what SyncRoutes sets. The tunnel encap is not compared:
// the netlink library does not decode it, and SyncRoutes derives it from the
// gateway and the mode, which are compared (a mode change always changes
// the device and the onlink flag).
func sameRoute(got netlink.Route, want *netlink.Route) bool {
	return got.LinkIndex == want.LinkIndex && got.Gw.Equal(want.Gw) &&
		got.Flags&int(netlink.FLAG_ONLINK) == want.Flags&int(netlink.FLAG_ONLINK)
}

func syncTunnelNeighbours(h *netlink.Handle, dev int, desired map[netip.Prefix]Remote) error {
	nodes := map[netip.Addr]bool{}
	for _, rm := range desired {
		nodes[rm.NodeIP] = true
	}
	current, err := h.NeighList(dev, unix.AF_INET)
	if err != nil {
		return fmt.Errorf("list neighbours: %w", err)
	}
	var errs []error
	for _, n := range current {
		ip, ok := netip.AddrFromSlice(n.IP)
		ip = ip.Unmap()
		if ok && nodes[ip] && n.State == netlink.NUD_PERMANENT && slices.Equal(n.HardwareAddr, VXLANMAC(ip)) {
			delete(nodes, ip) // already right
			continue
		}
		if err := h.NeighDel(&n); err != nil && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, fmt.Errorf("delete neighbour %s: %w", n.IP, err))
		}
	}
	for ip := range nodes {
		if err := h.NeighSet(&netlink.Neigh{
			LinkIndex:    dev,
			Family:       unix.AF_INET,
			State:        netlink.NUD_PERMANENT,
			IP:           ip.AsSlice(),
			HardwareAddr: VXLANMAC(ip),
		}); err != nil {
			errs = append(errs, fmt.Errorf("neighbour %s: %w", ip, err))
		}
	}
	return errors.Join(errs...)
}

func prefixOf(n *net.IPNet) (netip.Prefix, bool) {
	if n == nil {
		return netip.Prefix{}, false
	}
	a, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	ones, _ := n.Mask.Size()
	return netip.PrefixFrom(a.Unmap(), ones), true
}

func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}
