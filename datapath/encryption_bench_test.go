package datapath_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/meshbed/meshbed/datapath/overlay"
	"github.com/meshbed/meshbed/datapath/wireguard"
	"github.com/meshbed/meshbed/internal/testenv"
)

// Issue 14's figures: what WireGuard costs on the tunnel between two
// nodes, with the datapath's programs attached in both modes. The VXLAN
// MTU is the encrypted one in both modes (underlay − WireGuard − VXLAN
// overhead), so the ratio is the cost of encryption, not of a smaller MTU.
// Modes alternate as in BenchmarkTunnelThroughput; encryption is switched
// on by setting up both nodes' WireGuard devices (userspace here: the
// machine has no module; the kernel's where it exists) and off by removing
// them, which also removes their rules and routes.

// encryptedMTU is the VXLAN MTU under WireGuard.
const encryptedMTU = overlay.DefaultUnderlayMTU - wireguard.Overhead - overlay.VXLANOverhead

// wgPair switches WireGuard on and off between the pair's nodes, keeping
// each node's key across switches (as a restart would).
type wgPair struct {
	p    *tunnelPair
	dir  [2]string
	devs [2]*wireguard.Device
	impl wireguard.Impl
}

func (w *wgPair) on() error {
	for i, n := range w.p.nodes {
		d, err := wireguard.Setup(wireguard.Config{NS: n.ns, NodeIP: n.ip, KeyFile: filepath.Join(w.dir[i], wireguard.KeyFileName),
			MTU: overlay.DefaultUnderlayMTU - wireguard.Overhead, TunnelPort: overlay.DefaultVXLANPort, Impl: w.impl})
		if err != nil {
			return err
		}
		w.devs[i] = d
	}
	for i, d := range w.devs {
		o := w.p.nodes[1-i]
		if err := d.Sync([]wireguard.Peer{{Node: o.ns.Name(), PublicKey: w.devs[1-i].PublicKey(), IP: o.ip, PodCIDR: o.cidr}}); err != nil {
			return err
		}
	}
	return nil
}

func (w *wgPair) off() error {
	var errs []error
	for i, d := range w.devs {
		if d != nil {
			errs = append(errs, d.Remove())
			w.devs[i] = nil
		}
	}
	return errors.Join(errs...)
}

// txBytes is what node 1's device sent to node 2: non-zero shows that
// the traffic of an encrypted window went through it.
func (w *wgPair) txBytes() int64 {
	if w.devs[0] == nil {
		return 0
	}
	peers, err := w.devs[0].Peers()
	if err != nil || len(peers) == 0 {
		return 0
	}
	return peers[0].TxBytes
}

func newWGPair(b *testing.B) *wgPair {
	p := newTunnelPairMTU(b, encryptedMTU)
	if err := p.loadBPF(); err != nil {
		b.Fatal(err)
	}
	w := &wgPair{p: p, dir: [2]string{b.TempDir(), b.TempDir()}}
	b.Cleanup(func() {
		if err := w.off(); err != nil {
			b.Error(err)
		}
	})
	return w
}

// BenchmarkTunnelThroughputEncrypted is BenchmarkTunnelThroughput's
// encrypted variant: pps-clear and pps-wg (means over the rounds), ratio
// (median of the per-round wg/clear ratios) with its extremes; for TCP
// also Gbit/s.
func BenchmarkTunnelThroughputEncrypted(b *testing.B) {
	if testing.Short() {
		b.Skip("moves traffic for several seconds: skipped with -short")
	}
	testenv.Privileged(b)
	for _, tc := range []struct {
		name  string
		start func(p *tunnelPair, port int) (*stream, error)
	}{
		{fmt.Sprintf("udp-%dB", udpPayload), (*tunnelPair).udpStream},
		{"tcp", (*tunnelPair).tcpStream},
	} {
		b.Run(tc.name, func(b *testing.B) {
			w := newWGPair(b)
			port := 9000
			run := func(enc bool) rate {
				if enc {
					if err := w.on(); err != nil {
						b.Fatal(err)
					}
				}
				port++
				r, err := measure(func() (*stream, error) { return tc.start(w.p, port) })
				if err != nil {
					b.Fatalf("encrypted=%v: %v", enc, err)
				}
				if enc {
					if w.txBytes() == 0 {
						b.Fatal("encrypted mode but WireGuard sent nothing")
					}
					b.Logf("implementation %s", w.devs[0].Impl())
					if err := w.off(); err != nil {
						b.Fatal(err)
					}
				}
				return r
			}
			var clear, enc []rate
			for b.Loop() {
				for round := range throughputRounds {
					first := round%2 == 1
					r1 := run(first)
					r2 := run(!first)
					if first {
						r1, r2 = r2, r1
					}
					clear, enc = append(clear, r1), append(enc, r2)
					b.Logf("round %d: clear %.0f pps %.3f Gbit/s, wireguard %.0f pps %.3f Gbit/s, ratio %.3f",
						len(clear), r1.pps, r1.gbps, r2.pps, r2.gbps, r2.pps/r1.pps)
				}
			}
			var sc, se, gc, ge float64
			ratios := make([]float64, len(clear))
			for i := range clear {
				sc, se, gc, ge = sc+clear[i].pps, se+enc[i].pps, gc+clear[i].gbps, ge+enc[i].gbps
				ratios[i] = enc[i].pps / clear[i].pps
			}
			slices.Sort(ratios)
			n := float64(len(clear))
			b.ReportMetric(sc/n, "pps-clear")
			b.ReportMetric(se/n, "pps-wg")
			b.ReportMetric(median(ratios), "ratio")
			b.ReportMetric(ratios[0], "ratio-min")
			b.ReportMetric(ratios[len(ratios)-1], "ratio-max")
			if tc.name == "tcp" {
				b.ReportMetric(gc/n, "Gbit/s-clear")
				b.ReportMetric(ge/n, "Gbit/s-wg")
			}
		})
	}
}

// BenchmarkEncryptionLatency: the time of one request and its answer on a
// new TCP connection (what a curl does) from pod 1 to pod 2, in clear and
// through WireGuard, alternating in batches; metrics p50/p99 of each and
// the added p50/p99.
func BenchmarkEncryptionLatency(b *testing.B) {
	if testing.Short() {
		b.Skip("skipped with -short")
	}
	testenv.Privileged(b)
	w := newWGPair(b)
	dst := netip.AddrPortFrom(w.p.nodes[1].pod.IP, 8080)
	ln, err := w.p.nodes[1].podNS.Listen("tcp", dst.String())
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				buf := make([]byte, 512)
				if n, err := c.Read(buf); err == nil {
					_, _ = c.Write(buf[:n])
				}
			}()
		}
	}()
	request := func() (time.Duration, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		t0 := time.Now()
		c, err := w.p.nodes[0].podNS.Dial(ctx, nil, "tcp", dst.String())
		if err != nil {
			return 0, err
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(2 * time.Second))
		req := []byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n")
		if _, err := c.Write(req); err != nil {
			return 0, err
		}
		if _, err := io.ReadFull(c, make([]byte, len(req))); err != nil {
			return 0, err
		}
		return time.Since(t0), nil
	}
	const batch, batches = 50, 8
	var clear, enc []time.Duration
	for b.Loop() {
		for i := range batches {
			on := i%2 == 1
			if on {
				if err := w.on(); err != nil {
					b.Fatal(err)
				}
				// The first request pays the handshake: not per request.
				if _, err := request(); err != nil {
					b.Fatal(err)
				}
			}
			for range batch {
				d, err := request()
				if err != nil {
					b.Fatalf("encrypted=%v: %v", on, err)
				}
				if on {
					enc = append(enc, d)
				} else {
					clear = append(clear, d)
				}
			}
			if on {
				if w.txBytes() == 0 {
					b.Fatal("encrypted batch but WireGuard sent nothing")
				}
				if err := w.off(); err != nil {
					b.Fatal(err)
				}
			}
		}
	}
	slices.Sort(clear)
	slices.Sort(enc)
	pct := func(d []time.Duration, p float64) float64 {
		return float64(d[int(p*float64(len(d)-1))].Microseconds())
	}
	b.ReportMetric(pct(clear, 0.5), "µs-p50-clear")
	b.ReportMetric(pct(clear, 0.99), "µs-p99-clear")
	b.ReportMetric(pct(enc, 0.5), "µs-p50-wg")
	b.ReportMetric(pct(enc, 0.99), "µs-p99-wg")
	b.ReportMetric(pct(enc, 0.5)-pct(clear, 0.5), "µs-p50-added")
	b.ReportMetric(pct(enc, 0.99)-pct(clear, 0.99), "µs-p99-added")
}
