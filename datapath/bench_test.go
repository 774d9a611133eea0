package datapath

import (
	"errors"
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

// passthroughProg is a program that only returns TC_ACT_OK: the floor of
// BPF_PROG_TEST_RUN against which the datapath's programs are compared.
func passthroughProg(b *testing.B) *ebpf.Program {
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Type:         ebpf.SchedCLS,
		License:      "GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 0), asm.Return()},
	})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { prog.Close() })
	return prog
}

// kernelNsPerPacket runs prog once per b.Loop iteration, alternating with
// the pass-through program, and reports both kernel-measured run times and
// their ratio. Alternating makes the ratio hold on a loaded machine: both
// programs see the same load. One packet per BPF_PROG_TEST_RUN rather than
// Repeat: repeats run on the same skb, which the first run has already
// DNATed, so only the first would be a service hit. next, if not nil,
// returns the packet of each iteration (outside the measured time).
func kernelNsPerPacket(b *testing.B, prog *ebpf.Program, pkt []byte, want uint32, next func(i int) []byte) {
	pass := passthroughProg(b)
	var total, totalPass time.Duration
	var n int
	for b.Loop() {
		if next != nil {
			pkt = next(n)
		}
		_, dp, err := pass.Benchmark(pkt, 1, nil)
		if err != nil {
			b.Fatal(err)
		}
		ret, d, err := prog.Benchmark(pkt, 1, nil)
		if err != nil {
			b.Fatal(err)
		}
		if ret != want {
			b.Fatalf("verdict %d, want %d", ret, want)
		}
		total += d
		totalPass += dp
		n++
	}
	b.ReportMetric(float64(total.Nanoseconds())/float64(n), "ns/pkt")
	b.ReportMetric(float64(totalPass.Nanoseconds())/float64(n), "ns/pkt-passthrough")
	if totalPass > 0 {
		b.ReportMetric(float64(total)/float64(totalPass), "ratio")
	}
}

// drainInBackground reads the events of e until the benchmark ends, as the
// agent does, so that event emission is measured with a consumer.
func drainInBackground(b *testing.B, e *progEnv) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			if _, err := e.events.Read(); errors.Is(err, ErrReaderClosed) {
				return
			}
		}
	}()
	b.Cleanup(func() {
		e.events.Close()
		<-done
	})
}

// BenchmarkFromContainer measures the pod-egress program with a small and a
// large service table, each run alternating with a program that only
// returns (ratio = datapath time / pass-through time):
//   - service-hit: a packet of an established service connection
//     (service, conntrack and backend lookups, DNAT, tunnel key, redirect);
//   - new-connection: a SYN opening a new service connection every time
//     (backend selection, conntrack creation and its flow event);
//   - new-connection/reader-stalled: the same with nobody reading the
//     events (the ring buffer full, every event lost and counted);
//   - trace: service-hit with the datapath in trace mode, which reports
//     every forwarded packet (the cost of per-packet events).
func BenchmarkFromContainer(b *testing.B) {
	testenv.Privileged(b)
	vip0 := netip.AddrFrom4([4]byte{10, 96, 0, 0})
	pkt := tcp(clientIP, vip0, 40000, 80, tcpACK).bytes()

	b.Run("passthrough", func(b *testing.B) {
		kernelNsPerPacket(b, passthroughProg(b), pkt, tcActOK, nil)
	})

	setup := func(b *testing.B, opts Options, services int, drain bool) *progEnv {
		e := newProgEnv(b, opts)
		s := &state.State{
			// Test runs see loopback as the receiving device.
			Endpoints: []state.Endpoint{{ID: 1, IP: clientIP, Identity: clientIdentity, Interface: "lo"}},
			IPCache: []state.IPCacheEntry{
				{Prefix: netip.MustParsePrefix("10.200.0.0/16"), Identity: remoteIdentity, TunnelEndpoint: node2, ClusterID: 1},
			},
			Services: benchServices(services, 10, 8080),
		}
		e.apply(b, s)
		if drain {
			drainInBackground(b, e)
		}
		return e
	}
	for _, services := range []int{1, 10000} {
		b.Run(fmt.Sprintf("service-hit/services=%d", services), func(b *testing.B) {
			e := setup(b, Options{}, services, true)
			e.ns.mustDo(b, func() error {
				kernelNsPerPacket(b, e.d.pod.FromContainer, pkt, tcActRedirect, nil)
				return nil
			})
		})
	}
	// new-connection: every iteration a new client port; when the ports
	// run out the conntrack table is emptied (outside the measured time)
	// so each SYN opens a new connection. reader-stalled: nobody reads the
	// events, so the ring buffer is full and they are lost: the datapath
	// must not get slower for it.
	for _, drain := range []bool{true, false} {
		name := "new-connection/services=1"
		if !drain {
			name = "new-connection/reader-stalled"
		}
		b.Run(name, func(b *testing.B) {
			e := setup(b, Options{}, 1, drain)
			const ports = 60000
			next := func(i int) []byte {
				if i > 0 && i%ports == 0 {
					clearMap(b, e.d.pod.Conntrack)
				}
				return tcp(clientIP, vip0, uint16(1024+i%ports), 80, tcpSYN).bytes()
			}
			e.ns.mustDo(b, func() error {
				kernelNsPerPacket(b, e.d.pod.FromContainer, nil, tcActRedirect, next)
				return nil
			})
			if !drain {
				lost, err := e.d.LostEvents()
				if err != nil {
					b.Fatal(err)
				}
				b.ReportMetric(float64(lost), "events-lost")
			}
		})
	}
	b.Run("trace/services=1", func(b *testing.B) {
		e := setup(b, Options{Trace: true}, 1, true)
		e.ns.mustDo(b, func() error {
			kernelNsPerPacket(b, e.d.pod.FromContainer, pkt, tcActRedirect, nil)
			return nil
		})
	})
}

// clearMap deletes every entry of m.
func clearMap(b *testing.B, m *ebpf.Map) {
	var keys [][]byte
	var k, v []byte
	it := m.Iterate()
	for it.Next(&k, &v) {
		keys = append(keys, append([]byte(nil), k...))
	}
	if err := it.Err(); err != nil {
		b.Fatal(err)
	}
	for _, k := range keys {
		if err := m.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			b.Fatal(err)
		}
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
