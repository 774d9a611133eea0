package node

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/meshbed/meshbed/datapath"
	"github.com/meshbed/meshbed/datapath/endpoint"
	"github.com/meshbed/meshbed/datapath/netns/netnstest"
	"github.com/meshbed/meshbed/datapath/state"
	"github.com/meshbed/meshbed/datapath/wireguard"
	"github.com/meshbed/meshbed/internal/testenv"
)

func TestUnderDir(t *testing.T) {
	tests := []struct {
		path string
		want bool
	}{
		{"/sys/fs/bpf/meshbed", true},
		{"/sys/fs/bpf", true},
		{"/sys/fs/bpf/a/b/", true},
		{"/sys/fs/bpfx/meshbed", false},
		{"/sys/fs/bpf/../meshbed", false},
		{"/var/run/meshbed/bpf", false},
		{"relative/path", false},
	}
	for _, tt := range tests {
		t.Run(tt.path, func(t *testing.T) {
			if got := underDir(tt.path, datapath.DefaultBPFFS); got != tt.want {
				t.Fatalf("underDir(%q) = %t, want %t", tt.path, got, tt.want)
			}
		})
	}
}

// TestRestartKeepsOverlayAttached restarts a tunnel-mode node datapath
// with a PinPath the way meshbed-agent does (Close, New): the overlay
// program stays attached throughout, the new one takes the same attachment,
// and Remove leaves nothing.
func TestRestartKeepsOverlayAttached(t *testing.T) {
	testenv.Privileged(t)
	bpffs := t.TempDir()
	if err := datapath.MountBPFFS(bpffs); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := unix.Unmount(bpffs, unix.MNT_DETACH); err != nil {
			t.Error(err)
		}
	})
	pin := filepath.Join(bpffs, "meshbed")
	ns := netnstest.New(t, "node-pin", endpoint.NodeSysctls...)
	cfg := Config{NS: ns, NodeIP: netip.MustParseAddr("172.31.2.10"), ClusterID: 1, Routing: state.Tunnel,
		PinPath: pin, Logger: slog.New(slog.NewTextHandler(t.Output(), nil))}

	overlay := func(t *testing.T, dev int) *link.QueryResult {
		t.Helper()
		var res *link.QueryResult
		err := ns.Do(func() (err error) {
			res, err = link.QueryPrograms(link.QueryOptions{Target: dev, Attach: ebpf.AttachTCXIngress})
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		return res
	}
	linkIDs := func(res *link.QueryResult) []link.ID {
		var out []link.ID
		for _, p := range res.Programs {
			id, _ := p.LinkID()
			out = append(out, id)
		}
		return out
	}

	first, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { first.Close() })
	dev := first.route.Device
	before := overlay(t, dev)
	if len(before.Programs) != 1 {
		t.Fatalf("%d programs on the VXLAN device, want 1", len(before.Programs))
	}
	if err := first.Close(); err != nil {
		t.Fatal(err)
	}
	if got := overlay(t, dev); len(got.Programs) != 1 || got.Programs[0].ID != before.Programs[0].ID {
		t.Fatalf("after Close the VXLAN device runs %+v, want %+v", got.Programs, before.Programs)
	}

	second, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { second.Close() })
	if second.route.Device != dev {
		t.Fatalf("VXLAN device %d after restart, was %d (not adopted)", second.route.Device, dev)
	}
	after := overlay(t, dev)
	if len(after.Programs) != 1 || after.Programs[0].ID == before.Programs[0].ID {
		t.Fatalf("after the restart the VXLAN device runs %+v, want one new program (was %+v)", after.Programs, before.Programs)
	}
	if !slices.Equal(linkIDs(after), linkIDs(before)) {
		t.Fatalf("links %v after restart, were %v: attached anew instead of updated", linkIDs(after), linkIDs(before))
	}

	if err := second.Remove(); err != nil {
		t.Fatal(err)
	}
	if got := overlay(t, dev); len(got.Programs) != 0 {
		t.Fatalf("after Remove the VXLAN device runs %+v", got.Programs)
	}
	if _, err := os.Stat(pin); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("pin path left after Remove (%v)", err)
	}
}

// TestRestartKeepsWireGuardKeyAndPeers: a node's datapath set up again
// (an agent restart on a real node) keeps its key, from the state
// directory, and once the agent applies its state again has the same
// peers; between the two, traffic to a peer is refused, never sent in
// clear (the userspace device goes with the process). Encryption off
// removes device, rules and routes.
func TestRestartKeepsWireGuardKeyAndPeers(t *testing.T) {
	testenv.Privileged(t)
	ns := netnstest.New(t, "node-wg", endpoint.NodeSysctls...)
	h, err := ns.Handle()
	if err != nil {
		t.Fatal(err)
	}
	attrs := netlink.NewLinkAttrs()
	attrs.Name, attrs.MTU = "ul0", 1500
	ul := &netlink.Veth{LinkAttrs: attrs, PeerName: "ul1"}
	if err := h.LinkAdd(ul); err != nil {
		t.Fatal(err)
	}
	if peer, err := h.LinkByName("ul1"); err != nil || h.LinkSetUp(peer) != nil {
		t.Fatalf("veth peer: %v", err)
	}
	if err := h.AddrAdd(ul, &netlink.Addr{IPNet: &net.IPNet{IP: net.IPv4(172, 31, 3, 10), Mask: net.CIDRMask(24, 32)}}); err != nil {
		t.Fatal(err)
	}
	if err := h.LinkSetUp(ul); err != nil {
		t.Fatal(err)
	}
	cfg := Config{NS: ns, NodeIP: netip.MustParseAddr("172.31.3.10"), ClusterID: 1, Routing: state.Native, UnderlayIf: "ul0",
		Logger:     slog.New(slog.NewTextHandler(t.Output(), nil)),
		Encryption: Encryption{Mode: EncryptionWireGuard, StateDir: t.TempDir(), Impl: wireguard.Userspace}}
	peerKey := "2ZYyxfKd1q6XxjRjFo0xzEyo3RbNX1Fz5YcK0ZPfcmc="
	s := &state.State{Nodes: []state.Node{
		{Name: "n1", Cluster: "c1", IP: cfg.NodeIP, PodCIDR: netip.MustParsePrefix("10.9.1.0/24")},
		{Name: "n2", Cluster: "c1", IP: netip.MustParseAddr("172.31.3.11"), PodCIDR: netip.MustParsePrefix("10.9.2.0/24"), WireguardPubKey: peerKey},
	}}
	peers := func(n *Node) []string {
		t.Helper()
		ps, err := n.WireGuard().Peers()
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, p := range ps {
			out = append(out, fmt.Sprintf("%s %s %v", p.PublicKey, p.Endpoint, p.AllowedIPs))
		}
		return out
	}
	first, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { first.Close() })
	if first.MTU() != 1500-wireguard.Overhead {
		t.Errorf("pod MTU %d, want the underlay's 1500 less WireGuard's %d", first.MTU(), wireguard.Overhead)
	}
	if err := first.Apply(s); err != nil {
		t.Fatal(err)
	}
	key, before := first.PublicKey(), peers(first)
	if len(before) != 1 {
		t.Fatalf("peers %v, want n2 only", before)
	}
	if err := first.Close(); err != nil {
		t.Fatal(err)
	}
	// Between the two agents: refused, not in clear.
	routes, err := h.RouteListFiltered(unix.AF_INET, &netlink.Route{Table: wireguard.RouteTable}, netlink.RT_FILTER_TABLE)
	if err != nil || len(routes) != 1 || routes[0].Type != unix.RTN_PROHIBIT {
		t.Fatalf("between agents the WireGuard table holds %+v (err %v), want one prohibit route", routes, err)
	}

	second, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { second.Close() })
	if second.PublicKey() != key {
		t.Fatalf("key %s after restart, was %s", second.PublicKey(), key)
	}
	if err := second.Apply(s); err != nil {
		t.Fatal(err)
	}
	if after := peers(second); !slices.Equal(after, before) {
		t.Fatalf("peers %v after restart, were %v", after, before)
	}
	routes, _ = h.RouteListFiltered(unix.AF_INET, &netlink.Route{Table: wireguard.RouteTable}, netlink.RT_FILTER_TABLE)
	if len(routes) != 1 || routes[0].Type != unix.RTN_UNICAST {
		t.Fatalf("after restart the WireGuard table holds %+v, want the route into the device", routes)
	}
	if err := second.Close(); err != nil {
		t.Fatal(err)
	}

	// Encryption switched off: nothing of it is left.
	cfg.Encryption = Encryption{}
	third, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { third.Close() })
	if third.PublicKey() != "" {
		t.Fatal("a node without encryption has a key")
	}
	routes, _ = h.RouteListFiltered(unix.AF_INET, &netlink.Route{Table: wireguard.RouteTable}, netlink.RT_FILTER_TABLE)
	all, _ := h.RuleList(unix.AF_INET)
	var rules []netlink.Rule
	for _, r := range all {
		if r.Table == wireguard.RouteTable || r.Mark == wireguard.FirewallMark {
			rules = append(rules, r)
		}
	}
	if len(routes) != 0 || len(rules) != 0 {
		t.Fatalf("encryption off leaves routes %+v, rules %+v", routes, rules)
	}
}
