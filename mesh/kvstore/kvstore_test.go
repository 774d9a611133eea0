package kvstore_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/meshbed/meshbed/mesh/etcdtest"
	"github.com/meshbed/meshbed/mesh/kvstore"
)

// testLogger routes the package's logs to t.Log.
func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tWriter struct{ t testing.TB }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

var _ io.Writer = tWriter{}

func connect(t testing.TB, s *etcdtest.Server) *kvstore.Client {
	t.Helper()
	c, err := kvstore.Connect(context.Background(), kvstore.Config{
		Endpoints: s.Endpoints(),
		// A Partition is a silence, as a black hole is (etcdtest.Server.Dial).
		Dialer: etcdtest.Dial,
		Logger: testLogger(t),
		// Short keepalives so that tests see transport loss quickly; the
		// test server allows them.
		KeepAliveTime:    500 * time.Millisecond,
		KeepAliveTimeout: 500 * time.Millisecond,
		RequestTimeout:   2 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// run starts fn in a goroutine bound to a context cancelled (and waited
// for) when the test ends.
func run(t testing.TB, fn func(ctx context.Context) error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := fn(ctx); err != nil {
			t.Errorf("run: %v", err)
		}
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})
}

func ctxT(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// list reads prefix from the server with a plain client.
func list(t testing.TB, s *etcdtest.Server, prefix string) map[string]string {
	t.Helper()
	resp, err := s.Client().Get(ctxT(t), prefix, clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	m := make(map[string]string)
	for _, kv := range resp.Kvs {
		m[string(kv.Key)] = string(kv.Value)
	}
	return m
}

func equalState(got, want map[string]string) error {
	if !maps.Equal(got, want) {
		return fmt.Errorf("state = %v, want %v", got, want)
	}
	return nil
}

// recorder is a Reader handler that keeps the events and the mirrored view.
type recorder struct {
	mu     sync.Mutex
	events []kvstore.Event
	view   map[string]string
	synced bool
	// block, when set, is waited on before the first event is handled;
	// blocked is closed once the handler waits on it.
	block, blocked chan struct{}
}

func newRecorder() *recorder { return &recorder{view: make(map[string]string)} }

func (r *recorder) handle(ev kvstore.Event) {
	if r.block != nil {
		close(r.blocked)
		<-r.block
		r.block = nil
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.events = append(r.events, ev)
	switch ev.Kind {
	case kvstore.EventUpsert:
		r.view[ev.Key] = string(ev.Value)
	case kvstore.EventDelete:
		if _, ok := r.view[ev.Key]; !ok {
			panic("delete of unknown key " + ev.Key)
		}
		delete(r.view, ev.Key)
	case kvstore.EventSynced:
		r.synced = true
	}
}

func (r *recorder) state() (map[string]string, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return maps.Clone(r.view), r.synced
}

func (r *recorder) eventsSince(i int) []kvstore.Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.events[i:])
}

func (r *recorder) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.events)
}

func TestDialer(t *testing.T) {
	s := etcdtest.Start(t)
	var dials atomic.Int32
	c, err := kvstore.Connect(context.Background(), kvstore.Config{
		Endpoints: s.Endpoints(),
		Dialer: func(ctx context.Context, addr string) (net.Conn, error) {
			dials.Add(1)
			var d net.Dialer
			return d.DialContext(ctx, "tcp", addr)
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Put(ctxT(t), "k", []byte("v")); err != nil {
		t.Fatal(err)
	}
	v, found, err := c.Get(ctxT(t), "k")
	if err != nil || !found || string(v) != "v" {
		t.Fatalf("Get = %q, %v, %v", v, found, err)
	}
	if dials.Load() == 0 {
		t.Error("custom dialer not used")
	}
}

func TestClientListIsDirectory(t *testing.T) {
	s := etcdtest.Start(t)
	c := connect(t, s)
	ctx := ctxT(t)
	for _, k := range []string{"p/cluster1/a", "p/cluster10/b", "p/cluster1"} {
		if err := c.Put(ctx, k, []byte("x")); err != nil {
			t.Fatal(err)
		}
	}
	kvs, _, err := c.List(ctx, "p/cluster1")
	if err != nil {
		t.Fatal(err)
	}
	if got := slices.Sorted(maps.Keys(kvs)); !slices.Equal(got, []string{"p/cluster1/a"}) {
		t.Errorf("List = %v", got)
	}
}

func TestClientListKeyPrefixIsPlain(t *testing.T) {
	s := etcdtest.Start(t)
	c := connect(t, s)
	ctx := ctxT(t)
	for _, k := range []string{"ip/10.20.1.2", "ip/10.20.2.7", "ip/10.2.0.9", "ip/10.10.1.2"} {
		if err := c.Put(ctx, k, []byte("x")); err != nil {
			t.Fatal(err)
		}
	}
	for prefix, want := range map[string][]string{
		"ip/10.20.": {"ip/10.20.1.2", "ip/10.20.2.7"},
		"ip/10.2":   {"ip/10.2.0.9", "ip/10.20.1.2", "ip/10.20.2.7"},
		"ip/10.3":   {},
	} {
		kvs, err := c.ListKeyPrefix(ctx, prefix)
		if err != nil {
			t.Fatal(err)
		}
		if got := slices.Sorted(maps.Keys(kvs)); !slices.Equal(got, want) {
			t.Errorf("ListKeyPrefix(%q) = %v, want %v", prefix, got, want)
		}
	}
}

func TestWaitKey(t *testing.T) {
	s := etcdtest.Start(t)
	c := connect(t, s)
	ctx := ctxT(t)
	got := make(chan string, 1)
	go func() {
		v, err := c.WaitKey(ctx, "canary")
		if err != nil {
			t.Error(err)
		}
		got <- string(v)
	}()
	if err := c.Put(ctx, "canary", []byte("now")); err != nil {
		t.Fatal(err)
	}
	select {
	case v := <-got:
		if v != "now" {
			t.Errorf("WaitKey = %q", v)
		}
	case <-ctx.Done():
		t.Fatal("WaitKey did not return")
	}
	short, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	defer cancel()
	if _, err := c.WaitKey(short, "missing"); err == nil {
		t.Error("WaitKey of a missing key returned no error")
	}
}
