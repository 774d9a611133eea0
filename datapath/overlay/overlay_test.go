package overlay_test

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/meshbed/meshbed/datapath/endpoint"
	"github.com/meshbed/meshbed/datapath/netns"
	"github.com/meshbed/meshbed/datapath/netns/netnstest"
	"github.com/meshbed/meshbed/datapath/overlay"
	"github.com/meshbed/meshbed/datapath/state"
	"github.com/meshbed/meshbed/internal/testenv"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// node is a simulated node: its namespace, underlay port and one pod.
type node struct {
	ns      *netns.NS
	port    *overlay.Port
	podCIDR netip.Prefix
	vxlan   *overlay.VXLAN
	pod     *netns.NS
	ep      *endpoint.Endpoint
}

// twoNodes builds an underlay and two nodes of cluster 1 on it, each with
// one pod, routed in mode. Everything is released at cleanup.
func twoNodes(t *testing.T, mode state.RoutingMode) (*overlay.Underlay, [2]*node) {
	t.Helper()
	u, err := overlay.NewUnderlay(netnstest.New(t, "underlay"), overlay.DefaultUnderlay)
	if err != nil {
		t.Fatal(err)
	}
	var nodes [2]*node
	for i := range nodes {
		n := &node{ns: netnstest.New(t, fmt.Sprintf("node%d", i), endpoint.NodeSysctls...)}
		n.podCIDR = netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(i + 1), 0, 0}), 24)
		addr, err := overlay.HostAddr(overlay.DefaultUnderlay, 1, i)
		if err != nil {
			t.Fatal(err)
		}
		if n.port, err = u.Attach(n.ns, overlay.PortConfig{Addr: addr}); err != nil {
			t.Fatal(err)
		}
		mtu := n.port.MTU
		if mode == state.Tunnel {
			if n.vxlan, err = overlay.SetupVXLAN(n.ns, overlay.VXLANConfig{NodeIP: addr}); err != nil {
				t.Fatal(err)
			}
			mtu = n.vxlan.MTU
		}
		n.pod = netnstest.New(t, fmt.Sprintf("pod%d", i))
		n.ep, err = endpoint.Create(n.ns, n.pod, endpoint.Config{ID: "pod", IP: n.podCIDR.Addr().Next().Next(), MTU: mtu})
		if err != nil {
			t.Fatal(err)
		}
		nodes[i] = n
	}
	for i, n := range nodes {
		other := nodes[1-i]
		r := overlay.Routing{Mode: mode, Device: n.port.Index}
		if mode == state.Tunnel {
			r.Device = n.vxlan.Index
		}
		if err := overlay.SyncRoutes(n.ns, r, []overlay.Remote{{PodCIDR: other.podCIDR, NodeIP: other.port.Addr.Addr()}}); err != nil {
			t.Fatal(err)
		}
	}
	return u, nodes
}

func serveTCP(t *testing.T, ns *netns.NS, addr string) net.Listener {
	t.Helper()
	l, err := ns.Listen("tcp4", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				fmt.Fprintf(c, "%s\n", c.RemoteAddr().(*net.TCPAddr).IP)
				io.Copy(c, c)
			}()
		}
	}()
	return l
}

// tcpCheck connects from ns to addr, checks the server saw wantPeer as the
// client, and pushes enough data to need full-sized segments (which the MTU
// must let through).
func tcpCheck(t *testing.T, from *netns.NS, wantPeer netip.Addr, addr string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	start := time.Now()
	c, err := from.Dial(ctx, nil, "tcp4", addr)
	if err != nil {
		t.Fatalf("dial %s from %s: %v", addr, from, err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	r := bufio.NewReader(c)
	seen, err := r.ReadString('\n')
	if err != nil {
		t.Fatalf("greeting from %s: %v", addr, err)
	}
	// A lost first packet shows up as a one-second retransmission.
	if d := time.Since(start); d > 900*time.Millisecond {
		t.Errorf("handshake with %s took %v: a packet was lost", addr, d)
	}
	if got := strings.TrimSpace(seen); got != wantPeer.String() {
		t.Errorf("%s saw client %s, want %s", addr, got, wantPeer)
	}
	payload := bytes.Repeat([]byte("0123456789abcdef"), 16<<10)
	go c.Write(payload)
	got := make([]byte, len(payload))
	if _, err := io.ReadFull(r, got); err != nil {
		t.Fatalf("echo from %s: %v", addr, err)
	}
	if !bytes.Equal(got, payload) {
		t.Errorf("echo from %s differs", addr)
	}
}

func udpCheck(t *testing.T, server, client *netns.NS, serverIP, clientIP netip.Addr) {
	t.Helper()
	pc, err := server.ListenPacket("udp4", serverIP.String()+":9000")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	go func() {
		buf := make([]byte, 2048)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			pc.WriteTo(append([]byte(from.String()+" "), buf[:n]...), from)
		}
	}()
	cc, err := client.ListenPacket("udp4", clientIP.String()+":0")
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	to := net.UDPAddrFromAddrPort(netip.AddrPortFrom(serverIP, 9000))
	buf := make([]byte, 2048)
	// UDP has no retransmission: retry a few times, and require an answer.
	for attempt := 0; ; attempt++ {
		if _, err := cc.WriteTo([]byte("hello"), to); err != nil {
			t.Fatal(err)
		}
		cc.SetReadDeadline(time.Now().Add(time.Second))
		n, from, err := cc.ReadFrom(buf)
		if err == nil {
			if got := from.(*net.UDPAddr).AddrPort().Addr(); got != serverIP {
				t.Errorf("reply from %s, want %s", got, serverIP)
			}
			if want := fmt.Sprintf("%s hello", cc.LocalAddr()); string(buf[:n]) != want {
				t.Errorf("reply %q, want %q", buf[:n], want)
			}
			return
		}
		if attempt == 4 {
			t.Fatalf("no UDP reply from %s to %s: %v", serverIP, clientIP, err)
		}
	}
}

func TestPodToPodAcrossNodes(t *testing.T) {
	testenv.Privileged(t)
	for _, mode := range []state.RoutingMode{state.Native, state.Tunnel} {
		t.Run(map[state.RoutingMode]string{state.Native: "native", state.Tunnel: "tunnel"}[mode], func(t *testing.T) {
			netnstest.CheckLeaks(t)
			_, nodes := twoNodes(t, mode)
			a, b := nodes[0], nodes[1]
			var vxBefore [2]uint64
			if mode == state.Tunnel {
				vxBefore = [2]uint64{vxlanTx(t, a), vxlanTx(t, b)}
			}

			lb := serveTCP(t, b.pod, b.ep.IP.String()+":8080")
			la := serveTCP(t, a.pod, a.ep.IP.String()+":8080")
			tcpCheck(t, a.pod, a.ep.IP, lb.Addr().String())
			tcpCheck(t, b.pod, b.ep.IP, la.Addr().String())
			udpCheck(t, b.pod, a.pod, b.ep.IP, a.ep.IP)
			udpCheck(t, a.pod, b.pod, a.ep.IP, b.ep.IP)
			// A node reaches a remote pod from its underlay address.
			tcpCheck(t, a.ns, a.port.Addr.Addr(), lb.Addr().String())

			if mode == state.Tunnel {
				// The traffic really went through the tunnel both ways.
				for i, n := range nodes {
					if tx := vxlanTx(t, n); tx <= vxBefore[i] {
						t.Errorf("node%d VXLAN device sent nothing (%d packets before, %d after)", i, vxBefore[i], tx)
					}
				}
			}
		})
	}
}

func vxlanTx(t *testing.T, n *node) uint64 {
	t.Helper()
	h, _ := n.ns.Handle()
	l, err := h.LinkByIndex(n.vxlan.Index)
	if err != nil {
		t.Fatal(err)
	}
	return l.Attrs().Statistics.TxPackets
}

func TestVXLANCollectMetadata(t *testing.T) {
	testenv.Privileged(t)
	netnstest.CheckLeaks(t)
	nodeIP := netip.MustParseAddr("172.20.1.1")
	for _, tc := range []struct {
		name string
		cfg  overlay.VXLANConfig
		want overlay.VXLAN
	}{
		{"defaults", overlay.VXLANConfig{NodeIP: nodeIP},
			overlay.VXLAN{Name: "meshbed_vxlan", Port: 8472, MTU: 1450, MAC: overlay.VXLANMAC(nodeIP)}},
		{"explicit", overlay.VXLANConfig{NodeIP: nodeIP, Name: "mbvx", Port: 4789, MTU: 1400},
			overlay.VXLAN{Name: "mbvx", Port: 4789, MTU: 1400, MAC: overlay.VXLANMAC(nodeIP)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ns := netnstest.New(t, "vx")
			vx, err := overlay.SetupVXLAN(ns, tc.cfg)
			if err != nil {
				t.Fatal(err)
			}
			checkVXLAN(t, ns, vx, tc.want)

			// Set up again (an agent restart) with another MTU: the device is
			// adopted, not recreated.
			tc.cfg.MTU = 1300
			again, err := overlay.SetupVXLAN(ns, tc.cfg)
			if err != nil {
				t.Fatal(err)
			}
			if again.Index != vx.Index {
				t.Errorf("second setup recreated the device (index %d, was %d)", again.Index, vx.Index)
			}
			tc.want.MTU = 1300
			checkVXLAN(t, ns, again, tc.want)

			if err := overlay.DeleteVXLAN(ns, vx.Name); err != nil {
				t.Fatal(err)
			}
			if err := overlay.DeleteVXLAN(ns, vx.Name); err != nil {
				t.Errorf("second delete: %v", err)
			}
			h, _ := ns.Handle()
			if _, err := h.LinkByName(vx.Name); err == nil {
				t.Error("device still present after DeleteVXLAN")
			}
		})
	}
}

func checkVXLAN(t *testing.T, ns *netns.NS, vx *overlay.VXLAN, want overlay.VXLAN) {
	t.Helper()
	h, _ := ns.Handle()
	link, err := h.LinkByName(want.Name)
	if err != nil {
		t.Fatal(err)
	}
	v, ok := link.(*netlink.Vxlan)
	if !ok {
		t.Fatalf("%s is a %s, want vxlan", want.Name, link.Type())
	}
	if !v.FlowBased || v.VxlanId != 0 || v.Learning || v.Port != want.Port || v.MTU != want.MTU ||
		v.HardwareAddr.String() != want.MAC.String() || v.Flags&net.FlagUp == 0 || v.Index != vx.Index {
		t.Errorf("read back flowbased=%v vni=%d learning=%v port=%d mtu=%d mac=%s flags=%v index=%d; want external, port %d, mtu %d, mac %s, up, index %d",
			v.FlowBased, v.VxlanId, v.Learning, v.Port, v.MTU, v.HardwareAddr, v.Flags, v.Index, want.Port, want.MTU, want.MAC, vx.Index)
	}
	if vx.Name != want.Name || vx.Port != want.Port || vx.MTU != want.MTU || vx.MAC.String() != want.MAC.String() {
		t.Errorf("returned %+v, want %+v", vx, want)
	}
}

func TestSetupVXLANReplacesAMismatchedDevice(t *testing.T) {
	testenv.Privileged(t)
	netnstest.CheckLeaks(t)
	ns := netnstest.New(t, "vx")
	h, _ := ns.Handle()
	attrs := func() netlink.LinkAttrs {
		a := netlink.NewLinkAttrs()
		a.Name = overlay.DefaultVXLANName
		return a
	}
	for _, tc := range []struct {
		name string
		link netlink.Link
	}{
		{"bridge", &netlink.Bridge{LinkAttrs: attrs()}},
		{"vxlan with a VNI", &netlink.Vxlan{LinkAttrs: attrs(), VxlanId: 42, Port: overlay.DefaultVXLANPort}},
		{"external vxlan on 4789", &netlink.Vxlan{LinkAttrs: attrs(), FlowBased: true, Port: 4789}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := h.LinkAdd(tc.link); err != nil {
				t.Fatal(err)
			}
			vx, err := overlay.SetupVXLAN(ns, overlay.VXLANConfig{NodeIP: netip.MustParseAddr("172.20.1.1")})
			if err != nil {
				t.Fatal(err)
			}
			link, err := h.LinkByIndex(vx.Index)
			if v, ok := link.(*netlink.Vxlan); err != nil || !ok || !v.FlowBased || v.Port != overlay.DefaultVXLANPort {
				t.Fatalf("device after setup: %v, %v", link, err)
			}
			if err := overlay.DeleteVXLAN(ns, vx.Name); err != nil {
				t.Fatal(err)
			}
		})
	}
	for _, bad := range []overlay.VXLANConfig{
		{},
		{NodeIP: netip.MustParseAddr("fd00::1")},
		{NodeIP: netip.MustParseAddr("172.20.1.1"), Port: 70000},
		{NodeIP: netip.MustParseAddr("172.20.1.1"), MTU: 65500},
		{NodeIP: netip.MustParseAddr("172.20.1.1"), Name: "a_name_too_long_for_linux"},
	} {
		if _, err := overlay.SetupVXLAN(ns, bad); err == nil {
			t.Errorf("SetupVXLAN(%+v) succeeded", bad)
		}
	}
}

func TestSyncRoutes(t *testing.T) {
	testenv.Privileged(t)
	netnstest.CheckLeaks(t)
	ns := netnstest.New(t, "node", endpoint.NodeSysctls...)
	u, err := overlay.NewUnderlay(netnstest.New(t, "underlay"), overlay.DefaultUnderlay)
	if err != nil {
		t.Fatal(err)
	}
	port, err := u.Attach(ns, overlay.PortConfig{Addr: netip.MustParseAddr("172.20.1.1")})
	if err != nil {
		t.Fatal(err)
	}
	vx, err := overlay.SetupVXLAN(ns, overlay.VXLANConfig{NodeIP: netip.MustParseAddr("172.20.1.1")})
	if err != nil {
		t.Fatal(err)
	}
	h, _ := ns.Handle()
	// Someone else's route through the underlay must survive every sync.
	foreign := &netlink.Route{LinkIndex: port.Index, Dst: mustNet("192.0.2.0/24"), Gw: net.ParseIP("172.20.1.100")}
	if err := h.RouteAdd(foreign); err != nil {
		t.Fatal(err)
	}
	remote := func(cidr, ip string) overlay.Remote {
		return overlay.Remote{PodCIDR: netip.MustParsePrefix(cidr), NodeIP: netip.MustParseAddr(ip)}
	}
	three := []overlay.Remote{remote("10.2.0.0/24", "172.20.1.2"), remote("10.3.0.0/24", "172.20.1.3"), remote("10.4.0.0/24", "172.20.2.1")}
	native := overlay.Routing{Mode: state.Native, Device: port.Index}
	tunnel := overlay.Routing{Mode: state.Tunnel, Device: vx.Index}

	for _, step := range []struct {
		name    string
		routing overlay.Routing
		remotes []overlay.Remote
	}{
		{"native three", native, three},
		{"native again", native, three},
		{"native one", native, three[:1]},
		{"tunnel three", tunnel, three},
		{"tunnel moved", tunnel, []overlay.Remote{remote("10.2.0.0/24", "172.20.1.9"), three[2]}},
		{"back to native", native, three[1:]},
		{"none", native, nil},
	} {
		t.Run(step.name, func(t *testing.T) {
			if err := overlay.SyncRoutes(ns, step.routing, step.remotes); err != nil {
				t.Fatal(err)
			}
			checkRoutes(t, h, step.routing, step.remotes)
			if step.routing.Mode == state.Tunnel {
				checkTunnelNeighbours(t, h, vx.Index, step.remotes)
			}
			got, err := h.RouteListFiltered(unix.AF_INET, foreign, netlink.RT_FILTER_DST|netlink.RT_FILTER_GW)
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != 1 {
				t.Errorf("foreign route gone: %v", got)
			}
		})
	}

	for _, bad := range [][]overlay.Remote{
		{remote("10.2.0.1/24", "172.20.1.2")}, // not masked
		{{PodCIDR: netip.MustParsePrefix("fd00::/64"), NodeIP: netip.MustParseAddr("172.20.1.2")}},
		{remote("10.2.0.0/24", "172.20.1.2"), remote("10.2.0.0/24", "172.20.1.3")}, // claimed twice
	} {
		if err := overlay.SyncRoutes(ns, native, bad); err == nil {
			t.Errorf("SyncRoutes(%v) succeeded", bad)
		}
	}
	if err := overlay.SyncRoutes(ns, overlay.Routing{Mode: state.Native}, nil); err == nil {
		t.Error("SyncRoutes without a device succeeded")
	}
}

func mustNet(s string) *net.IPNet {
	_, n, err := net.ParseCIDR(s)
	if err != nil {
		panic(err)
	}
	return n
}

func checkRoutes(t *testing.T, h *netlink.Handle, r overlay.Routing, remotes []overlay.Remote) {
	t.Helper()
	routes, err := h.RouteListFiltered(unix.AF_INET, &netlink.Route{Protocol: overlay.RouteProtocol}, netlink.RT_FILTER_PROTOCOL)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, rt := range routes {
		onlink := rt.Flags&int(netlink.FLAG_ONLINK) != 0
		got[rt.Dst.String()] = fmt.Sprintf("via %s dev %d onlink=%v", rt.Gw, rt.LinkIndex, onlink)
	}
	want := map[string]string{}
	for _, rm := range remotes {
		want[rm.PodCIDR.String()] = fmt.Sprintf("via %s dev %d onlink=%v", rm.NodeIP, r.Device, r.Mode == state.Tunnel)
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("routes = %v, want %v", got, want)
	}
	// In tunnel mode the route must carry the IP encap: ask the kernel
	// which route a packet takes and check it resolves through the device.
	for _, rm := range remotes {
		res, err := h.RouteGet(rm.PodCIDR.Addr().Next().AsSlice())
		if err != nil || len(res) == 0 || res[0].LinkIndex != r.Device {
			t.Errorf("route lookup for %s = %v, %v; want dev %d", rm.PodCIDR, res, err, r.Device)
		}
	}
}

func checkTunnelNeighbours(t *testing.T, h *netlink.Handle, dev int, remotes []overlay.Remote) {
	t.Helper()
	neighs, err := h.NeighList(dev, unix.AF_INET)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, n := range neighs {
		got[n.IP.String()] = fmt.Sprintf("%s/%#x", n.HardwareAddr, n.State)
	}
	want := map[string]string{}
	for _, rm := range remotes {
		want[rm.NodeIP.String()] = fmt.Sprintf("%s/%#x", overlay.VXLANMAC(rm.NodeIP), netlink.NUD_PERMANENT)
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("tunnel neighbours = %v, want %v", got, want)
	}
}

func TestUnderlayTeardown(t *testing.T) {
	testenv.Privileged(t)
	netnstest.CheckLeaks(t)
	uns := netnstest.New(t, "underlay")
	u, err := overlay.NewUnderlay(uns, overlay.DefaultUnderlay)
	if err != nil {
		t.Fatal(err)
	}
	hu, _ := uns.Handle()
	n1 := netnstest.New(t, "n1")
	p1, err := u.Attach(n1, overlay.PortConfig{Addr: netip.MustParseAddr("172.20.1.1")})
	if err != nil {
		t.Fatal(err)
	}
	// Same address twice: refused.
	if _, err := u.Attach(netnstest.New(t, "dup"), overlay.PortConfig{Addr: p1.Addr.Addr()}); err == nil {
		t.Error("second attach of one address succeeded")
	}
	for _, bad := range []overlay.PortConfig{
		{Addr: netip.MustParseAddr("10.0.0.1")},   // outside the underlay
		{Addr: netip.MustParseAddr("172.20.0.0")}, // the network address
		{Addr: netip.MustParseAddr("172.20.1.5"), IfName: "an_overly_long_name"},
		{Addr: netip.MustParseAddr("172.20.1.5"), MTU: 10},
	} {
		if _, err := u.Attach(n1, bad); err == nil {
			t.Errorf("Attach(%+v) succeeded", bad)
		}
	}

	// Detach removes both ends.
	if err := u.Detach(p1); err != nil {
		t.Fatal(err)
	}
	if err := u.Detach(p1); err != nil {
		t.Errorf("second Detach: %v", err)
	}
	if links := linkNames(t, hu); fmt.Sprint(links) != fmt.Sprint([]string{"lo", overlay.BridgeName}) {
		t.Errorf("underlay links after Detach = %v", links)
	}
	h1, _ := n1.Handle()
	if links := linkNames(t, h1); fmt.Sprint(links) != "[lo]" {
		t.Errorf("node links after Detach = %v", links)
	}

	// Closing a node namespace removes its bridge port too.
	n2, err := netns.New("n2-" + netnstest.Suffix())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n2.Close() })
	p2, err := u.Attach(n2, overlay.PortConfig{Addr: netip.MustParseAddr("172.20.1.2")})
	if err != nil {
		t.Fatal(err)
	}
	if err := n2.Close(); err != nil {
		t.Fatal(err)
	}
	netnstest.Eventually(t, 10*time.Second, func() error {
		if _, err := hu.LinkByIndex(p2.BridgePortIndex); err == nil {
			return errors.New("bridge port survives its node namespace")
		}
		return nil
	})
}

func linkNames(t *testing.T, h *netlink.Handle) []string {
	t.Helper()
	links, err := h.LinkList()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, l := range links {
		names = append(names, l.Attrs().Name)
	}
	return names
}

func TestUnderlayAddressing(t *testing.T) {
	for _, tc := range []struct {
		underlay      string
		cluster, host int
		want          string
		wantPrefix    string
	}{
		{"172.20.0.0/16", 0, 0, "172.20.0.1", "172.20.0.0/24"},
		{"172.20.0.0/16", 1, 0, "172.20.1.1", "172.20.1.0/24"},
		{"172.20.0.0/16", 255, 253, "172.20.255.254", "172.20.255.0/24"},
		{"10.128.0.0/15", 300, 9, "10.129.44.10", "10.129.44.0/24"},
		{"172.20.0.0/16", 256, 0, "", ""},
		{"172.20.0.0/16", -1, 0, "", ""},
		{"172.20.0.0/16", 1, 254, "", "172.20.1.0/24"},
		{"172.20.0.0/16", 1, -1, "", "172.20.1.0/24"},
		{"172.20.0.0/25", 0, 0, "", ""},
		{"fd00::/16", 0, 0, "", ""},
	} {
		t.Run(fmt.Sprintf("%s/%d/%d", tc.underlay, tc.cluster, tc.host), func(t *testing.T) {
			u := netip.MustParsePrefix(tc.underlay)
			p, err := overlay.ClusterPrefix(u, tc.cluster)
			if (err == nil) != (tc.wantPrefix != "") || (err == nil && p.String() != tc.wantPrefix) {
				t.Errorf("ClusterPrefix = %v, %v; want %q", p, err, tc.wantPrefix)
			}
			a, err := overlay.HostAddr(u, tc.cluster, tc.host)
			if (err == nil) != (tc.want != "") || (err == nil && a.String() != tc.want) {
				t.Errorf("HostAddr = %v, %v; want %q", a, err, tc.want)
			}
		})
	}
}

func TestRemotesFromNodes(t *testing.T) {
	self := netip.MustParseAddr("172.20.1.1")
	nodes := []state.Node{
		{Name: "a", IP: self, PodCIDR: netip.MustParsePrefix("10.1.0.0/24")},
		{Name: "b", IP: netip.MustParseAddr("172.20.1.2"), PodCIDR: netip.MustParsePrefix("10.2.0.5/24")},
		{Name: "no-cidr", IP: netip.MustParseAddr("172.20.1.3")},
		{Name: "v6", IP: netip.MustParseAddr("fd00::1"), PodCIDR: netip.MustParsePrefix("10.4.0.0/24")},
	}
	got := overlay.RemotesFromNodes(self, nodes)
	want := []overlay.Remote{{PodCIDR: netip.MustParsePrefix("10.2.0.0/24"), NodeIP: netip.MustParseAddr("172.20.1.2")}}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("RemotesFromNodes = %v, want %v", got, want)
	}
}

// TestAttachedIsReady: right after Attach returns, the first packets pass.
// Until the kernel's link watcher has seen a new port's carrier, the bridge
// drops its frames, and a lost first ARP or SYN costs a one-second retry.
func TestAttachedIsReady(t *testing.T) {
	testenv.Privileged(t)
	netnstest.CheckLeaks(t)
	u, err := overlay.NewUnderlay(netnstest.New(t, "underlay"), overlay.DefaultUnderlay)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		server, client := netnstest.New(t, "server"), netnstest.New(t, "client")
		sa, _ := overlay.HostAddr(overlay.DefaultUnderlay, 2, 2*i)
		ca, _ := overlay.HostAddr(overlay.DefaultUnderlay, 2, 2*i+1)
		if _, err := u.Attach(server, overlay.PortConfig{Addr: sa}); err != nil {
			t.Fatal(err)
		}
		l := serveTCP(t, server, sa.String()+":8080")
		if _, err := u.Attach(client, overlay.PortConfig{Addr: ca}); err != nil {
			t.Fatal(err)
		}
		tcpCheck(t, client, ca, l.Addr().String())
	}
}
