package sim

import (
	"context"
	"fmt"
	"slices"
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

// pinnedEcho is a global echo service whose one backend runs on node-3.
const pinnedEcho = `
apiVersion: v1
kind: Service
metadata:
  name: outpost
  annotations: {service.cilium.io/global: "true"}
spec:
  selector: {name: outpost}
  ports: [{name: http, port: 80}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: outpost}
spec:
  replicas: 1
  selector: {matchLabels: {name: outpost}}
  template:
    metadata: {labels: {name: outpost}}
    spec:
      nodeSelector: {kubernetes.io/hostname: node-3}
      containers: [{name: outpost, image: meshbed/echo}]
`

// BenchmarkNewNodeReachableEncrypted is issue 14's third figure: from a
// node joining cluster1 (AddNode called) to the first answer, through
// WireGuard, from a pod on it to a client in cluster2. It covers the
// node's datapath and agent start, its key's way to the other cluster
// (Node annotation, mesh-apiserver, kvstoremesh, agents), the pod's start
// on it, and the first handshake. One join per iteration, on a fresh mesh.
func BenchmarkNewNodeReachableEncrypted(b *testing.B) {
	if testing.Short() {
		b.Skip("builds a mesh per iteration: skipped with -short")
	}
	testenv.Privileged(b)
	var took []time.Duration
	for b.Loop() {
		b.StopTimer()
		spec := meshSpec(2, 2)
		spec.Encryption = node.EncryptionWireGuard
		m, closeMesh := startMesh(b, spec)
		deploy(b, m, echoManifest)
		c1, _ := m.Cluster("cluster1")
		c2, _ := m.Cluster("cluster2")
		for _, c := range []*Cluster{c1, c2} {
			// The Service everywhere; the Deployment waits for node-3.
			svc := pinnedEcho[:strings.Index(pinnedEcho, "---")]
			if err := m.Apply(context.Background(), c.Name(), []byte(svc)); err != nil {
				b.Fatal(err)
			}
		}
		client, _, err := c2.Client("default", "x-wing", 500*time.Millisecond)
		if err != nil {
			b.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		url, err := c2.ResolveURL(ctx, "http://outpost", "default")
		if err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		t0 := time.Now()
		n3, err := c1.AddNode(ctx)
		if err != nil {
			b.Fatal(err)
		}
		if err := m.Apply(ctx, "cluster1", []byte(pinnedEcho)); err != nil {
			b.Fatal(err)
		}
		for {
			r := client.Get(ctx, url)
			if r.Err == nil && r.Node == n3.Name() {
				break
			}
			if ctx.Err() != nil {
				b.Fatalf("node-3 not reachable from cluster2: %v", r.Err)
			}
			time.Sleep(20 * time.Millisecond) // polling the data path, as a client retrying would
		}
		took = append(took, time.Since(t0))
		b.StopTimer()
		cancel()
		// Through WireGuard: cluster2's node that sent has a session with node-3.
		handshake := false
		for _, n := range c2.Nodes() {
			peers, _ := n.Datapath().WireGuard().Peers()
			for _, p := range peers {
				if p.PublicKey == n3.Datapath().PublicKey() && !p.LastHandshake.IsZero() {
					handshake = true
				}
			}
		}
		if !handshake {
			b.Fatal("answered, but no node of cluster2 has a WireGuard session with node-3")
		}
		if err := closeMesh(); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
	slices.Sort(took)
	b.ReportMetric(took[len(took)/2].Seconds(), "s-to-reachable-p50")
	b.ReportMetric(took[len(took)-1].Seconds(), "s-to-reachable-max")
}
