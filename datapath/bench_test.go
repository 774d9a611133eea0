package datapath

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
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

// benchCase is one packet stream of BenchmarkFromContainer.
type benchCase struct {
	name string
	ns   *testNS
	prog *ebpf.Program
	want uint32
	// next returns the packet of the i-th run of the case (outside the
	// measured time).
	next func(i int) []byte
	// after, if not nil, reports extra metrics at the end.
	after func(b *testing.B)

	runs          int
	samples, pass []time.Duration
}

// benchRoundRuns is how many packets of a case a round sends, each right
// after one through the pass-through program.
const benchRoundRuns = 16

// BenchmarkFromContainer measures the pod-egress program per packet, as
// the kernel times it in BPF_PROG_TEST_RUN, against a program that only
// returns (the floor of a test run: its entry, timing and exit). The
// floor varies a lot from run to run on a shared machine (a softirq that
// runs in the measured window, a cold cache), so every case is measured
// in one benchmark, in rounds: each round sends benchRoundRuns packets of
// every case in turn, each packet right after one through the pass-through
// program. A case's x-passthrough metric is the median of its runs over
// the median of the pass-through runs interleaved with them; its ns/pkt
// metric the median of its runs. Cases:
//   - est-1svc, est-10ksvc: a packet of an established service
//     connection, with 1 and 10,000 services of 10 remote backends (the
//     per-packet steady state: DNAT, tunnel key, redirect);
//   - new: a SYN opening a new service connection every time (backend
//     selection, conntrack creation and its flow event);
//   - new-stalled: the same with nobody reading the events (the ring
//     buffer full, every event lost and counted): it must not be slower;
//   - trace: est-1svc with the datapath in trace mode, which reports
//     every forwarded packet (the cost of per-packet events).
//
// One packet per BPF_PROG_TEST_RUN rather than Repeat: repeats run on the
// same skb, which the first run has already DNATed, so only the first
// would be a service hit.
func BenchmarkFromContainer(b *testing.B) {
	testenv.Privileged(b)
	vip0 := netip.AddrFrom4([4]byte{10, 96, 0, 0})
	est := tcp(clientIP, vip0, 40000, 80, tcpACK).bytes()

	setup := func(opts Options, services int, drain bool) *progEnv {
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
	established := func(name string, e *progEnv) *benchCase {
		return &benchCase{name: name, ns: e.ns, prog: e.d.pod.FromContainer, want: tcActRedirect,
			next: func(int) []byte { return est }}
	}
	// new, new-stalled: every run a new client port; when the ports run
	// out the conntrack table is emptied (outside the measured time) so
	// each SYN opens a new connection.
	newConn := func(name string, e *progEnv) *benchCase {
		const ports = 60000
		c := &benchCase{name: name, ns: e.ns, prog: e.d.pod.FromContainer, want: tcActRedirect}
		c.next = func(i int) []byte {
			if i > 0 && i%ports == 0 {
				clearMap(b, e.d.pod.Conntrack)
			}
			return tcp(clientIP, vip0, uint16(1024+i%ports), 80, tcpSYN).bytes()
		}
		return c
	}
	stalled := setup(Options{}, 1, false)
	cases := []*benchCase{
		established("est-1svc", setup(Options{}, 1, true)),
		established("est-10ksvc", setup(Options{}, 10000, true)),
		newConn("new", setup(Options{}, 1, true)),
		newConn("new-stalled", stalled),
		established("trace", setup(Options{Trace: true}, 1, true)),
	}
	cases[3].after = func(b *testing.B) {
		lost, err := stalled.d.LostEvents()
		if err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(float64(lost), "new-stalled-events-lost")
	}
	pass := passthroughProg(b)

	for b.Loop() {
		for _, c := range cases {
			c.ns.mustDo(b, func() error {
				for range benchRoundRuns {
					pkt := c.next(c.runs)
					c.runs++
					_, dp, err := pass.Benchmark(pkt, 1, nil)
					if err != nil {
						return err
					}
					ret, d, err := c.prog.Benchmark(pkt, 1, nil)
					if err != nil {
						return err
					}
					if ret != c.want {
						return fmt.Errorf("%s: verdict %d, want %d", c.name, ret, c.want)
					}
					c.pass = append(c.pass, dp)
					c.samples = append(c.samples, d)
				}
				return nil
			})
		}
	}
	var allPass []time.Duration
	for _, c := range cases {
		allPass = append(allPass, c.pass...)
		p, d := median(c.pass), median(c.samples)
		b.ReportMetric(float64(d.Nanoseconds()), c.name+"-ns/pkt")
		if p > 0 {
			b.ReportMetric(float64(d)/float64(p), c.name+"-x-passthrough")
		}
		if c.after != nil {
			c.after(b)
		}
	}
	b.ReportMetric(float64(median(allPass).Nanoseconds()), "passthrough-ns/pkt")
}

// median returns the median of ds (which it sorts), 0 if empty.
func median(ds []time.Duration) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	slices.Sort(ds)
	return ds[len(ds)/2]
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
