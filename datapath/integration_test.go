package datapath_test

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/meshbed/meshbed/datapath"
	"github.com/meshbed/meshbed/datapath/endpoint"
	"github.com/meshbed/meshbed/datapath/netns"
	"github.com/meshbed/meshbed/datapath/netns/netnstest"
	"github.com/meshbed/meshbed/datapath/overlay"
	"github.com/meshbed/meshbed/datapath/state"
	"github.com/meshbed/meshbed/internal/testenv"
)

// Integration tests: two nodes (network namespaces) on a simulated underlay,
// two pods each, the real datapath loaded and attached on both, real TCP and
// UDP between the pods.

const clusterID = 1

type testPod struct {
	name     string
	ns       *netns.NS
	ep       *endpoint.Endpoint
	id       uint16
	identity uint32
	node     *testNode
}

type testNode struct {
	ns     *netns.NS
	ip     netip.Addr
	cidr   netip.Prefix
	dp     *datapath.Datapath
	port   *overlay.Port
	vxlan  *overlay.VXLAN
	pods   []*testPod
	events *datapath.EventReader
}

type mesh struct {
	mode  state.RoutingMode
	nodes []*testNode
	pods  map[string]*testPod
}

// newMesh builds node1 (pods a, b) and node2 (pods c, d). tune, if given,
// adjusts the datapath options of node i (0 or 1).
func newMesh(t *testing.T, mode state.RoutingMode, tune ...func(i int, o *datapath.Options)) *mesh {
	t.Helper()
	m := &mesh{mode: mode, pods: map[string]*testPod{}}
	uns := netnstest.New(t, "dp-underlay")
	under, err := overlay.NewUnderlay(uns, overlay.DefaultUnderlay)
	if err != nil {
		t.Fatal(err)
	}
	podNames := [][]string{{"a", "b"}, {"c", "d"}}
	var remotes []overlay.Remote
	for i := range 2 {
		n := &testNode{cidr: netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 1, byte(i + 1), 0}), 24)}
		n.ns = netnstest.New(t, fmt.Sprintf("dp-node%d", i+1), endpoint.NodeSysctls...)
		n.ip, err = overlay.HostAddr(overlay.DefaultUnderlay, clusterID, i)
		if err != nil {
			t.Fatal(err)
		}
		if n.port, err = under.Attach(n.ns, overlay.PortConfig{Addr: n.ip}); err != nil {
			t.Fatal(err)
		}
		opts := datapath.Options{ClusterID: clusterID, Routing: mode, Trace: true}
		for _, f := range tune {
			f(i, &opts)
		}
		n.dp, err = datapath.New(opts)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			if err := n.dp.Close(); err != nil {
				t.Error(err)
			}
		})
		mtu := endpoint.DefaultMTU
		if mode == state.Tunnel {
			if n.vxlan, err = overlay.SetupVXLAN(n.ns, overlay.VXLANConfig{NodeIP: n.ip}); err != nil {
				t.Fatal(err)
			}
			if err := n.ns.Do(func() error { return n.dp.AttachOverlay(n.vxlan.Name) }); err != nil {
				t.Fatal(err)
			}
			mtu = n.vxlan.MTU
		}
		for j, name := range podNames[i] {
			p := &testPod{name: name, id: uint16(j + 1), identity: 1<<16 | uint32(0x100+i*2+j), node: n}
			p.ns = netnstest.New(t, "dp-pod-"+name)
			ip := netip.AddrFrom4([4]byte{10, 1, byte(i + 1), byte(10 + j)})
			if p.ep, err = endpoint.Create(n.ns, p.ns, endpoint.Config{ID: name, IP: ip, MTU: mtu}); err != nil {
				t.Fatal(err)
			}
			n.pods = append(n.pods, p)
			m.pods[name] = p
		}
		remotes = append(remotes, overlay.Remote{PodCIDR: n.cidr, NodeIP: n.ip})
		if n.events, err = n.dp.Events(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { n.events.Close() })
		m.nodes = append(m.nodes, n)
	}
	for i, n := range m.nodes {
		dev := n.port.Index
		if mode == state.Tunnel {
			dev = n.vxlan.Index
		}
		others := []overlay.Remote{remotes[1-i]}
		if err := overlay.SyncRoutes(n.ns, overlay.Routing{Mode: mode, Device: dev}, others); err != nil {
			t.Fatal(err)
		}
	}
	return m
}

// stateFor is node n's desired state: its pods as endpoints, every pod in
// the ipcache, the given services and policies (by pod name).
func (m *mesh) stateFor(n *testNode, services []state.Service, policies map[string]*state.EndpointPolicy) *state.State {
	s := &state.State{Services: services}
	for _, other := range m.nodes {
		s.Nodes = append(s.Nodes, state.Node{Name: other.ns.Name(), ClusterID: clusterID, IP: other.ip, PodCIDR: other.cidr})
		for _, p := range other.pods {
			e := state.IPCacheEntry{Prefix: netip.PrefixFrom(p.ep.IP, 32), Identity: p.identity, ClusterID: clusterID}
			if other != n {
				e.TunnelEndpoint = other.ip
			}
			s.IPCache = append(s.IPCache, e)
		}
	}
	for _, p := range n.pods {
		s.Endpoints = append(s.Endpoints, state.Endpoint{
			ID: p.id, IP: p.ep.IP, Identity: p.identity, Interface: p.ep.HostIfName, Policy: policies[p.name],
		})
	}
	return s
}

func (m *mesh) apply(t *testing.T, services []state.Service, policies map[string]*state.EndpointPolicy) {
	t.Helper()
	for _, n := range m.nodes {
		s := m.stateFor(n, services, policies)
		if err := n.ns.Do(func() error { return n.dp.Apply(s) }); err != nil {
			t.Fatal(err)
		}
	}
}

// serve runs a TCP and a UDP echo server on port in the pod; both answer
// every request with the pod's name.
func (p *testPod) serve(t *testing.T, port int) {
	t.Helper()
	addr := fmt.Sprintf("%s:%d", p.ep.IP, port)
	l, err := p.ns.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	pc, err := p.ns.ListenPacket("udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	conns := map[net.Conn]bool{}
	t.Cleanup(func() {
		l.Close()
		pc.Close()
		mu.Lock()
		for c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	wg.Add(2)
	go func() {
		defer wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns[c] = true
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				r := bufio.NewReader(c)
				for {
					if _, err := r.ReadString('\n'); err != nil {
						return
					}
					if _, err := c.Write([]byte(p.name + "\n")); err != nil {
						return
					}
				}
			}()
		}
	}()
	go func() {
		defer wg.Done()
		buf := make([]byte, 1500)
		for {
			_, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			_, _ = pc.WriteTo([]byte(p.name), from)
		}
	}()
}

// conn is a client's TCP connection to an echo server.
type conn struct {
	c net.Conn
	r *bufio.Reader
}

func (p *testPod) dial(addr string) (*conn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	c, err := p.ns.Dial(ctx, nil, "tcp", addr)
	if err != nil {
		return nil, err
	}
	return &conn{c: c, r: bufio.NewReader(c)}, nil
}

// ask sends a request and returns the name of the pod that answered.
func (c *conn) ask() (string, error) {
	_ = c.c.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := c.c.Write([]byte("who\n")); err != nil {
		return "", err
	}
	s, err := c.r.ReadString('\n')
	return strings.TrimSpace(s), err
}

// tcpAsk opens a connection, asks once, closes.
func (p *testPod) tcpAsk(addr string) (string, error) {
	c, err := p.dial(addr)
	if err != nil {
		return "", err
	}
	defer c.c.Close()
	return c.ask()
}

// udpAsk sends one datagram from an unconnected socket and returns the
// answer and the address it came from.
func (p *testPod) udpAsk(addr string) (string, netip.AddrPort, error) {
	return p.udpAskN(addr, 3, time.Second)
}

func (p *testPod) udpAskN(addr string, tries int, wait time.Duration) (string, netip.AddrPort, error) {
	pc, err := p.ns.ListenPacket("udp", p.ep.IP.String()+":0")
	if err != nil {
		return "", netip.AddrPort{}, err
	}
	defer pc.Close()
	to, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		return "", netip.AddrPort{}, err
	}
	buf := make([]byte, 1500)
	// UDP may lose the first datagram while a neighbour resolves: retry.
	for range tries {
		if _, err := pc.WriteTo([]byte("who"), to); err != nil {
			return "", netip.AddrPort{}, err
		}
		_ = pc.SetReadDeadline(time.Now().Add(wait))
		n, from, err := pc.ReadFrom(buf)
		if err == nil {
			return string(buf[:n]), from.(*net.UDPAddr).AddrPort(), nil
		}
		if !errors.Is(err, unix.EAGAIN) && !isTimeout(err) {
			return "", netip.AddrPort{}, err
		}
	}
	return "", netip.AddrPort{}, fmt.Errorf("no UDP answer from %s", addr)
}

func contextWithTimeout(d time.Duration) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), d)
}

func newReader(c net.Conn) *bufio.Reader { return bufio.NewReader(c) }

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// integration gates the network namespace tests: root, and not -short.
func integration(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("integration test: skipped with -short")
	}
	testenv.Privileged(t)
}

func modeName(m state.RoutingMode) string {
	if m == state.Native {
		return "native"
	}
	return "tunnel"
}

func TestIntegrationPodToPod(t *testing.T) {
	integration(t)
	for _, mode := range []state.RoutingMode{state.Tunnel, state.Native} {
		t.Run(modeName(mode), func(t *testing.T) {
			netnstest.CheckLeaks(t)
			m := newMesh(t, mode)
			m.apply(t, nil, nil)
			for _, p := range m.pods {
				p.serve(t, 8080)
			}
			a := m.pods["a"]
			for _, to := range []string{"b", "c", "d"} {
				dst := m.pods[to]
				addr := fmt.Sprintf("%s:8080", dst.ep.IP)
				if got, err := a.tcpAsk(addr); err != nil || got != to {
					t.Errorf("TCP a -> %s: %q, %v", to, got, err)
				}
				got, from, err := a.udpAsk(addr)
				if err != nil || got != to || from.Addr() != dst.ep.IP {
					t.Errorf("UDP a -> %s: %q from %s, %v", to, got, from, err)
				}
			}
			if got, err := m.pods["d"].tcpAsk(fmt.Sprintf("%s:8080", m.pods["b"].ep.IP)); err != nil || got != "b" {
				t.Errorf("TCP d -> b: %q, %v", got, err)
			}
			// The programs, not the kernel's routes alone, moved the packets.
			c1, err := m.nodes[0].dp.Counters()
			if err != nil {
				t.Fatal(err)
			}
			c2, err := m.nodes[1].dp.Counters()
			if err != nil {
				t.Fatal(err)
			}
			if c1[datapath.ReasonForwardedLocal].Packets == 0 || c2[datapath.ReasonForwardedLocal].Packets == 0 {
				t.Errorf("no local deliveries counted: node1 %v, node2 %v", c1, c2)
			}
			remote := datapath.ReasonForwardedTunnel
			if mode == state.Native {
				remote = datapath.ReasonForwardedStack
			}
			if c1[remote].Packets == 0 || c2[remote].Packets == 0 {
				t.Errorf("no %s counted: node1 %v, node2 %v", remote, c1, c2)
			}
			if mode == state.Tunnel {
				// The receiving node took a's identity from the VNI.
				n2 := m.nodes[1]
				ev := nextEvent(t, n2.events, func(ev datapath.Event) bool {
					return ev.Point == datapath.FromOverlay && ev.Source.Addr() == a.ep.IP
				})
				if ev.SourceIdentity != a.identity || ev.TunnelEndpoint != m.nodes[0].ip {
					t.Errorf("overlay event %s: want identity %d from %s", ev, a.identity, m.nodes[0].ip)
				}
			}
		})
	}
}

// TestIntegrationVNI captures the encapsulated packets on the underlay and
// checks that the VNI is the sending pod's security identity.
func TestIntegrationVNI(t *testing.T) {
	integration(t)
	netnstest.CheckLeaks(t)
	m := newMesh(t, state.Tunnel)
	m.apply(t, nil, nil)
	c := m.pods["c"]
	c.serve(t, 8080)
	n2 := m.nodes[1]

	capture := startCapture(t, n2.ns, n2.port.Index)
	a := m.pods["a"]
	if got, _, err := a.udpAsk(fmt.Sprintf("%s:8080", c.ep.IP)); err != nil || got != "c" {
		t.Fatalf("UDP a -> c: %q, %v", got, err)
	}
	vnis := capture.vnisFrom(t, a.ep.IP)
	if len(vnis) == 0 {
		t.Fatal("no VXLAN packet from a captured on node2's underlay port")
	}
	for _, vni := range vnis {
		if vni != a.identity {
			t.Errorf("VNI %d, want a's identity %d", vni, a.identity)
		}
	}
}

type capture struct {
	fd int
}

// startCapture opens a packet socket on ifindex inside ns.
func startCapture(t *testing.T, ns *netns.NS, ifindex int) *capture {
	t.Helper()
	proto := int(htons(unix.ETH_P_ALL))
	var fd int
	err := ns.Do(func() error {
		var err error
		fd, err = unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, proto)
		if err != nil {
			return err
		}
		return unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: uint16(proto), Ifindex: ifindex})
	})
	if err != nil {
		t.Fatalf("packet socket: %v", err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	tv := unix.Timeval{Usec: 200000}
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		t.Fatal(err)
	}
	return &capture{fd: fd}
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// vnisFrom reads what was captured until the socket is idle and returns the
// VNIs of VXLAN packets whose inner source is src.
func (c *capture) vnisFrom(t *testing.T, src netip.Addr) []uint32 {
	t.Helper()
	var out []uint32
	buf := make([]byte, 65536)
	for {
		n, _, err := unix.Recvfrom(c.fd, buf, 0)
		if err != nil {
			if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
				return out
			}
			t.Fatal(err)
		}
		if vni, inner, ok := parseVXLAN(buf[:n]); ok && inner == src {
			out = append(out, vni)
		}
	}
}

// parseVXLAN decodes Ethernet/IPv4/UDP:8472/VXLAN/Ethernet/IPv4 and returns
// the VNI and the inner source address.
func parseVXLAN(b []byte) (uint32, netip.Addr, bool) {
	if len(b) < 14+20 || binary.BigEndian.Uint16(b[12:]) != 0x0800 {
		return 0, netip.Addr{}, false
	}
	ip := b[14:]
	ihl := int(ip[0]&0x0f) * 4
	if ip[9] != 17 || len(ip) < ihl+8+8+14+20 {
		return 0, netip.Addr{}, false
	}
	udp := ip[ihl:]
	if binary.BigEndian.Uint16(udp[2:]) != overlay.DefaultVXLANPort {
		return 0, netip.Addr{}, false
	}
	vx := udp[8:]
	vni := uint32(vx[4])<<16 | uint32(vx[5])<<8 | uint32(vx[6])
	inner := vx[8+14:]
	return vni, netip.AddrFrom4([4]byte(inner[12:16])), true
}

func nextEvent(t *testing.T, r *datapath.EventReader, match func(datapath.Event) bool) datapath.Event {
	t.Helper()
	r.SetDeadline(time.Now().Add(2 * time.Second))
	for {
		ev, err := r.Read()
		if err != nil {
			t.Fatalf("no matching flow event: %v", err)
		}
		if match(ev) {
			return ev
		}
	}
}
