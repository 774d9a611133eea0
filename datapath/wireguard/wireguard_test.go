package wireguard_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/meshbed/meshbed/datapath/netns"
	"github.com/meshbed/meshbed/datapath/netns/netnstest"
	"github.com/meshbed/meshbed/datapath/wireguard"
	"github.com/meshbed/meshbed/internal/testenv"
)

func TestLoadOrCreateKey(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state", wireguard.KeyFileName)
	k1, created, err := wireguard.LoadOrCreateKey(path)
	if err != nil || !created {
		t.Fatalf("first start: created %v, err %v", created, err)
	}
	k2, created, err := wireguard.LoadOrCreateKey(path)
	if err != nil || created || k1 != k2 {
		t.Fatalf("restart: created %v, same key %v, err %v", created, k1 == k2, err)
	}
	bad := filepath.Join(t.TempDir(), wireguard.KeyFileName)
	if err := writeFile(bad, "not a key\n"); err != nil {
		t.Fatal(err)
	}
	if _, _, err := wireguard.LoadOrCreateKey(bad); err == nil || !strings.Contains(err.Error(), bad) {
		t.Fatalf("corrupt key file: err %v, want one naming the file", err)
	}
}

func TestParsePublicKey(t *testing.T) {
	for _, tc := range []struct {
		in string
		ok bool
	}{
		{"2ZYyxfKd1q6XxjRjFo0xzEyo3RbNX1Fz5YcK0ZPfcmc=", true},
		{"", false},
		{"not base64!", false},
		{"AAECAw==", false}, // 4 bytes
		{"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=", false},
	} {
		_, err := wireguard.ParsePublicKey(tc.in)
		if (err == nil) != tc.ok {
			t.Errorf("ParsePublicKey(%q): err %v, want ok %v", tc.in, err, tc.ok)
		}
	}
}

// pair is two nodes on one link, each with a "pod" address on its loopback
// in its pod CIDR (native routing, so pod CIDRs are routed into the device).
type pair struct {
	ns   [2]*netns.NS
	ip   [2]netip.Addr
	pod  [2]netip.Addr
	cidr [2]netip.Prefix
	dev  [2]*wireguard.Device
	dir  [2]string
}

func newPair(t *testing.T) *pair {
	t.Helper()
	testenv.Privileged(t)
	p := &pair{
		ip:   [2]netip.Addr{netip.MustParseAddr("172.31.0.1"), netip.MustParseAddr("172.31.0.2")},
		pod:  [2]netip.Addr{netip.MustParseAddr("10.99.1.1"), netip.MustParseAddr("10.99.2.1")},
		cidr: [2]netip.Prefix{netip.MustParsePrefix("10.99.1.0/24"), netip.MustParsePrefix("10.99.2.0/24")},
		dir:  [2]string{t.TempDir(), t.TempDir()},
	}
	for i := range 2 {
		p.ns[i] = netnstest.New(t, fmt.Sprintf("wg%d", i))
	}
	h0, err := p.ns[0].Handle()
	if err != nil {
		t.Fatal(err)
	}
	attrs := netlink.NewLinkAttrs()
	attrs.Name = "wgul0"
	if err := h0.LinkAdd(&netlink.Veth{LinkAttrs: attrs, PeerName: "wgul1", PeerNamespace: netlink.NsFd(p.ns[1].Fd())}); err != nil {
		t.Fatal(err)
	}
	for i := range 2 {
		h, err := p.ns[i].Handle()
		if err != nil {
			t.Fatal(err)
		}
		link, err := h.LinkByName(fmt.Sprintf("wgul%d", i))
		if err != nil {
			t.Fatal(err)
		}
		lo, err := h.LinkByName("lo")
		if err != nil {
			t.Fatal(err)
		}
		for _, a := range []struct {
			l    netlink.Link
			addr netip.Prefix
		}{{link, netip.PrefixFrom(p.ip[i], 24)}, {lo, netip.PrefixFrom(p.pod[i], 32)}} {
			if err := h.AddrAdd(a.l, &netlink.Addr{IPNet: &net.IPNet{IP: a.addr.Addr().AsSlice(), Mask: net.CIDRMask(a.addr.Bits(), 32)}}); err != nil {
				t.Fatal(err)
			}
			if err := h.LinkSetUp(a.l); err != nil {
				t.Fatal(err)
			}
		}
		// In clear the other pod CIDR is reached through the link.
		if err := h.RouteAdd(&netlink.Route{Dst: &net.IPNet{IP: p.cidr[1-i].Addr().AsSlice(), Mask: net.CIDRMask(24, 32)},
			Gw: p.ip[1-i].AsSlice(), LinkIndex: link.Attrs().Index}); err != nil {
			t.Fatal(err)
		}
	}
	return p
}

func (p *pair) setup(t *testing.T, i int, strict bool) {
	t.Helper()
	d, err := wireguard.Setup(wireguard.Config{NS: p.ns[i], NodeIP: p.ip[i], Impl: wireguard.Userspace, Strict: strict,
		KeyFile: filepath.Join(p.dir[i], wireguard.KeyFileName), Logger: slog.New(slog.NewTextHandler(testWriter{t}, nil))})
	if err != nil {
		t.Fatal(err)
	}
	p.dev[i] = d
	t.Cleanup(func() { d.Close() })
}

func (p *pair) peer(i int, key string) wireguard.Peer {
	return wireguard.Peer{Node: fmt.Sprintf("c/node-%d", i), PublicKey: key, IP: p.ip[i], PodCIDR: p.cidr[i]}
}

// exchange sends a request from pod 0 to pod 1 and reads the answer, while
// a capture on node 1's link looks for the request in clear.
func (p *pair) exchange(t *testing.T) (answer string, clear bool, err error) {
	t.Helper()
	l, err := p.ns[1].Listen("tcp", netip.AddrPortFrom(p.pod[1], 0).String())
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		c, err := l.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		buf := make([]byte, 64)
		n, _ := c.Read(buf)
		_, _ = c.Write([]byte("answer:" + string(buf[:n])))
	}()
	capt := startCapture(t, p.ns[1], "wgul1")
	token := fmt.Sprintf("secret-%d", time.Now().UnixNano())
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: p.pod[0].AsSlice()}}
	c, err := p.ns[0].Dial(ctx, d, "tcp", l.Addr().String())
	if err == nil {
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(2 * time.Second))
		if _, err = c.Write([]byte(token)); err == nil {
			var b []byte
			b, err = io.ReadAll(c)
			answer = string(b)
		}
	}
	return answer, capt.saw(token), err
}

func TestIntegrationPeersEncrypt(t *testing.T) {
	p := newPair(t)
	// In clear first: the capture must see the request.
	if ans, clear, err := p.exchange(t); err != nil || !clear || !strings.HasPrefix(ans, "answer:") {
		t.Fatalf("without WireGuard: answer %q, clear %v, err %v; want an answer seen in clear", ans, clear, err)
	}
	p.setup(t, 0, false)
	p.setup(t, 1, false)
	k0, k1 := p.dev[0].PublicKey(), p.dev[1].PublicKey()
	if err := p.dev[0].Sync([]wireguard.Peer{p.peer(1, k1)}); err != nil {
		t.Fatal(err)
	}
	if err := p.dev[1].Sync([]wireguard.Peer{p.peer(0, k0)}); err != nil {
		t.Fatal(err)
	}
	netnstest.Eventually(t, 5*time.Second, func() error {
		ans, clear, err := p.exchange(t)
		switch {
		case err != nil:
			return err
		case clear:
			return fmt.Errorf("request seen in clear with WireGuard up")
		case !strings.HasPrefix(ans, "answer:"):
			return fmt.Errorf("answer %q", ans)
		}
		return nil
	})
	peers, err := p.dev[0].Peers()
	if err != nil || len(peers) != 1 || peers[0].PublicKey != k1 || peers[0].LastHandshake.IsZero() ||
		peers[0].Endpoint != netip.AddrPortFrom(p.ip[1], wireguard.DefaultPort) {
		t.Fatalf("peers of node 0: %+v, err %v; want node 1's key, a handshake, endpoint %s:%d", peers, err, p.ip[1], wireguard.DefaultPort)
	}

	// A peer that does not decode is rejected by name and left unpeered;
	// the good one stays (its session too: no new handshake needed).
	before := peers[0].LastHandshake
	bad := wireguard.Peer{Node: "c2/node-9", PublicKey: "AAECAw==", IP: netip.MustParseAddr("172.31.0.9"), PodCIDR: netip.MustParsePrefix("10.99.9.0/24")}
	if err := p.dev[0].Sync([]wireguard.Peer{p.peer(1, k1), bad}); err != nil {
		t.Fatal(err)
	}
	if rej := p.dev[0].Rejected(); len(rej) != 1 || rej["c2/node-9"] == nil {
		t.Fatalf("rejected %v, want c2/node-9 only", rej)
	}
	if peers, _ := p.dev[0].Peers(); len(peers) != 1 || !peers[0].LastHandshake.Equal(before) {
		t.Fatalf("peers after a bad one: %+v; want node 1's, untouched", peers)
	}
	if _, clear, err := p.exchange(t); err != nil || clear {
		t.Fatalf("after a rejected peer: clear %v, err %v", clear, err)
	}

	// Node 1 re-keys (a new key file): node 0 re-peers on the new key.
	p.dev[1].Close()
	p.dir[1] = t.TempDir()
	p.setup(t, 1, false)
	nk1 := p.dev[1].PublicKey()
	if nk1 == k1 {
		t.Fatal("a new key file gave the same key")
	}
	if err := p.dev[1].Sync([]wireguard.Peer{p.peer(0, k0)}); err != nil {
		t.Fatal(err)
	}
	if err := p.dev[0].Sync([]wireguard.Peer{p.peer(1, nk1)}); err != nil {
		t.Fatal(err)
	}
	if peers, _ := p.dev[0].Peers(); len(peers) != 1 || peers[0].PublicKey != nk1 {
		t.Fatalf("peers after re-key: %+v; want only the new key", peers)
	}
	netnstest.Eventually(t, 5*time.Second, func() error {
		_, clear, err := p.exchange(t)
		if err == nil && clear {
			return fmt.Errorf("request seen in clear after re-key")
		}
		return err
	})
}

func TestIntegrationMissingKey(t *testing.T) {
	for _, strict := range []bool{false, true} {
		t.Run(fmt.Sprintf("strict=%v", strict), func(t *testing.T) {
			p := newPair(t)
			// Node 1 runs an older agent: no WireGuard, no key published.
			p.setup(t, 0, strict)
			if err := p.dev[0].Sync([]wireguard.Peer{p.peer(1, "")}); err != nil {
				t.Fatal(err)
			}
			if un := p.dev[0].Unpeered(); len(un) != 1 || un[0] != "c/node-1" {
				t.Fatalf("unpeered %v, want [c/node-1]", un)
			}
			ans, clear, err := p.exchange(t)
			if strict {
				if err == nil || !strings.Contains(err.Error(), "permission denied") {
					t.Fatalf("strict: answer %q, err %v; want the connection refused (prohibit route)", ans, err)
				}
				return
			}
			if err != nil || !clear {
				t.Fatalf("not strict: answer %q, clear %v, err %v; want an answer in clear", ans, clear, err)
			}
		})
	}
}

// capture is a packet socket on one interface, keeping what it saw.
type capture struct {
	stop chan struct{}
	done chan string
}

func startCapture(t *testing.T, ns *netns.NS, ifName string) *capture {
	t.Helper()
	var fd int
	err := ns.Do(func() error {
		var err error
		fd, err = unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, int(htons(unix.ETH_P_ALL)))
		if err != nil {
			return err
		}
		ifi, err := net.InterfaceByName(ifName)
		if err != nil {
			return err
		}
		return unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL), Ifindex: ifi.Index})
	})
	if err != nil {
		t.Fatal(err)
	}
	tv := unix.Timeval{Usec: 50_000}
	_ = unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
	c := &capture{stop: make(chan struct{}), done: make(chan string, 1)}
	go func() {
		defer unix.Close(fd)
		var all strings.Builder
		buf := make([]byte, 65536)
		stopping := false
		for {
			if !stopping {
				select {
				case <-c.stop:
					stopping = true
				default:
				}
			}
			n, _, err := unix.Recvfrom(fd, buf, 0)
			if err == nil {
				all.Write(buf[:n])
				continue
			}
			// Every packet of the exchange was queued before stop: once
			// stopping, an empty queue is the end.
			if stopping {
				c.done <- all.String()
				return
			}
		}
	}()
	return c
}

func (c *capture) saw(needle string) bool {
	close(c.stop)
	return strings.Contains(<-c.done, needle)
}

func writeFile(path, s string) error { return os.WriteFile(path, []byte(s), 0o600) }

func htons(v uint16) uint16 { return v<<8 | v>>8 }

type testWriter struct{ t *testing.T }

func (w testWriter) Write(b []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(b)))
	return len(b), nil
}
