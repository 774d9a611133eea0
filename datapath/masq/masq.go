// Package masq masquerades what a node's pods send outside the mesh's pod
// networks, as Cilium's enable-ipv4-masquerade does with iptables and Kind's
// kindnet with ip-masq-agent.
//
// Why it is needed: a pod's packet to something that is not a pod (a node's
// host network, the API server behind kube-proxy's ClusterIP, the outside)
// leaves through the host stack, where kube-proxy may DNAT it. Without
// masquerade the answer is addressed to the pod's own IP, and a node that
// routes the mesh's pod CIDRs through the tunnel sends it back encapsulated:
// it then reaches the pod through the overlay program, past the host's
// conntrack, so kube-proxy's DNAT is never undone and the connection never
// completes (CoreDNS on a Kind worker could not reach the API server). With
// the source masqueraded to the node's address the answer comes back to
// the node's host stack, which undoes both translations.
//
// Traffic between pods, in this node's cluster or another one, keeps its
// source address: policy by identity depends on it.
//
// The rules are one nftables table, "meshbed" in the ip family, in the
// node's namespace, replaced as a whole in one transaction on every change:
//
//	table ip meshbed {
//		set pod-cidrs { type ipv4_addr; flags interval; elements = { every node's pod CIDR } }
//		chain postrouting {
//			type nat hook postrouting priority srcnat;
//			ip saddr <this node's pod CIDR> ip daddr != @pod-cidrs masquerade
//		}
//	}
package masq

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"

	"github.com/meshbed/meshbed/datapath/netns"
)

// Table is the name of the nftables table (family ip) this package owns.
const Table = "meshbed"

const (
	setName   = "pod-cidrs"
	chainName = "postrouting"
)

// Config is what the rules are made of.
type Config struct {
	// Local is this node's pod CIDR: the sources to masquerade.
	Local netip.Prefix
	// PodCIDRs are the mesh's pod networks (every node's pod CIDR, local
	// and remote clusters): destinations that keep the pod's source.
	PodCIDRs []netip.Prefix
}

func (c Config) validate() error {
	if !c.Local.IsValid() || !c.Local.Addr().Is4() || c.Local != c.Local.Masked() {
		return fmt.Errorf("local pod CIDR %s: want a masked IPv4 prefix", c.Local)
	}
	for _, p := range c.PodCIDRs {
		if !p.Addr().Is4() || p != p.Masked() {
			return fmt.Errorf("pod CIDR %s: want a masked IPv4 prefix", p)
		}
	}
	return nil
}

// Sync makes the node's masquerade rules exactly cfg, in one transaction.
func Sync(ns *netns.NS, cfg Config) error {
	if err := cfg.validate(); err != nil {
		return fmt.Errorf("masquerade in %s: %w", ns, err)
	}
	c, err := nftables.New(nftables.WithNetNSFd(ns.Fd()))
	if err != nil {
		return fmt.Errorf("masquerade in %s: %w", ns, err)
	}
	t := &nftables.Table{Name: Table, Family: nftables.TableFamilyIPv4}
	// add; delete; add: replaces the table whether or not it existed, and
	// nothing is ever half-applied (one netlink batch is one transaction).
	c.AddTable(t)
	c.DelTable(t)
	c.AddTable(t)
	set := &nftables.Set{Table: t, Name: setName, KeyType: nftables.TypeIPAddr, Interval: true}
	if err := c.AddSet(set, intervals(append([]netip.Prefix{cfg.Local}, cfg.PodCIDRs...))); err != nil {
		return fmt.Errorf("masquerade in %s: %w", ns, err)
	}
	ch := c.AddChain(&nftables.Chain{
		Name: chainName, Table: t, Type: nftables.ChainTypeNAT,
		Hooknum: nftables.ChainHookPostrouting, Priority: nftables.ChainPriorityNATSource,
	})
	local := cfg.Local.Addr().As4()
	mask := netmask(cfg.Local.Bits())
	c.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 12, Len: 4}, // ip saddr
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: mask[:], Xor: make([]byte, 4)},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: local[:]},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 16, Len: 4}, // ip daddr
		&expr.Lookup{SourceRegister: 1, SetName: set.Name, SetID: set.ID, Invert: true},
		&expr.Masq{},
	}})
	if err := c.Flush(); err != nil {
		return fmt.Errorf("masquerade in %s: apply table %s: %w", ns, Table, err)
	}
	return nil
}

// Remove deletes the table; a table that is not there is not an error.
func Remove(ns *netns.NS) error {
	c, err := nftables.New(nftables.WithNetNSFd(ns.Fd()))
	if err != nil {
		return fmt.Errorf("masquerade in %s: %w", ns, err)
	}
	t := &nftables.Table{Name: Table, Family: nftables.TableFamilyIPv4}
	c.DelTable(t)
	if err := c.Flush(); err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("masquerade in %s: delete table %s: %w", ns, Table, err)
	}
	return nil
}

func netmask(bits int) [4]byte {
	m := ^uint32(0) << (32 - bits)
	if bits == 0 {
		m = 0
	}
	return [4]byte{byte(m >> 24), byte(m >> 16), byte(m >> 8), byte(m)}
}

// span is an inclusive range of IPv4 addresses as integers.
type span struct{ lo, hi uint64 }

// intervals turns prefixes into the elements of an interval set: the start
// of each merged range and, flagged as its end, the first address past it
// (none when the range runs to 255.255.255.255). Overlapping and adjacent
// prefixes are merged: the kernel refuses overlapping intervals.
func intervals(prefixes []netip.Prefix) []nftables.SetElement {
	spans := make([]span, 0, len(prefixes))
	for _, p := range prefixes {
		a := p.Addr().As4()
		lo := uint64(a[0])<<24 | uint64(a[1])<<16 | uint64(a[2])<<8 | uint64(a[3])
		spans = append(spans, span{lo, lo + 1<<(32-p.Bits()) - 1})
	}
	slices.SortFunc(spans, func(a, b span) int {
		switch {
		case a.lo < b.lo:
			return -1
		case a.lo > b.lo:
			return 1
		}
		return 0
	})
	var merged []span
	for _, s := range spans {
		if n := len(merged); n > 0 && s.lo <= merged[n-1].hi+1 {
			merged[n-1].hi = max(merged[n-1].hi, s.hi)
			continue
		}
		merged = append(merged, s)
	}
	var els []nftables.SetElement
	for _, s := range merged {
		els = append(els, nftables.SetElement{Key: be4(s.lo)})
		if s.hi < 1<<32-1 {
			els = append(els, nftables.SetElement{Key: be4(s.hi + 1), IntervalEnd: true})
		}
	}
	return els
}

func be4(v uint64) []byte { return []byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)} }
