package sim

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/meshbed/meshbed/datapath/netns/netnstest"
	"github.com/meshbed/meshbed/internal/testenv"
	"github.com/meshbed/meshbed/mesh/kvstore"
)

// Loss detection in TestIntegrationPartitionPlanes: a lost remote cluster
// is noticed within planesLossBound.
const (
	planesHealthInterval = 250 * time.Millisecond
	planesHealthTimeout  = 500 * time.Millisecond
)

var planesLossBound = kvstore.HealthConfig{Interval: planesHealthInterval, Timeout: planesHealthTimeout}.Bound()

// TestIntegrationPartitionPlanes cuts the network between two clusters one
// plane at a time and checks that exactly that plane breaks:
//
//   - data: pod traffic between the clusters fails, while the control plane
//     stays connected, so remote backends stay programmed well past the
//     loss-detection bound;
//   - control: remote backends are withdrawn within the bound, while pod
//     traffic straight to a remote pod still flows (identities, ipcache and
//     tunnel routes are kept for established routes);
//   - oneWay data: datagrams from the first group to the second are lost
//     while those in the other direction arrive.
//
// Every subtest heals and checks that the mesh is whole again.
func TestIntegrationPartitionPlanes(t *testing.T) {
	testenv.Privileged(t)
	if testing.Short() {
		t.Skip("integration test: builds a whole mesh")
	}
	netnstest.CheckLeaks(t)
	spec := meshSpec(2, 2)
	spec.HealthInterval, spec.HealthTimeout = planesHealthInterval, planesHealthTimeout
	m, _ := startMesh(t, spec)
	deploy(t, m, echoManifest)
	c1, _ := m.Cluster("cluster1")
	c2, _ := m.Cluster("cluster2")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	cut := [][]Member{{{Cluster: "cluster1"}}, {{Cluster: "cluster2"}}}
	// whole checks the healthy mesh: every node has backends from both
	// clusters, and pods reach pods of the other cluster in both directions.
	whole := func(t *testing.T) {
		t.Helper()
		netnstest.Eventually(t, 15*time.Second, func() error {
			return errors.Join(backendsFrom(ctx, c1, 1, 2), backendsFrom(ctx, c2, 1, 2),
				reaches(ctx, c1, c2), reaches(ctx, c2, c1))
		})
	}
	partition := func(t *testing.T, plane Plane, oneWay bool) {
		t.Helper()
		whole(t)
		if err := m.Partition(cut, plane, oneWay); err != nil {
			t.Fatal(err)
		}
		// Heal even when the subtest fails, so the next one starts whole.
		t.Cleanup(func() {
			if err := m.Heal(); err != nil {
				t.Errorf("heal: %v", err)
			}
		})
	}

	t.Run("data", func(t *testing.T) {
		partition(t, PlaneData, false)
		netnstest.Eventually(t, 5*time.Second, func() error {
			return errors.Join(unreachable(ctx, c1, c2), unreachable(ctx, c2, c1))
		})
		// The control plane is untouched: no cluster is reported lost, so
		// remote backends stay, for four times the detection bound.
		consistently(t, 4*planesLossBound, func() error {
			return errors.Join(backendsFrom(ctx, c1, 1, 2), backendsFrom(ctx, c2, 1, 2))
		})
		// Within a cluster the data plane still works.
		if err := reaches(ctx, c1, c1); err != nil {
			t.Fatal(err)
		}
		if err := m.Heal(); err != nil {
			t.Fatal(err)
		}
		whole(t)
	})

	t.Run("control", func(t *testing.T) {
		partition(t, PlaneControl, false)
		t0 := time.Now()
		// Each side loses the other: its backends are withdrawn within the
		// bound (plus the time to reprogram the nodes).
		netnstest.Eventually(t, planesLossBound+3*time.Second, func() error {
			return errors.Join(backendsFrom(ctx, c1, 1), backendsFrom(ctx, c2, 2))
		})
		t.Logf("remote backends withdrawn %v after the control-plane cut (loss bound %v)", time.Since(t0).Round(time.Millisecond), planesLossBound)
		// New connections to the service stay local...
		got, failed, err := curlService(ctx, c1, 20, time.Second)
		if err := answeredBy(got, failed, err, "cluster1"); err != nil {
			t.Fatalf("service from cluster1 during the control-plane cut: %v", err)
		}
		// ...but the data plane between the clusters is intact, and the
		// identities and routes for remote pods were kept: a pod still
		// reaches a remote pod directly, both ways.
		consistently(t, 4*planesLossBound, func() error {
			return errors.Join(reaches(ctx, c1, c2), reaches(ctx, c2, c1))
		})
		if err := m.Heal(); err != nil {
			t.Fatal(err)
		}
		whole(t)
	})

	t.Run("oneWay data", func(t *testing.T) {
		// Datagrams, not TCP: a connection needs both directions, so only
		// connectionless traffic shows which one is cut.
		in1, in2 := listenUDP(t, c1), listenUDP(t, c2)
		from1, from2 := firstPod(t, c1, "x-wing"), firstPod(t, c2, "x-wing")
		// Both directions deliver before the cut, so that a loss during it
		// means the cut and not a path that never worked.
		netnstest.Eventually(t, 5*time.Second, func() error {
			return errors.Join(in2.delivers(ctx, from1, "before"), in1.delivers(ctx, from2, "before"))
		})
		partition(t, PlaneData, true)
		netnstest.Eventually(t, 5*time.Second, func() error { return in2.loses(ctx, from1, "cut") })
		// The loss is not momentary: cluster1 stays cut off from cluster2
		// while cluster2 keeps reaching cluster1.
		consistently(t, 4*planesLossBound, func() error {
			return errors.Join(in2.loses(ctx, from1, "cut"), in1.delivers(ctx, from2, "cut"))
		})
		if err := m.Heal(); err != nil {
			t.Fatal(err)
		}
		netnstest.Eventually(t, 5*time.Second, func() error { return in2.delivers(ctx, from1, "healed") })
		whole(t)
	})

	if err := finalCheck(ctx, m); err != nil {
		t.Fatalf("final check: %v", err)
	}
}

// directTimeout bounds one request straight to a pod: the answer takes
// well under a millisecond when the path works.
const directTimeout = 300 * time.Millisecond

// reaches checks that from's x-wing gets answers straight from a
// rebel-base pod of to (its pod IP, no service), for every one of three
// requests.
func reaches(ctx context.Context, from, to *Cluster) error {
	got, failed, err := curlPod(ctx, from, to, 3)
	return answeredBy(got, failed, err, to.Name())
}

// unreachable checks that none of three requests from from's x-wing
// straight to a rebel-base pod of to is answered.
func unreachable(ctx context.Context, from, to *Cluster) error {
	got, _, err := curlPod(ctx, from, to, 3)
	if err != nil && len(got) > 0 {
		return fmt.Errorf("%s still reaches %s's pods sometimes: %v", from.Name(), to.Name(), got)
	}
	if err == nil {
		return fmt.Errorf("%s still reaches %s's pods: %v", from.Name(), to.Name(), got)
	}
	return nil
}

func curlPod(ctx context.Context, from, to *Cluster, count int) (map[string]int, int, error) {
	client, _, err := from.Client("default", "x-wing", directTimeout)
	if err != nil {
		return nil, 0, err
	}
	pods := to.Pods("default", "rebel-base")
	if len(pods) == 0 {
		return nil, 0, fmt.Errorf("%s: no rebel-base pod: %w", to.Name(), ErrNoPod)
	}
	return curlURL(ctx, client, "http://"+pods[0].IP.String()+"/", count)
}

func firstPod(t *testing.T, c *Cluster, deployment string) *Pod {
	t.Helper()
	pods := c.Pods("default", deployment)
	if len(pods) == 0 {
		t.Fatalf("%s: no %s pod", c.Name(), deployment)
	}
	return pods[0]
}

// udpPort is where the datagram probes listen in rebel-base pods (the echo
// server has TCP 80 only).
const udpPort = 7777

// udpProbe is a UDP socket in a rebel-base pod that counts datagrams by
// tag; every datagram sent carries a unique tag, so a late one from an
// earlier probe never counts for a later one.
type udpProbe struct {
	cluster string
	ip      netip.Addr
	conn    net.PacketConn
}

var udpSeq atomic.Uint64

func listenUDP(t *testing.T, c *Cluster) *udpProbe {
	t.Helper()
	p := firstPod(t, c, "rebel-base")
	conn, err := p.ns.ListenPacket("udp", ":"+strconv.Itoa(udpPort))
	if err != nil {
		t.Fatalf("%s: listen in pod %s: %v", c.Name(), p.Name, err)
	}
	t.Cleanup(func() { conn.Close() })
	return &udpProbe{cluster: c.Name(), ip: p.IP, conn: conn}
}

// send sends three datagrams with a fresh tag from pod to the probe and
// reports whether at least one arrived within directTimeout.
func (u *udpProbe) send(ctx context.Context, from *Pod, phase string) (bool, error) {
	tag := fmt.Sprintf("%s-%d", phase, udpSeq.Add(1))
	c, err := from.Dial(ctx, "udp", netip.AddrPortFrom(u.ip, udpPort).String())
	if err != nil {
		return false, err
	}
	defer c.Close()
	for range 3 {
		if _, err := c.Write([]byte(tag)); err != nil {
			return false, fmt.Errorf("send to %s: %w", u.cluster, err)
		}
	}
	buf := make([]byte, 64)
	if err := u.conn.SetReadDeadline(time.Now().Add(directTimeout)); err != nil {
		return false, err
	}
	for {
		n, _, err := u.conn.ReadFrom(buf)
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return false, nil
		}
		if err != nil {
			return false, err
		}
		if string(buf[:n]) == tag {
			return true, nil
		}
	}
}

func (u *udpProbe) delivers(ctx context.Context, from *Pod, phase string) error {
	ok, err := u.send(ctx, from, phase)
	if err == nil && !ok {
		err = fmt.Errorf("datagrams from %s to %s's pod %s are lost", from.Name, u.cluster, u.ip)
	}
	return err
}

func (u *udpProbe) loses(ctx context.Context, from *Pod, phase string) error {
	ok, err := u.send(ctx, from, phase)
	if err == nil && ok {
		err = fmt.Errorf("datagrams from %s reach %s's pod %s", from.Name, u.cluster, u.ip)
	}
	return err
}
