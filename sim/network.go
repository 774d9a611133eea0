package sim

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sort"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/meshbed/meshbed/datapath/netns"
)

// Plane of a partition.
type Plane string

const (
	// PlaneBoth cuts everything between the groups: a real partition.
	PlaneBoth Plane = "both"
	// PlaneData cuts pod and node traffic, not the mesh control plane.
	PlaneData Plane = "data"
	// PlaneControl cuts only connections between control-plane components
	// of different clusters (etcd clients of kvstoremesh and agents).
	PlaneControl Plane = "control"
)

// Member is a partition group member: a whole cluster, or one node of it
// (Node non-empty).
type Member struct {
	Cluster string
	Node    string
}

// host is one namespace attached to the underlay.
type host struct {
	cluster   *Cluster
	node      *Node // nil for the apiserver's namespace
	ns        *netns.NS
	addr      netip.Addr
	apiserver bool
}

// partitionTable is the routing table that holds partitions' blackhole
// routes. A policy rule consults it before the main table, so a cut never
// collides with (or replaces) a route of the datapath for the same prefix,
// and a lookup without a blackhole falls through to the main table.
const (
	partitionTable    = 0x6d62 // "mb"
	partitionRulePrio = 100
)

// blackhole is a route a partition added, to be removed by Heal.
type blackhole struct {
	ns  *netns.NS
	dst netip.Prefix
}

// hosts returns the underlay hosts of a member.
func (m *Mesh) hosts(mb Member) ([]host, error) {
	c, ok := m.byName[mb.Cluster]
	if !ok {
		return nil, fmt.Errorf("partition: no cluster %q", mb.Cluster)
	}
	var hs []host
	if mb.Node == "" {
		hs = append(hs, host{cluster: c, ns: c.apiNS, addr: c.apiIP, apiserver: true})
	}
	for _, n := range c.nodes {
		if mb.Node == "" || mb.Node == n.name {
			hs = append(hs, host{cluster: c, node: n, ns: n.ns, addr: n.ip})
		}
	}
	if len(hs) == 0 {
		return nil, fmt.Errorf("partition: cluster %q has no node %q", mb.Cluster, mb.Node)
	}
	return hs, nil
}

// cutTargets lists the prefixes a sender must not reach for a plane: for
// data, the receiver's nodes and their pods; for control, the receiver's
// apiserver (the only etcd), and when the sender is an apiserver everything
// of the receiver's (its replies to their etcd clients).
func cutTargets(from host, to []host, plane Plane) []netip.Prefix {
	var out []netip.Prefix
	data := plane != PlaneControl
	for _, t := range to {
		control := plane != PlaneData && from.cluster != t.cluster
		switch {
		case !from.apiserver && !t.apiserver && data:
			out = append(out, netip.PrefixFrom(t.addr, 32), t.node.podCIDR)
		case t.apiserver && control:
			out = append(out, netip.PrefixFrom(t.addr, 32))
		case from.apiserver && !t.apiserver && control:
			out = append(out, netip.PrefixFrom(t.addr, 32))
		}
	}
	return out
}

// Partition cuts the network between groups. With oneWay only traffic from
// the first group to the others is cut. Partitions add up until Heal.
func (m *Mesh) Partition(groups [][]Member, plane Plane, oneWay bool) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if len(groups) < 2 {
		return fmt.Errorf("partition: need at least two groups, got %d", len(groups))
	}
	switch plane {
	case "":
		plane = PlaneBoth
	case PlaneBoth, PlaneData, PlaneControl:
	default:
		return fmt.Errorf("partition: unknown plane %q", plane)
	}
	resolved := make([][]host, len(groups))
	group := map[*netns.NS]int{}
	for i, g := range groups {
		for _, mb := range g {
			hs, err := m.hosts(mb)
			if err != nil {
				return err
			}
			for _, h := range hs {
				if j, ok := group[h.ns]; ok && j != i {
					return fmt.Errorf("partition: %s is in groups %d and %d", h.ns, j+1, i+1)
				}
				group[h.ns] = i
			}
			resolved[i] = append(resolved[i], hs...)
		}
	}
	for i, from := range resolved {
		if oneWay && i > 0 {
			break
		}
		for j, to := range resolved {
			if i == j {
				continue
			}
			for _, s := range from {
				for _, dst := range cutTargets(s, to, plane) {
					if err := m.addBlackhole(s.ns, dst); err != nil {
						return fmt.Errorf("partition: %w", err)
					}
				}
			}
		}
	}
	return nil
}

func (m *Mesh) addBlackhole(ns *netns.NS, dst netip.Prefix) error {
	for _, b := range m.blackholes {
		if b.ns == ns && b.dst == dst {
			return nil
		}
	}
	h, err := ns.Handle()
	if err != nil {
		return err
	}
	if !m.ruled[ns] {
		rule := netlink.NewRule()
		rule.Table, rule.Priority, rule.Family = partitionTable, partitionRulePrio, unix.AF_INET
		if err := h.RuleAdd(rule); err != nil && !errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("partition rule in %s: %w", ns, err)
		}
		m.ruled[ns] = true
	}
	r := &netlink.Route{Dst: prefixNet(dst), Type: unix.RTN_BLACKHOLE, Table: partitionTable}
	if err := h.RouteAdd(r); err != nil {
		return fmt.Errorf("blackhole %s in %s: %w", dst, ns, err)
	}
	m.blackholes = append(m.blackholes, blackhole{ns: ns, dst: dst})
	return nil
}

// Heal removes every partition.
func (m *Mesh) Heal() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	var firstErr error
	for _, b := range m.blackholes {
		h, err := b.ns.Handle()
		if err == nil {
			err = h.RouteDel(&netlink.Route{Dst: prefixNet(b.dst), Type: unix.RTN_BLACKHOLE, Table: partitionTable})
		}
		if err != nil && firstErr == nil {
			firstErr = fmt.Errorf("heal: remove blackhole %s in %s: %w", b.dst, b.ns, err)
		}
	}
	m.blackholes = nil
	return firstErr
}

// Partitioned lists the cuts in force, for status output.
func (m *Mesh) Partitioned() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []string
	for _, b := range m.blackholes {
		out = append(out, fmt.Sprintf("%s ↛ %s", b.ns, b.dst))
	}
	sort.Strings(out)
	return out
}

func prefixNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}
