package datapath

import (
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"

	"github.com/meshbed/meshbed/datapath/state"
	"github.com/meshbed/meshbed/internal/testenv"
)

// benchServices returns n services of perService remote backends each, the
// backends in 10.200.0.0/16 behind one tunnel endpoint.
func benchServices(n, perService int, port uint16) []state.Service {
	out := make([]state.Service, 0, n)
	for i := range n {
		svc := state.Service{
			Name:     fmt.Sprintf("bench/svc-%d", i),
			Frontend: state.Frontend{IP: netip.AddrFrom4([4]byte{10, 96, byte(i >> 8), byte(i)}), Port: 80, Protocol: state.TCP},
		}
		for j := range perService {
			k := i*perService + j
			svc.Backends = append(svc.Backends, state.Backend{
				IP: netip.AddrFrom4([4]byte{10, 200, byte(k >> 8), byte(k)}), Port: port, Protocol: state.TCP, ClusterID: 1,
			})
		}
		out = append(out, svc)
	}
	return out
}

// kernelNsPerPacket runs prog once per b.Loop iteration and reports the
// kernel-measured run time. One packet per BPF_PROG_TEST_RUN rather than
// Repeat: repeats run on the same skb, which the first run has already
// DNATed, so only the first would be a service hit.
func kernelNsPerPacket(b *testing.B, prog *ebpf.Program, pkt []byte, want uint32) {
	var total time.Duration
	var n int
	for b.Loop() {
		ret, d, err := prog.Benchmark(pkt, 1, nil)
		if err != nil {
			b.Fatal(err)
		}
		if ret != want {
			b.Fatalf("verdict %d, want %d", ret, want)
		}
		total += d
		n++
	}
	b.ReportMetric(float64(total.Nanoseconds())/float64(n), "ns/pkt")
}

// BenchmarkFromContainer measures the pod-egress program on a packet of an
// established service connection (service, conntrack and backend lookups,
// DNAT, tunnel key, redirect) with a small and a large service table,
// beside a program that only returns.
func BenchmarkFromContainer(b *testing.B) {
	testenv.Privileged(b)
	pkt := tcp(clientIP, netip.AddrFrom4([4]byte{10, 96, 0, 0}), 40000, 80, tcpACK).bytes()

	b.Run("passthrough", func(b *testing.B) {
		prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
			Type:         ebpf.SchedCLS,
			License:      "GPL",
			Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 0), asm.Return()},
		})
		if err != nil {
			b.Fatal(err)
		}
		defer prog.Close()
		kernelNsPerPacket(b, prog, pkt, tcActOK)
	})

	for _, services := range []int{1, 10000} {
		b.Run(fmt.Sprintf("service-hit/services=%d", services), func(b *testing.B) {
			e := newProgEnv(b, Options{})
			s := &state.State{
				// Test runs see loopback as the receiving device.
				Endpoints: []state.Endpoint{{ID: 1, IP: clientIP, Identity: clientIdentity, Interface: "lo"}},
				IPCache: []state.IPCacheEntry{
					{Prefix: netip.MustParsePrefix("10.200.0.0/16"), Identity: remoteIdentity, TunnelEndpoint: node2, ClusterID: 1},
				},
				Services: benchServices(services, 10, 8080),
			}
			e.apply(b, s)
			e.ns.mustDo(b, func() error {
				kernelNsPerPacket(b, e.d.pod.FromContainer, pkt, tcActRedirect)
				return nil
			})
		})
	}
}

// BenchmarkApply measures reconciliation: every iteration replaces every
// backend of 1,000 services of 10 backends.
func BenchmarkApply(b *testing.B) {
	testenv.Privileged(b)
	const services, perService = 1000, 10
	e := newProgEnv(b, Options{})
	states := [2]*state.State{
		{Services: benchServices(services, perService, 8080)},
		{Services: benchServices(services, perService, 8081)},
	}
	e.apply(b, states[1])

	b.Run("replace-all-backends", func(b *testing.B) {
		i := 0
		start := time.Now()
		e.ns.mustDo(b, func() error {
			for b.Loop() {
				if err := e.d.Apply(states[i%2]); err != nil {
					return err
				}
				i++
			}
			return nil
		})
		b.ReportMetric(float64(i*services*perService)/time.Since(start).Seconds(), "backends/s")
	})

	b.Run("unchanged", func(b *testing.B) {
		e.ns.mustDo(b, func() error {
			for b.Loop() {
				if err := e.d.Apply(states[0]); err != nil {
					return err
				}
			}
			return nil
		})
	})
}
