package masq_test

import (
	"bufio"
	"context"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/meshbed/meshbed/datapath/endpoint"
	"github.com/meshbed/meshbed/datapath/masq"
	"github.com/meshbed/meshbed/datapath/netns"
	"github.com/meshbed/meshbed/datapath/netns/netnstest"
	"github.com/meshbed/meshbed/datapath/overlay"
	"github.com/meshbed/meshbed/internal/testenv"
	"github.com/vishvananda/netlink"
)

func TestIntervals(t *testing.T) {
	for _, tc := range []struct {
		in   []string
		want string // start-end(exclusive) pairs; end "" when it runs to the top
	}{
		{[]string{"10.1.0.0/24"}, "10.1.0.0-10.1.1.0"},
		// Adjacent and overlapping prefixes merge; order does not matter.
		{[]string{"10.1.1.0/24", "10.1.0.0/24", "10.1.0.128/25", "10.9.0.0/16"}, "10.1.0.0-10.1.2.0 10.9.0.0-10.10.0.0"},
		{[]string{"255.255.255.0/24"}, "255.255.255.0-"},
	} {
		var ps []netip.Prefix
		for _, s := range tc.in {
			ps = append(ps, netip.MustParsePrefix(s))
		}
		var got []string
		for _, e := range masq.Intervals(ps) {
			a := netip.AddrFrom4([4]byte(e.Key)).String()
			if e.IntervalEnd {
				got[len(got)-1] += a
				continue
			}
			got = append(got, a+"-")
		}
		if s := strings.Join(got, " "); s != tc.want {
			t.Errorf("intervals(%v) = %q, want %q", tc.in, s, tc.want)
		}
	}
}

func TestSyncRejectsBadConfig(t *testing.T) {
	for _, cfg := range []masq.Config{
		{},
		{Local: netip.MustParsePrefix("10.1.0.1/24")},
		{Local: netip.MustParsePrefix("fd00::/64")},
		{Local: netip.MustParsePrefix("10.1.0.0/24"), PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.2.0.7/24")}},
	} {
		// Validation comes before the namespace is touched: nil is fine.
		if err := masq.Sync(nil, cfg); err == nil || !strings.Contains(err.Error(), "want a masked IPv4 prefix") {
			t.Errorf("Sync(%+v) = %v, want a validation error", cfg, err)
		}
	}
}

// TestMasquerade: a pod's connection to a host outside the mesh's pod
// networks arrives from the node's address; one to a pod network keeps the
// pod's address. Syncing again replaces the rules; after Remove the outside
// host sees the pod's address again.
func TestMasquerade(t *testing.T) {
	testenv.Privileged(t)
	u, err := overlay.NewUnderlay(netnstest.New(t, "underlay"), overlay.DefaultUnderlay)
	if err != nil {
		t.Fatal(err)
	}
	nodeIP, _ := overlay.HostAddr(overlay.DefaultUnderlay, 1, 0)
	outIP, _ := overlay.HostAddr(overlay.DefaultUnderlay, 1, 1)
	node := netnstest.New(t, "node", endpoint.NodeSysctls...)
	out := netnstest.New(t, "outside")
	if _, err := u.Attach(node, overlay.PortConfig{Addr: nodeIP}); err != nil {
		t.Fatal(err)
	}
	if _, err := u.Attach(out, overlay.PortConfig{Addr: outIP}); err != nil {
		t.Fatal(err)
	}
	pod := netnstest.New(t, "pod")
	podIP := netip.MustParseAddr("10.1.0.2")
	if _, err := endpoint.Create(node, pod, endpoint.Config{ID: "pod", IP: podIP}); err != nil {
		t.Fatal(err)
	}
	// The outside host also answers on a "pod" address of another node
	// (10.2.0.1), routed both ways, as a remote pod would be.
	remotePod := netip.MustParseAddr("10.2.0.1")
	addAddr(t, out, remotePod)
	addRoute(t, node, "10.2.0.0/24", outIP)
	addRoute(t, out, "10.1.0.0/24", nodeIP)

	ln, err := out.Listen("tcp4", ":7000")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			ap, _ := netip.ParseAddrPort(c.RemoteAddr().String())
			_, _ = c.Write([]byte(ap.Addr().String() + "\n"))
			c.Close()
		}
	}()
	cfg := masq.Config{Local: netip.MustParsePrefix("10.1.0.0/24"), PodCIDRs: []netip.Prefix{
		netip.MustParsePrefix("10.1.0.0/24"), netip.MustParsePrefix("10.2.0.0/24")}}
	for range 2 { // the second Sync replaces the first
		if err := masq.Sync(node, cfg); err != nil {
			t.Fatal(err)
		}
	}
	if got, err := seenAs(pod, netip.AddrPortFrom(outIP, 7000)); err != nil || got != nodeIP {
		t.Errorf("outside host saw %v (%v), want the node's address %v", got, err, nodeIP)
	}
	if got, err := seenAs(pod, netip.AddrPortFrom(remotePod, 7000)); err != nil || got != podIP {
		t.Errorf("remote pod saw %v (%v), want the pod's address %v", got, err, podIP)
	}
	c, err := nftables.New(nftables.WithNetNSFd(node.Fd()))
	if err != nil {
		t.Fatal(err)
	}
	if tables, err := c.ListTablesOfFamily(nftables.TableFamilyIPv4); err != nil || len(tables) != 1 {
		t.Errorf("tables after two syncs: %d (%v), want one", len(tables), err)
	}
	if err := masq.Remove(node); err != nil {
		t.Fatal(err)
	}
	if err := masq.Remove(node); err != nil {
		t.Errorf("second Remove: %v", err)
	}
	if got, err := seenAs(pod, netip.AddrPortFrom(outIP, 7000)); err != nil || got != podIP {
		t.Errorf("after Remove the outside host saw %v (%v), want the pod's own address %v", got, err, podIP)
	}
}

// seenAs connects from ns to addr and returns the client address the
// server saw.
func seenAs(ns *netns.NS, addr netip.AddrPort) (netip.Addr, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	c, err := ns.Dial(ctx, nil, "tcp4", addr.String())
	if err != nil {
		return netip.Addr{}, err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(3 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return netip.Addr{}, err
	}
	return netip.ParseAddr(strings.TrimSpace(line))
}

func addAddr(t *testing.T, ns *netns.NS, a netip.Addr) {
	t.Helper()
	h, err := ns.Handle()
	if err != nil {
		t.Fatal(err)
	}
	lo, err := h.LinkByName("lo")
	if err != nil {
		t.Fatal(err)
	}
	if err := h.AddrAdd(lo, &netlink.Addr{IPNet: &net.IPNet{IP: a.AsSlice(), Mask: net.CIDRMask(32, 32)}}); err != nil {
		t.Fatal(err)
	}
}

func addRoute(t *testing.T, ns *netns.NS, dst string, via netip.Addr) {
	t.Helper()
	h, err := ns.Handle()
	if err != nil {
		t.Fatal(err)
	}
	p := netip.MustParsePrefix(dst)
	if err := h.RouteAdd(&netlink.Route{Dst: &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), 32)}, Gw: via.AsSlice()}); err != nil {
		t.Fatal(err)
	}
}
