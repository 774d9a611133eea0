package relay

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/meshbed/meshbed/datapath/monitor"
	"github.com/meshbed/meshbed/mesh/flow"
)

func rec(sec int, node string) flow.Record {
	return flow.Record{Flow: &flow.Flow{Time: time.Unix(int64(sec), 0), Node: node}}
}

func static(name string, recs []flow.Record, err error) Source {
	return Source{Name: name, Get: func(_ context.Context, _ flow.Request, fn func(flow.Record) error) error {
		for _, r := range recs {
			if err := fn(r); err != nil {
				return err
			}
		}
		return err
	}}
}

func TestMergeLastInTimeOrder(t *testing.T) {
	srcs := []Source{
		static("a", []flow.Record{rec(1, "a"), rec(4, "a"), rec(6, "a")}, nil),
		static("b", []flow.Record{rec(2, "b"), rec(5, "b")}, nil),
		static("c", nil, errors.New("port-forward:\nrefused")),
	}
	var got []string
	err := Merge(context.Background(), srcs, flow.Request{Last: 3}, func(r flow.Record) error {
		got = append(got, r.Flow.Node+r.Flow.Time.Format("5"))
		return nil
	})
	if strings.Join(got, " ") != "a4 b5 a6" {
		t.Errorf("merged %v, want the last 3 in time order", got)
	}
	if err == nil || err.Error() != "c: port-forward: refused" {
		t.Errorf("error %q, want one line naming the failed source", err)
	}
}

// fakeSource feeds an Observer from a channel.
type fakeSource struct{ events chan monitor.Event }

type fakeReader struct {
	events chan monitor.Event
	closed chan struct{}
	once   sync.Once
}

func (s fakeSource) Events() (monitor.Reader, error) {
	return &fakeReader{events: s.events, closed: make(chan struct{})}, nil
}
func (fakeSource) LostEvents() (uint64, error) { return 0, nil }
func (r *fakeReader) Read() (monitor.Event, error) {
	select {
	case ev := <-r.events:
		return ev, nil
	case <-r.closed:
		return monitor.Event{}, monitor.ErrReaderClosed
	}
}
func (*fakeReader) SetDeadline(time.Time) {}
func (r *fakeReader) Close() error        { r.once.Do(func() { close(r.closed) }); return nil }

type noResolver struct{}

func (noResolver) LookupIP(netip.Addr) (flow.Endpoint, bool) { return flow.Endpoint{}, false }
func (noResolver) ClusterName(uint32) string                 { return "" }
func (noResolver) IdentityLabels(uint32) []string            { return nil }

// The agent's socket: flows served there reach SocketSource; once the
// agent is gone, one line says so.
func TestSocketSource(t *testing.T) {
	src := fakeSource{events: make(chan monitor.Event)}
	o, err := flow.NewObserver(flow.ObserverConfig{Cluster: "cluster1", Node: "node-0", Source: src, Resolver: noResolver{}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go o.Run(ctx)
	sock := filepath.Join(t.TempDir(), "agent.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srvCtx, stopSrv := context.WithCancel(ctx)
	served := make(chan error, 1)
	go func() { served <- flow.Serve(srvCtx, l, flow.NodeHandler(srvCtx, func() *flow.Observer { return o })) }()

	src.events <- monitor.Event{Verdict: monitor.Dropped, Reason: monitor.ReasonPolicyEgress, Time: time.Now()}
	deadline := time.Now().Add(10 * time.Second)
	for o.Status().Seen == 0 {
		if time.Now().After(deadline) {
			t.Fatal("observer saw nothing")
		}
		time.Sleep(5 * time.Millisecond)
	}
	var got []flow.Record
	s := SocketSource(sock)
	if err := s.Get(ctx, flow.Request{Last: 5, Filter: flow.Filter{Verdict: flow.VerdictDropped}}, func(r flow.Record) error {
		got = append(got, r)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0].Flow.DropReason != "policy-denied-egress" || got[0].Flow.Node != "cluster1/node-0" {
		t.Fatalf("records %+v", got)
	}

	stopSrv()
	if err := <-served; err != nil {
		t.Fatal(err)
	}
	err = s.Get(ctx, flow.Request{Last: 5}, func(flow.Record) error { return nil })
	if err == nil || !strings.Contains(err.Error(), "no agent answers on "+sock) || strings.Contains(err.Error(), "\n") {
		t.Fatalf("gone socket: %v", err)
	}
}
