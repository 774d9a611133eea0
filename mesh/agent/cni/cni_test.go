package cni

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// fakeBackend is an agent that hands out addresses in order and records
// what it was asked.
type fakeBackend struct {
	mu       sync.Mutex
	eps      map[Pod]Endpoint
	next     netip.Addr
	calls    []string
	notReady error
	failAdd  error
	// addGate, when set, blocks Add until closed.
	addGate chan struct{}
}

func newFakeBackend() *fakeBackend {
	return &fakeBackend{eps: map[Pod]Endpoint{}, next: netip.MustParseAddr("10.10.1.10")}
}

func (b *fakeBackend) Add(ctx context.Context, req AddRequest) (Endpoint, error) {
	if b.addGate != nil {
		select {
		case <-b.addGate:
		case <-ctx.Done():
			return Endpoint{}, ctx.Err()
		}
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	p := Pod{req.Namespace, req.Pod}
	b.calls = append(b.calls, "add "+p.String()+" "+req.NetNS)
	if b.failAdd != nil {
		return Endpoint{}, b.failAdd
	}
	if ep, ok := b.eps[p]; ok {
		return ep, nil
	}
	ep := Endpoint{Namespace: p.Namespace, Pod: p.Name, IP: b.next, Gateway: netip.MustParseAddr("169.254.1.1"),
		HostInterface: "lxc" + b.next.String(), PodInterface: req.IfName}
	b.next = b.next.Next()
	b.eps[p] = ep
	return ep, nil
}

func (b *fakeBackend) Delete(_ context.Context, p Pod) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.calls = append(b.calls, "delete "+p.String())
	delete(b.eps, p)
	return nil
}

func (b *fakeBackend) Lookup(p Pod) (Endpoint, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	ep, ok := b.eps[p]
	return ep, ok
}

func (b *fakeBackend) Ready() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.notReady
}

func (b *fakeBackend) callLog() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]string(nil), b.calls...)
}

// serve runs a Server for b on a fresh unix socket and returns a client.
func serve(t *testing.T, b Backend) (*Client, string) {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "run", "cni.sock")
	l, err := Listen(sock)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- NewServer(b, slog.New(slog.NewTextHandler(t.Output(), nil))).Serve(ctx, l) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return NewClient(sock), sock
}

func addReq(container, netns string) AddRequest {
	return AddRequest{ContainerID: container, NetNS: netns, IfName: "eth0", Namespace: "default", Pod: "x-wing"}
}

func TestSandboxLifecycle(t *testing.T) {
	b := newFakeBackend()
	c, _ := serve(t, b)
	ctx := t.Context()
	pod := Pod{"default", "x-wing"}

	ep1, err := c.Add(ctx, addReq("sandbox-1", "/var/run/netns/cni-1"))
	if err != nil {
		t.Fatal(err)
	}
	if ep1.IP != netip.MustParseAddr("10.10.1.10") || ep1.PodInterface != "eth0" {
		t.Errorf("first ADD: %+v", ep1)
	}
	steps := []struct {
		name     string
		do       func() (Endpoint, error)
		wantIP   string // "" for no endpoint
		wantErr  error
		wantCall string // the backend's last call after the step
	}{
		{"retried ADD of the same sandbox returns the same endpoint", func() (Endpoint, error) {
			return c.Add(ctx, addReq("sandbox-1", "/var/run/netns/cni-1"))
		}, "10.10.1.10", nil, "add default/x-wing /var/run/netns/cni-1"},
		{"CHECK of the owner", func() (Endpoint, error) { return c.Get(ctx, pod, "sandbox-1") }, "10.10.1.10", nil, "add default/x-wing /var/run/netns/cni-1"},
		{"ADD of a new sandbox replaces the endpoint", func() (Endpoint, error) {
			return c.Add(ctx, addReq("sandbox-2", "/var/run/netns/cni-2"))
		}, "10.10.1.11", nil, "add default/x-wing /var/run/netns/cni-2"},
		{"CHECK of the replaced sandbox fails", func() (Endpoint, error) { return c.Get(ctx, pod, "sandbox-1") }, "", ErrNotFound, "add default/x-wing /var/run/netns/cni-2"},
		{"late DEL of the replaced sandbox is ignored", func() (Endpoint, error) {
			return Endpoint{}, c.Delete(ctx, pod, "sandbox-1")
		}, "", nil, "add default/x-wing /var/run/netns/cni-2"},
		{"the new sandbox keeps its endpoint", func() (Endpoint, error) { return c.Get(ctx, pod, "sandbox-2") }, "10.10.1.11", nil, "add default/x-wing /var/run/netns/cni-2"},
		{"DEL of the owner deletes", func() (Endpoint, error) { return Endpoint{}, c.Delete(ctx, pod, "sandbox-2") }, "", nil, "delete default/x-wing"},
		{"CHECK after DEL", func() (Endpoint, error) { return c.Get(ctx, pod, "sandbox-2") }, "", ErrNotFound, "delete default/x-wing"},
		{"DEL again is not an error", func() (Endpoint, error) { return Endpoint{}, c.Delete(ctx, pod, "sandbox-2") }, "", nil, "delete default/x-wing"},
	}
	for _, s := range steps {
		ep, err := s.do()
		if s.wantErr != nil {
			if !errors.Is(err, s.wantErr) {
				t.Fatalf("%s: error %v, want %v", s.name, err, s.wantErr)
			}
		} else if err != nil {
			t.Fatalf("%s: %v", s.name, err)
		}
		if s.wantIP != "" && ep.IP.String() != s.wantIP {
			t.Fatalf("%s: IP %s, want %s", s.name, ep.IP, s.wantIP)
		}
		calls := b.callLog()
		if last := calls[len(calls)-1]; last != s.wantCall {
			t.Fatalf("%s: backend's last call %q, want %q (all: %q)", s.name, last, s.wantCall, calls)
		}
	}
}

// TestAddAfterRestart: the agent restarted (the server knows no owner) and
// still has the endpoint: a new ADD must not return an interface that lives
// in another namespace.
func TestAddAfterRestart(t *testing.T) {
	b := newFakeBackend()
	b.eps[Pod{"default", "x-wing"}] = Endpoint{IP: netip.MustParseAddr("10.10.1.99")}
	c, _ := serve(t, b)
	ep, err := c.Add(t.Context(), addReq("sandbox-9", "/var/run/netns/cni-9"))
	if err != nil {
		t.Fatal(err)
	}
	if ep.IP.String() != "10.10.1.10" {
		t.Errorf("IP %s: the restored endpoint was returned instead of a new one", ep.IP)
	}
	want := []string{"delete default/x-wing", "add default/x-wing /var/run/netns/cni-9"}
	if got := b.callLog(); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("backend calls %q, want %q", got, want)
	}
}

func TestErrors(t *testing.T) {
	b := newFakeBackend()
	c, sock := serve(t, b)
	ctx := t.Context()

	if _, err := c.Add(ctx, AddRequest{ContainerID: "x", NetNS: "/n", IfName: "eth0", Namespace: "default"}); !errors.Is(err, &Error{Code: CodeInvalidEnvironment}) {
		t.Errorf("ADD without pod: %v, want code %d", err, CodeInvalidEnvironment)
	}
	b.failAdd = errors.New("pod CIDR exhausted")
	_, err := c.Add(ctx, addReq("s", "/n"))
	var e *Error
	if !errors.As(err, &e) || e.Code != CodeAgent || !bytes.Contains([]byte(e.Msg), []byte("pod CIDR exhausted")) {
		t.Errorf("failing ADD: %v, want code %d with the agent's reason", err, CodeAgent)
	}
	b.failAdd = nil

	if err := c.Health(ctx); err != nil {
		t.Errorf("health: %v", err)
	}
	b.mu.Lock()
	b.notReady = errors.New("datapath not programmed")
	b.mu.Unlock()
	if err := c.Health(ctx); !errors.Is(err, &Error{Code: CodeTryAgainLater}) {
		t.Errorf("health of an agent that is not ready: %v", err)
	}

	gone := NewClient(sock + ".absent")
	if _, err := gone.Add(ctx, addReq("s", "/n")); !errors.Is(err, &Error{Code: CodeTryAgainLater}) {
		t.Errorf("ADD without agent: %v, want code %d (try again later)", err, CodeTryAgainLater)
	}
}

// TestConcurrentAddsOfOnePod: two ADDs of the same sandbox in flight at
// once end with one endpoint, created once.
func TestConcurrentAddsOfOnePod(t *testing.T) {
	b := newFakeBackend()
	b.addGate = make(chan struct{})
	c, _ := serve(t, b)
	var wg sync.WaitGroup
	ips := make([]netip.Addr, 2)
	errs := make([]error, 2)
	for i := range 2 {
		wg.Go(func() {
			var ep Endpoint
			ep, errs[i] = c.Add(t.Context(), addReq("s", "/n"))
			ips[i] = ep.IP
		})
	}
	time.AfterFunc(50*time.Millisecond, func() { close(b.addGate) })
	wg.Wait()
	if errs[0] != nil || errs[1] != nil || ips[0] != ips[1] {
		t.Errorf("ADDs: %v %v, IPs %s %s", errs[0], errs[1], ips[0], ips[1])
	}
	if calls := b.callLog(); len(calls) != 1 {
		t.Errorf("backend calls %q, want one add", calls)
	}
}

func TestListen(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "a", "cni.sock")
	l, err := Listen(sock)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(sock)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("socket mode %v, want 0600", fi.Mode().Perm())
	}
	// A socket left by a previous agent (here: still bound, which a dead
	// agent's is not) is replaced.
	l2, err := Listen(sock)
	if err != nil {
		t.Fatalf("replace stale socket: %v", err)
	}
	l2.Close()
	l.Close()

	file := filepath.Join(dir, "file")
	if err := os.WriteFile(file, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Listen(file); err == nil {
		t.Error("Listen replaced a regular file")
	}
}

// FuzzAddRequest feeds arbitrary bodies to the ADD handler: it must answer
// 200 only for a complete request and never fail otherwise than with a
// CNI error.
func FuzzAddRequest(f *testing.F) {
	f.Add([]byte(`{"containerID":"c","netns":"/n","ifName":"eth0","namespace":"default","pod":"p"}`))
	f.Add([]byte(`{"containerID":"c","netns":"/n","ifName":"eth0","namespace":"default","pod":"p","extra":1}`))
	f.Add([]byte(`{"containerID":"c"}{}`))
	f.Add([]byte(`[]`))
	h := NewServer(newFakeBackend(), nil).Handler()
	f.Fuzz(func(t *testing.T, body []byte) {
		w := httptest.NewRecorder()
		h.ServeHTTP(w, httptest.NewRequest(http.MethodPost, "/v1/endpoints", bytes.NewReader(body)))
		var req AddRequest
		valid := decodeStrict(body, &req) == nil && req.Validate() == nil
		if (w.Code == http.StatusOK) != valid {
			t.Fatalf("status %d for %q (valid %v): %s", w.Code, body, valid, w.Body)
		}
		if w.Code != http.StatusOK {
			var e Error
			if err := decodeStrict(w.Body.Bytes(), &e); err != nil || e.Code == 0 || e.Msg == "" {
				t.Fatalf("error body %q is not a CNI error: %v", w.Body, err)
			}
		}
	})
}

// BenchmarkAddOverSocket is the protocol's cost per pod: one ADD from a
// fresh client (the plugin is a new process per sandbox, so no connection
// is reused) through the unix socket to a backend that does no work.
func BenchmarkAddOverSocket(b *testing.B) {
	be := newFakeBackend()
	sock := filepath.Join(b.TempDir(), "cni.sock")
	l, err := Listen(sock)
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- NewServer(be, nil).Serve(ctx, l) }()
	defer func() {
		cancel()
		<-done
	}()
	i := 0
	for b.Loop() {
		i++
		req := AddRequest{ContainerID: fmt.Sprint(i), NetNS: "/n", IfName: "eth0", Namespace: "default", Pod: fmt.Sprint("p", i)}
		if _, err := NewClient(sock).Add(ctx, req); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(b.N), "µs/add")
}
