package flow

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/meshbed/meshbed/datapath/monitor"
	"github.com/meshbed/meshbed/datapath/state"
	"github.com/meshbed/meshbed/internal/testenv"
)

var (
	xwing  = netip.MustParseAddr("10.1.0.5")
	rebel2 = netip.MustParseAddr("10.2.0.7")
	vip    = netip.MustParseAddr("10.96.0.10")
	node2  = netip.MustParseAddr("192.168.2.1")
)

type fakeResolver struct{}

func (fakeResolver) LookupIP(ip netip.Addr) (Endpoint, bool) {
	switch ip {
	case xwing:
		return Endpoint{Cluster: "cluster1", Namespace: "default", Pod: "x-wing-1", Identity: 1<<16 | 300}, true
	case rebel2:
		return Endpoint{Cluster: "cluster2", Namespace: "default", Pod: "rebel-base-2"}, true
	}
	return Endpoint{}, false
}

func (fakeResolver) ClusterName(id uint32) string {
	return map[uint32]string{1: "cluster1", 2: "cluster2"}[id]
}

func (fakeResolver) IdentityLabels(id uint32) []string {
	if id == 2<<16|400 {
		return []string{"k8s:app=rebel-base", "k8s:io.kubernetes.pod.namespace=default"}
	}
	return nil
}

func crossCluster() monitor.Event {
	return monitor.Event{
		Time: time.Unix(100, 0), Verdict: monitor.Forwarded, Reason: monitor.ReasonForwardedTunnel,
		Point: monitor.FromContainer, New: true, Tunnel: monitor.TunnelTx, Protocol: state.TCP,
		Source: netip.AddrPortFrom(xwing, 40000), Destination: netip.AddrPortFrom(rebel2, 80),
		Frontend: netip.AddrPortFrom(vip, 80), Service: "default/rebel-base", BackendCluster: 2,
		SourceIdentity: 1<<16 | 300, DestinationIdentity: 2<<16 | 400, SourceCluster: 1, DestinationCluster: 2,
		TunnelEndpoint: node2,
	}
}

func TestEnrich(t *testing.T) {
	f := Enrich(crossCluster(), fakeResolver{}, "cluster1", "node-0")
	if f.Source.Name() != "default/x-wing-1" || f.Source.Cluster != "cluster1" || f.Source.Port != 40000 {
		t.Errorf("source %+v", f.Source)
	}
	if f.Destination.Name() != "default/rebel-base-2" || f.Destination.Cluster != "cluster2" || f.Destination.Identity != 2<<16|400 {
		t.Errorf("destination %+v", f.Destination)
	}
	if len(f.Destination.Labels) != 2 {
		t.Errorf("destination labels %v", f.Destination.Labels)
	}
	if s := f.Service; s == nil || s.Namespace != "default" || s.Name != "rebel-base" || s.BackendCluster != "cluster2" {
		t.Errorf("service %+v", f.Service)
	}
	if f.Verdict != VerdictForwarded || f.DropReason != "" || f.Tunnel != "to-tunnel" || f.TunnelPeer != node2 || !f.New {
		t.Errorf("flow %+v", f)
	}
	if f.Node != "cluster1/node-0" || !f.Time.Equal(time.Unix(100, 0)) {
		t.Errorf("observed at %s %s", f.Node, f.Time)
	}
	line := Compact(Record{Flow: &f})
	for _, part := range []string{"[cluster1/node-0]", "default/x-wing-1 (ID:65836 cluster1) 10.1.0.5:40000", "default/rebel-base-2 (ID:131472 cluster2)", "service default/rebel-base", "backend in cluster2", "to-tunnel 192.168.2.1", "FORWARDED"} {
		if !strings.Contains(line, part) {
			t.Errorf("compact %q lacks %q", line, part)
		}
	}

	drop := monitor.Event{Verdict: monitor.Dropped, Reason: monitor.ReasonPolicyEgress, Point: monitor.FromContainer,
		Protocol: state.TCP, Source: netip.AddrPortFrom(xwing, 40001), Destination: netip.AddrPortFrom(netip.MustParseAddr("8.8.8.8"), 443),
		SourceIdentity: 1<<16 | 300, DestinationIdentity: state.IdentityWorld, SourceCluster: 1}
	d := Enrich(drop, fakeResolver{}, "cluster1", "node-0")
	if d.Verdict != VerdictDropped || d.DropReason != "policy-denied-egress" || d.Destination.Cluster != "" || d.Service != nil {
		t.Errorf("drop %+v", d)
	}
	if d.Time.IsZero() {
		t.Error("drop without time")
	}
}

func TestParseRequest(t *testing.T) {
	r, err := ParseRequest(url.Values{"from-cluster": {"cluster2"}, "verdict": {"dropped"}, "to-service": {"default/rebel-base"}})
	if err != nil {
		t.Fatal(err)
	}
	if r.Verdict != VerdictDropped || r.FromCluster != "cluster2" || r.ToService != "default/rebel-base" || r.Last != DefaultLast || r.Follow {
		t.Errorf("request %+v", r)
	}
	if back, err := ParseRequest(r.Query()); err != nil || back != r {
		t.Errorf("round trip %+v, %v", back, err)
	}
	if r, _ := ParseRequest(url.Values{"follow": {"true"}}); r.Last != 0 {
		t.Errorf("follow alone sends the last %d", r.Last)
	}
	for _, tt := range []struct {
		q    url.Values
		want string
	}{
		{url.Values{"namespace": {"x"}}, `unknown filter "namespace"`},
		{url.Values{"verdict": {"DENIED"}}, `verdict "DENIED": want FORWARDED or DROPPED`},
		{url.Values{"to-service": {"rebel-base"}}, `to-service "rebel-base": want namespace/name`},
		{url.Values{"last": {"-1"}}, `last "-1"`},
		{url.Values{"follow": {"maybe"}}, `follow "maybe"`},
	} {
		_, err := ParseRequest(tt.q)
		if err == nil || !strings.Contains(err.Error(), tt.want) || strings.Contains(err.Error(), "\n") {
			t.Errorf("%v: error %v, want one line with %q", tt.q, err, tt.want)
		}
	}
}

// fakeSource hands out events from a channel and a settable lost count.
type fakeSource struct {
	events chan monitor.Event
	lost   atomic.Uint64
}

type fakeReader struct {
	src    *fakeSource
	closed chan struct{}
	once   sync.Once
}

func (s *fakeSource) Events() (monitor.Reader, error) {
	return &fakeReader{src: s, closed: make(chan struct{})}, nil
}
func (s *fakeSource) LostEvents() (uint64, error) { return s.lost.Load(), nil }

func (r *fakeReader) Read() (monitor.Event, error) {
	select {
	case ev := <-r.src.events:
		return ev, nil
	case <-r.closed:
		return monitor.Event{}, monitor.ErrReaderClosed
	}
}
func (r *fakeReader) SetDeadline(time.Time) {}
func (r *fakeReader) Close() error          { r.once.Do(func() { close(r.closed) }); return nil }

func startObserver(t *testing.T, cfg ObserverConfig) (*Observer, *fakeSource) {
	t.Helper()
	src := &fakeSource{events: make(chan monitor.Event)}
	cfg.Cluster, cfg.Node, cfg.Source, cfg.Resolver = "cluster1", "node-0", src, fakeResolver{}
	o, err := NewObserver(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- o.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
	return o, src
}

func eventAt(i int) monitor.Event {
	ev := crossCluster()
	ev.Time = time.Unix(int64(1000+i), 0)
	ev.Source = netip.AddrPortFrom(xwing, uint16(30000+i))
	return ev
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	testenv.Eventually(t, 10*time.Second, func() error {
		if !cond() {
			return fmt.Errorf("%s: not yet", what)
		}
		return nil
	})
}

func TestObserverLastAndFollow(t *testing.T) {
	o, src := startObserver(t, ObserverConfig{Capacity: 8})
	for i := range 20 {
		src.events <- eventAt(i)
	}
	eventually(t, "20 flows seen", func() bool { return o.Status().Seen == 20 })
	var got []uint16
	err := Stream(context.Background(), []*Observer{o}, Request{Last: 5}, func(r Record) error {
		got = append(got, r.Flow.Source.Port)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if want := []uint16{30015, 30016, 30017, 30018, 30019}; !equal(got, want) {
		t.Errorf("last 5: %v, want %v", got, want)
	}
	// The ring holds 8: asking for more gets the 8 most recent.
	got = nil
	_ = Stream(context.Background(), []*Observer{o}, Request{Last: 100}, func(r Record) error {
		got = append(got, r.Flow.Source.Port)
		return nil
	})
	if len(got) != 8 || got[0] != 30012 {
		t.Errorf("last 100 of a ring of 8: %v", got)
	}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	recs := make(chan Record, 10)
	go Stream(ctx, []*Observer{o}, Request{Follow: true, Filter: Filter{Verdict: VerdictDropped}}, func(r Record) error {
		recs <- r
		return nil
	})
	eventually(t, "subscribed", func() bool { o.mu.Lock(); defer o.mu.Unlock(); return len(o.subs) == 1 })
	src.events <- eventAt(20) // forwarded: filtered out
	drop := eventAt(21)
	drop.Verdict, drop.Reason = monitor.Dropped, monitor.ReasonPolicyIngress
	src.events <- drop
	select {
	case r := <-recs:
		if r.Flow == nil || r.Flow.Verdict != VerdictDropped || r.Flow.Source.Port != 30021 {
			t.Fatalf("followed %+v", r)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no followed flow")
	}
}

func equal(a, b []uint16) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// A stalled subscriber never blocks the observer: its losses are counted
// and reported to it once it reads again.
func TestObserverSlowSubscriber(t *testing.T) {
	o, src := startObserver(t, ObserverConfig{SubscriberBuffer: 4})
	_, s := o.snapshot(Filter{}, 0, true)
	defer o.unsubscribe(s)
	for i := range 50 {
		src.events <- eventAt(i) // would block here if publish waited
	}
	eventually(t, "50 flows seen", func() bool { return o.Status().Seen == 50 })
	if st := o.Status(); st.LostSubscribers != 46 {
		t.Fatalf("lost %d for a subscriber of 4 that read nothing of 50, want 46", st.LostSubscribers)
	}
	for range 4 {
		<-s.ch
	}
	src.events <- eventAt(50)
	r := <-s.ch
	if r.Lost == nil || r.Lost.Source != LostSubscriber || r.Lost.Count != 46 {
		t.Fatalf("after the stall: %+v, want a loss report of 46", r)
	}
	if r := <-s.ch; r.Flow == nil || r.Flow.Source.Port != 30050 {
		t.Fatalf("after the loss report: %+v", r)
	}
}

func TestObserverReportsDatapathLoss(t *testing.T) {
	o, src := startObserver(t, ObserverConfig{LostInterval: 10 * time.Millisecond})
	_, s := o.snapshot(Filter{}, 0, true)
	defer o.unsubscribe(s)
	eventually(t, "observer running", func() bool { return o.Status().Running })
	src.lost.Store(444)
	select {
	case r := <-s.ch:
		if r.Lost == nil || r.Lost.Source != LostDatapath || r.Lost.Count != 444 || r.Lost.Node != "cluster1/node-0" {
			t.Fatalf("record %+v, want a datapath loss of 444", r)
		}
		if !strings.Contains(Compact(r), "EVENTS LOST: datapath-ring-buffer 444") {
			t.Errorf("compact %q", Compact(r))
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no loss report")
	}
	if st := o.Status(); st.LostDatapath != 444 {
		t.Errorf("status %+v", st)
	}
}

func TestHandler(t *testing.T) {
	o, src := startObserver(t, ObserverConfig{})
	src.events <- eventAt(1)
	eventually(t, "a flow seen", func() bool { return o.Status().Seen == 1 })
	srv := httptest.NewServer(Handler(context.Background(), func(Request) ([]*Observer, error) { return []*Observer{o}, nil }))
	defer srv.Close()
	var got []Record
	if err := Get(context.Background(), srv.Client(), srv.URL, Request{Last: 10}, func(r Record) error {
		got = append(got, r)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0].Flow.Service.BackendCluster != "cluster2" {
		t.Fatalf("records %+v", got)
	}
	resp, err := http.Get(srv.URL + Path + "?bogus=1")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest {
		t.Errorf("unknown filter: status %d", resp.StatusCode)
	}
	none := httptest.NewServer(Handler(context.Background(), func(Request) ([]*Observer, error) { return nil, nil }))
	defer none.Close()
	err = Get(context.Background(), none.Client(), none.URL, Request{}, func(Record) error { return nil })
	if err == nil || err.Error() != ErrNoObserver.Error() {
		t.Errorf("no observer: %v", err)
	}
}

// A followed stream ends when its observer stops (the agent stopped).
func TestStreamEndsWithObserver(t *testing.T) {
	src := &fakeSource{events: make(chan monitor.Event)}
	o, err := NewObserver(ObserverConfig{Cluster: "c", Node: "n", Source: src, Resolver: fakeResolver{}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ran := make(chan error)
	go func() { ran <- o.Run(ctx) }()
	ended := make(chan error)
	go func() {
		ended <- Stream(context.Background(), []*Observer{o}, Request{Follow: true}, func(Record) error { return nil })
	}()
	eventually(t, "subscribed", func() bool { o.mu.Lock(); defer o.mu.Unlock(); return len(o.subs) == 1 })
	cancel()
	if err := <-ran; err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-ended:
		if !errors.Is(err, ErrObserverStopped) {
			t.Fatalf("stream ended with %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("stream still open after its observer stopped")
	}
}
