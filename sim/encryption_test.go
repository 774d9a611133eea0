package sim

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/meshbed/meshbed/datapath/node"
	"github.com/meshbed/meshbed/datapath/state"
	"github.com/meshbed/meshbed/datapath/wireguard"
	"github.com/meshbed/meshbed/internal/testenv"
)

// dumpWireGuard describes every node's WireGuard state, for failures.
func dumpWireGuard(m *Mesh) string {
	var b strings.Builder
	for _, c := range m.Clusters() {
		for _, n := range c.Nodes() {
			fmt.Fprintf(&b, "%s/%s %s key %s\n", c.Name(), n.Name(), n.IP(), n.Datapath().PublicKey())
			if wg := n.Datapath().WireGuard(); wg != nil {
				peers, err := wg.Peers()
				for _, p := range peers {
					fmt.Fprintf(&b, "  peer %s %s %v handshake %s rx %d tx %d\n", p.PublicKey, p.Endpoint, p.AllowedIPs, p.LastHandshake.Format(time.StampMilli), p.RxBytes, p.TxBytes)
				}
				fmt.Fprintf(&b, "  err %v rejected %v unpeered %v\n", err, wg.Rejected(), wg.Unpeered())
			}
			if pc, err := n.NS().ListenPacket("udp4", "0.0.0.0:51871"); err == nil {
				fmt.Fprintf(&b, "  nothing listens on 51871 in the node namespace\n")
				pc.Close()
			}
			if h, err := n.NS().Handle(); err == nil {
				rules, _ := h.RuleList(unix.AF_INET)
				for _, r := range rules {
					fmt.Fprintf(&b, "  rule %d table %d mark %#x invert %v ipproto %d dport %v\n", r.Priority, r.Table, r.Mark, r.Invert, r.IPProto, r.Dport)
				}
				routes, _ := h.RouteListFiltered(unix.AF_INET, &netlink.Route{Table: wireguard.RouteTable}, netlink.RT_FILTER_TABLE)
				for _, r := range routes {
					fmt.Fprintf(&b, "  route %s type %d dev %d src %s\n", r.Dst, r.Type, r.LinkIndex, r.Src)
				}
			}
			if a := n.Agent(); a != nil {
				if s, _, _ := a.State(); s != nil {
					for _, sn := range s.Nodes {
						fmt.Fprintf(&b, "  node %s/%s %s %s key %q\n", sn.Cluster, sn.Name, sn.IP, sn.PodCIDR, sn.WireguardPubKey)
					}
				}
			}
		}
	}
	return b.String()
}

// markProbe sends one UDP datagram between cluster1's nodes (with a
// socket mark, if not 0) and reports whether it arrived.
func markProbe(m *Mesh, mark int) error {
	c1, _ := m.Cluster("cluster1")
	a, b := c1.Nodes()[0], c1.Nodes()[1]
	l, err := b.NS().ListenPacket("udp4", b.IP().String()+":40000")
	if err != nil {
		return err
	}
	defer l.Close()
	err = a.NS().Do(func() error {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM, 0)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		if mark != 0 {
			if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_MARK, mark); err != nil {
				return err
			}
		}
		return unix.Sendto(fd, []byte("probe"), 0, &unix.SockaddrInet4{Port: 40000, Addr: b.IP().As4()})
	})
	if err != nil {
		return fmt.Errorf("send: %w", err)
	}
	_ = l.SetReadDeadline(time.Now().Add(2 * time.Second))
	buf := make([]byte, 100)
	if _, _, err := l.ReadFrom(buf); err != nil {
		return fmt.Errorf("UDP between nodes %s and %s (mark %#x): %w", a.IP(), b.IP(), mark, err)
	}
	return nil
}

func TestIntegrationEncryption(t *testing.T) {
	testenv.Privileged(t)
	for _, routing := range []state.RoutingMode{state.Tunnel, state.Native} {
		t.Run(map[state.RoutingMode]string{state.Tunnel: "tunnel", state.Native: "native"}[routing], func(t *testing.T) {
			spec := meshSpec(2, 2)
			spec.Routing, spec.Encryption = routing, node.EncryptionWireGuard
			m, _ := startMesh(t, spec)
			deploy(t, m, echoManifest)
			c1, _ := m.Cluster("cluster1")
			ctx := context.Background()
			t.Cleanup(func() {
				if t.Failed() {
					t.Logf("WireGuard state:\n%s", dumpWireGuard(m))
				}
			})
			testenv.Eventually(t, 30*time.Second, func() error {
				got, failed, err := curlService(ctx, c1, 20, time.Second)
				return answeredBy(got, failed, err, "cluster1", "cluster2")
			})
			// Host traffic between nodes that is not the tunnel (nor pod
			// traffic) is left to the underlay, marked like WireGuard's
			// own packets or not: the rules steer only what they must.
			for _, mark := range []int{0, wireguard.FirewallMark} {
				if err := markProbe(m, mark); err != nil {
					t.Error(err)
				}
			}
		})
	}
}
