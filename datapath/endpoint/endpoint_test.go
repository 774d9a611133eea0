package endpoint_test

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/meshbed/meshbed/datapath/endpoint"
	"github.com/meshbed/meshbed/datapath/netns"
	"github.com/meshbed/meshbed/datapath/netns/netnstest"
	"github.com/meshbed/meshbed/internal/testenv"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

func newNode(t testing.TB) *netns.NS {
	t.Helper()
	return netnstest.New(t, "node", endpoint.NodeSysctls...)
}

func mustCreate(t testing.TB, node, pod *netns.NS, cfg endpoint.Config) *endpoint.Endpoint {
	t.Helper()
	ep, err := endpoint.Create(node, pod, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := endpoint.Delete(node, ep.HostIfName); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
	return ep
}

// echoServer accepts on l and answers every connection with the peer
// address it saw, then echoes; it stops when l is closed.
func echoServer(l net.Listener) {
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
}

// tcpExchange dials from pod to addr, checks that the server saw the
// client's pod address (plain routing, no NAT) and that bytes come back.
func tcpExchange(t *testing.T, from *netns.NS, fromIP netip.Addr, addr string) {
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
		t.Fatalf("read greeting: %v", err)
	}
	// A packet lost while a veth was not ready costs a one-second
	// retransmission.
	if d := time.Since(start); d > 900*time.Millisecond {
		t.Errorf("handshake with %s took %v: a packet was lost", addr, d)
	}
	if got := strings.TrimSpace(seen); got != fromIP.String() {
		t.Errorf("server saw client %s, want %s", got, fromIP)
	}
	payload := bytes.Repeat([]byte("meshbed"), 2000) // several segments
	go c.Write(payload)
	got := make([]byte, len(payload))
	if _, err := io.ReadFull(r, got); err != nil {
		t.Fatalf("read echo: %v", err)
	}
	if !bytes.Equal(got, payload) {
		t.Error("echo differs from what was sent")
	}
}

// TestTwoPodsOnOneNode connects pairs of pods through the node's plain
// kernel routing, each pair right after it was created: the first packets
// must not be lost.
func TestTwoPodsOnOneNode(t *testing.T) {
	testenv.Privileged(t)
	netnstest.CheckLeaks(t)
	node := newNode(t)
	for i := range 4 {
		podA, podB := netnstest.New(t, "pod-a"), netnstest.New(t, "pod-b")
		a := mustCreate(t, node, podA, endpoint.Config{ID: fmt.Sprintf("default/a%d", i), IP: netip.AddrFrom4([4]byte{10, 1, 0, byte(2*i + 2)})})
		b := mustCreate(t, node, podB, endpoint.Config{ID: fmt.Sprintf("default/b%d", i), IP: netip.AddrFrom4([4]byte{10, 1, 0, byte(2*i + 3)})})

		l, err := podB.Listen("tcp4", b.IP.String()+":8080")
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		go echoServer(l)
		tcpExchange(t, podA, a.IP, l.Addr().String())
	}
}

func TestEndpointAttributes(t *testing.T) {
	testenv.Privileged(t)
	netnstest.CheckLeaks(t)
	node := newNode(t)
	for _, tc := range []struct {
		name string
		cfg  endpoint.Config
		want endpoint.Config // normalized values
	}{
		{
			name: "defaults",
			cfg:  endpoint.Config{ID: "ns/pod-1", IP: netip.MustParseAddr("10.1.0.10")},
			want: endpoint.Config{Gateway: endpoint.DefaultGateway, MTU: endpoint.DefaultMTU, HostIfName: endpoint.HostIfName("ns/pod-1"), PodIfName: "eth0"},
		},
		{
			name: "explicit",
			cfg: endpoint.Config{ID: "ns/pod-2", IP: netip.MustParseAddr("10.1.0.11"), Gateway: netip.MustParseAddr("10.1.0.1"),
				MTU: 1450, HostIfName: "lxcexplicit", PodIfName: "net0"},
			want: endpoint.Config{Gateway: netip.MustParseAddr("10.1.0.1"), MTU: 1450, HostIfName: "lxcexplicit", PodIfName: "net0"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pod := netnstest.New(t, "pod")
			ep := mustCreate(t, node, pod, tc.cfg)
			if ep.HostIfName != tc.want.HostIfName || ep.PodIfName != tc.want.PodIfName || ep.MTU != tc.want.MTU || ep.Gateway != tc.want.Gateway {
				t.Errorf("endpoint = %+v, want names %s/%s MTU %d gateway %s", ep, tc.want.HostIfName, tc.want.PodIfName, tc.want.MTU, tc.want.Gateway)
			}
			checkNodeSide(t, node, ep)
			checkPodSide(t, pod, ep)
		})
	}
}

// TestCreateInBorrowedNamespaces is the CNI path: the namespaces exist
// already (the container runtime made the pod's) and are opened by path.
func TestCreateInBorrowedNamespaces(t *testing.T) {
	testenv.Privileged(t)
	netnstest.CheckLeaks(t)
	owner := netnstest.NewNamed(t, "cni-node", endpoint.NodeSysctls...)
	podOwner := netnstest.NewNamed(t, "cni-pod")
	node, err := netns.Open(owner.Path())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { node.Close() })
	pod, err := netns.Open(podOwner.Path())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pod.Close() })
	ep := mustCreate(t, node, pod, endpoint.Config{ID: "containerd://0123abcd", IP: netip.MustParseAddr("10.1.0.20")})
	// Seen through the owners' handles: the same namespaces.
	checkNodeSide(t, owner, ep)
	checkPodSide(t, podOwner, ep)
}

func checkNodeSide(t *testing.T, node *netns.NS, ep *endpoint.Endpoint) {
	t.Helper()
	h, _ := node.Handle()
	link, err := h.LinkByIndex(ep.HostIfIndex)
	if err != nil {
		t.Fatalf("host end: %v", err)
	}
	la := link.Attrs()
	if link.Type() != "veth" || la.Name != ep.HostIfName || la.HardwareAddr.String() != ep.HostMAC.String() ||
		la.MTU != ep.MTU || la.Flags&net.FlagUp == 0 || la.OperState != netlink.OperUp {
		t.Errorf("host end = %s %s %s mtu %d flags %v oper %v; want veth %s %s mtu %d, up",
			link.Type(), la.Name, la.HardwareAddr, la.MTU, la.Flags, la.OperState, ep.HostIfName, ep.HostMAC, ep.MTU)
	}
	routes, err := h.RouteListFiltered(unix.AF_INET, &netlink.Route{LinkIndex: ep.HostIfIndex}, netlink.RT_FILTER_OIF)
	if err != nil {
		t.Fatal(err)
	}
	if len(routes) != 1 || routes[0].Dst.String() != ep.IP.String()+"/32" || routes[0].Scope != netlink.SCOPE_LINK || routes[0].Gw != nil {
		t.Errorf("node routes via %s = %v, want only %s/32 scope link", ep.HostIfName, routes, ep.IP)
	}
	checkPermanentNeighbour(t, h, ep.HostIfIndex, ep.IP, ep.PodMAC)
}

func checkPodSide(t *testing.T, pod *netns.NS, ep *endpoint.Endpoint) {
	t.Helper()
	h, _ := pod.Handle()
	links, err := h.LinkList()
	if err != nil {
		t.Fatal(err)
	}
	if len(links) != 2 {
		t.Errorf("pod has %d links, want lo and %s", len(links), ep.PodIfName)
	}
	link, err := h.LinkByName(ep.PodIfName)
	if err != nil {
		t.Fatalf("pod end: %v", err)
	}
	la := link.Attrs()
	if la.Index != ep.PodIfIndex || la.HardwareAddr.String() != ep.PodMAC.String() || la.MTU != ep.MTU || la.OperState != netlink.OperUp {
		t.Errorf("pod end = index %d %s mtu %d oper %v; want %d %s mtu %d up", la.Index, la.HardwareAddr, la.MTU, la.OperState, ep.PodIfIndex, ep.PodMAC, ep.MTU)
	}
	addrs, err := h.AddrList(link, unix.AF_INET)
	if err != nil {
		t.Fatal(err)
	}
	if len(addrs) != 1 || addrs[0].IPNet.String() != ep.IP.String()+"/32" {
		t.Errorf("pod addresses = %v, want only %s/32", addrs, ep.IP)
	}
	routes, err := h.RouteList(link, unix.AF_INET)
	if err != nil {
		t.Fatal(err)
	}
	var deflt *netlink.Route
	for i := range routes {
		if routes[i].Dst == nil || routes[i].Dst.String() == "0.0.0.0/0" {
			deflt = &routes[i]
		}
	}
	if deflt == nil || deflt.Gw.String() != ep.Gateway.String() || deflt.Flags&int(netlink.FLAG_ONLINK) == 0 {
		t.Errorf("pod routes = %v, want default via %s onlink", routes, ep.Gateway)
	}
	checkPermanentNeighbour(t, h, ep.PodIfIndex, ep.Gateway, ep.HostMAC)
}

func checkPermanentNeighbour(t *testing.T, h *netlink.Handle, ifindex int, ip netip.Addr, mac net.HardwareAddr) {
	t.Helper()
	neighs, err := h.NeighList(ifindex, unix.AF_INET)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range neighs {
		if n.IP.String() == ip.String() {
			if n.State != netlink.NUD_PERMANENT || n.HardwareAddr.String() != mac.String() {
				t.Errorf("neighbour %s = %s state %#x, want %s permanent", ip, n.HardwareAddr, n.State, mac)
			}
			return
		}
	}
	t.Errorf("no neighbour entry for %s on ifindex %d (have %v)", ip, ifindex, neighs)
}

func TestCreateRejectsBadConfig(t *testing.T) {
	testenv.Privileged(t)
	netnstest.CheckLeaks(t)
	node, pod := newNode(t), netnstest.New(t, "pod")
	ip := netip.MustParseAddr("10.1.0.2")
	for _, tc := range []struct {
		name string
		cfg  endpoint.Config
	}{
		{"no id", endpoint.Config{IP: ip}},
		{"no ip", endpoint.Config{ID: "x"}},
		{"ipv6", endpoint.Config{ID: "x", IP: netip.MustParseAddr("fd00::2")}},
		{"gateway is pod", endpoint.Config{ID: "x", IP: ip, Gateway: ip}},
		{"ipv6 gateway", endpoint.Config{ID: "x", IP: ip, Gateway: netip.MustParseAddr("fe80::1")}},
		{"mtu too small", endpoint.Config{ID: "x", IP: ip, MTU: 67}},
		{"host name too long", endpoint.Config{ID: "x", IP: ip, HostIfName: "lxc0123456789abc"}},
		{"pod name too long", endpoint.Config{ID: "x", IP: ip, PodIfName: "eth0123456789abc"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if ep, err := endpoint.Create(node, pod, tc.cfg); err == nil {
				endpoint.Delete(node, ep.HostIfName)
				t.Fatalf("Create(%+v) succeeded", tc.cfg)
			}
		})
	}
	assertOnlyLoopback(t, node)
	assertOnlyLoopback(t, pod)
}

func TestCreateTwiceAndRollback(t *testing.T) {
	testenv.Privileged(t)
	netnstest.CheckLeaks(t)
	node := newNode(t)
	podA, podB := netnstest.New(t, "pod-a"), netnstest.New(t, "pod-b")
	cfg := endpoint.Config{ID: "ns/dup", IP: netip.MustParseAddr("10.1.0.2")}
	first := mustCreate(t, node, podA, cfg)

	// Same ID again: refused, and the first endpoint is untouched.
	if _, err := endpoint.Create(node, podB, cfg); !errors.Is(err, endpoint.ErrExists) {
		t.Fatalf("second Create = %v, want ErrExists", err)
	}
	checkNodeSide(t, node, first)
	assertOnlyLoopback(t, podB)

	// Another ID with the same pod IP fails late, at the node's /32 route,
	// after the veth exists: the pair must be rolled back.
	_, err := endpoint.Create(node, podB, endpoint.Config{ID: "ns/other", IP: cfg.IP})
	if err == nil {
		t.Fatal("Create with a duplicate pod IP succeeded")
	}
	h, _ := node.Handle()
	if _, err := h.LinkByName(endpoint.HostIfName("ns/other")); err == nil {
		t.Error("host end of the failed endpoint left in the node")
	}
	assertOnlyLoopback(t, podB)
	checkNodeSide(t, node, first)
}

func assertOnlyLoopback(t *testing.T, ns *netns.NS) {
	t.Helper()
	h, _ := ns.Handle()
	links, err := h.LinkList()
	if err != nil {
		t.Fatal(err)
	}
	if len(links) != 1 || links[0].Attrs().Name != "lo" {
		names := make([]string, 0, len(links))
		for _, l := range links {
			names = append(names, l.Attrs().Name)
		}
		t.Errorf("%s has links %v, want only lo", ns, names)
	}
}

func TestDeleteLeavesNothing(t *testing.T) {
	testenv.Privileged(t)
	netnstest.CheckLeaks(t)
	node, pod := newNode(t), netnstest.New(t, "pod")
	ep, err := endpoint.Create(node, pod, endpoint.Config{ID: "ns/gone", IP: netip.MustParseAddr("10.1.0.7")})
	if err != nil {
		t.Fatal(err)
	}
	if err := endpoint.Delete(node, ep.HostIfName); err != nil {
		t.Fatal(err)
	}
	assertOnlyLoopback(t, node)
	assertOnlyLoopback(t, pod)
	h, _ := node.Handle()
	routes, err := h.RouteGet(ep.IP.AsSlice())
	if err == nil {
		for _, r := range routes {
			if r.LinkIndex == ep.HostIfIndex {
				t.Errorf("route to %s still via the deleted endpoint: %v", ep.IP, r)
			}
		}
	}
	neighs, err := h.NeighList(0, unix.AF_INET)
	if err != nil {
		t.Fatal(err)
	}
	if len(neighs) != 0 {
		t.Errorf("node neighbours left: %v", neighs)
	}
	if err := endpoint.Delete(node, ep.HostIfName); err != nil {
		t.Errorf("second Delete: %v", err)
	}
	// The ID is free again at once.
	again := mustCreate(t, node, pod, endpoint.Config{ID: "ns/gone", IP: ep.IP})
	checkNodeSide(t, node, again)
}

func TestClosingThePodRemovesItsEndpoint(t *testing.T) {
	testenv.Privileged(t)
	netnstest.CheckLeaks(t)
	node := newNode(t)
	pod, err := netns.New("pod-" + netnstest.Suffix())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pod.Close() })
	ep, err := endpoint.Create(node, pod, endpoint.Config{ID: "ns/closed", IP: netip.MustParseAddr("10.1.0.8")})
	if err != nil {
		t.Fatal(err)
	}
	if err := pod.Close(); err != nil {
		t.Fatal(err)
	}
	h, _ := node.Handle()
	netnstest.Eventually(t, 10*time.Second, func() error {
		if _, err := h.LinkByIndex(ep.HostIfIndex); err == nil {
			return errors.New("host end survives its pod namespace")
		}
		return nil
	})
}

func TestHostIfName(t *testing.T) {
	for _, tc := range []struct{ a, b string }{
		{"", "x"}, {"default/x-wing", "default/x-wing2"}, {"1", "2"},
	} {
		t.Run(tc.a+"|"+tc.b, func(t *testing.T) {
			na, nb := endpoint.HostIfName(tc.a), endpoint.HostIfName(tc.b)
			if na == nb {
				t.Errorf("HostIfName(%q) == HostIfName(%q) == %s", tc.a, tc.b, na)
			}
			for _, n := range []string{na, nb} {
				if len(n) != 15 || !strings.HasPrefix(n, "lxc") {
					t.Errorf("name %q: want 15 bytes starting with lxc", n)
				}
			}
			if endpoint.HostIfName(tc.a) != na {
				t.Error("HostIfName is not deterministic")
			}
		})
	}
}

// FuzzHostIfName: every endpoint ID, however odd (it comes from the
// Kubernetes API or a CNI request), yields a valid interface name.
func FuzzHostIfName(f *testing.F) {
	f.Add("default/x-wing")
	f.Add("")
	f.Add("\x00/../eth0")
	f.Fuzz(func(t *testing.T, id string) {
		n := endpoint.HostIfName(id)
		if len(n) > 15 || len(n) == 0 {
			t.Fatalf("HostIfName(%q) = %q: bad length", id, n)
		}
		for _, r := range n {
			if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9') {
				t.Fatalf("HostIfName(%q) = %q: character %q", id, n, r)
			}
		}
	})
}

// kernelMemory sums the kernel's slab, per-CPU and stack memory in kB: what
// namespaces and devices consume. It is machine-wide, so other processes add
// noise; over hundreds of pods the per-pod figure is still indicative.
func kernelMemory(tb testing.TB) int64 {
	tb.Helper()
	data, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		tb.Fatal(err)
	}
	var sum int64
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) >= 2 && (f[0] == "Slab:" || f[0] == "Percpu:" || f[0] == "KernelStack:") {
			v, _ := strconv.ParseInt(f[1], 10, 64)
			sum += v
		}
	}
	return sum
}

// BenchmarkEndpointCreate measures one simulated pod: a fresh namespace (lo
// up, netlink socket) plus its endpoint (veth pair, addresses, routes,
// neighbours, both ends ready). Teardown is timed separately, both ways: a
// synchronous Delete of a few endpoints, and closing the rest of the pod
// namespaces, waiting until the kernel has removed their host ends.
func BenchmarkEndpointCreate(b *testing.B) {
	testenv.Privileged(b)
	node := newNode(b)
	type pod struct {
		ns *netns.NS
		ep *endpoint.Endpoint
	}
	var pods []pod
	b.Cleanup(func() {
		for _, p := range pods {
			p.ns.Close()
		}
	})
	memBefore := kernelMemory(b)
	var each []time.Duration
	for b.Loop() {
		started := time.Now()
		i := len(pods)
		ns, err := netns.New("bench-pod")
		if err != nil {
			b.Fatal(err)
		}
		ip := netip.AddrFrom4([4]byte{10, 1, byte(i >> 8), byte(i)})
		if i >= 1<<16-2 {
			b.Fatal("benchmark ran out of pod addresses")
		}
		ep, err := endpoint.Create(node, ns, endpoint.Config{ID: strconv.Itoa(i), IP: ip.Next()})
		if err != nil {
			ns.Close()
			b.Fatal(err)
		}
		pods = append(pods, pod{ns, ep})
		each = append(each, time.Since(started))
	}
	n := float64(len(pods))
	b.ReportMetric(float64(b.Elapsed().Microseconds())/1000/n, "ms/pod")
	// The median resists the machine's other load, which the mean does not.
	slices.Sort(each)
	b.ReportMetric(float64(each[len(each)/2].Microseconds())/1000, "p50-ms/pod")
	b.ReportMetric(float64(kernelMemory(b)-memBefore)/n, "kmem-kB/pod")
	deleted := min(len(pods), 20)
	start := time.Now()
	for _, p := range pods[:deleted] {
		if err := endpoint.Delete(node, p.ep.HostIfName); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(time.Since(start).Microseconds())/1000/float64(deleted), "delete-ms/pod")
	closed := len(pods) - deleted
	start = time.Now()
	for _, p := range pods {
		if err := p.ns.Close(); err != nil {
			b.Fatal(err)
		}
	}
	pods = nil
	h, _ := node.Handle()
	netnstest.Eventually(b, time.Minute, func() error {
		links, err := h.LinkList()
		if err != nil {
			return err
		}
		if len(links) > 1 {
			return fmt.Errorf("%d host ends left", len(links)-1)
		}
		return nil
	})
	if closed > 0 {
		b.ReportMetric(float64(time.Since(start).Microseconds())/1000/float64(closed), "close-ms/pod")
	}
}
