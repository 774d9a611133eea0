package workload

import (
	"context"
	"net"
	"testing"
	"time"
)

func TestIsEcho(t *testing.T) {
	for image, want := range map[string]bool{
		"meshbed/echo":                      true,
		"docker.io/cilium/json-mock:v1.3":   true,
		"quay.io/cilium/json-mock@sha256:1": true,
		"localhost:5000/meshbed/echo:dev":   true,
		"cilium/json-mock-extra":            false,
		"docker.io/tgraf/netperf":           false,
		"busybox":                           false,
	} {
		if got := IsEcho(image); got != want {
			t.Errorf("IsEcho(%q) = %v, want %v", image, got, want)
		}
	}
}

// Loopback only: the netns path is exercised by the simulator's tests.
func TestEchoAndClient(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	e := ServeEcho("cluster1", "node-1", "rebel-base-abc", []net.Listener{ln})
	var d net.Dialer
	c := NewClient(d.DialContext, time.Second)
	r := c.Get(t.Context(), "http://"+ln.Addr().String()+"/")
	if r.Err != nil || r.Cluster != "cluster1" || r.Pod != "rebel-base-abc" {
		t.Fatalf("Get = %+v", r)
	}
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	r = c.Get(t.Context(), "http://"+ln.Addr().String()+"/")
	if r.Err == nil {
		t.Fatalf("Get after Close succeeded: %+v", r)
	}
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if r := c.Get(ctx, "http://127.0.0.1:1/"); r.Err == nil {
		t.Fatal("Get with a cancelled context succeeded")
	}
}

// A dial that never completes is abandoned at the request timeout, not
// left running after the request (the transport detaches dials).
func TestClientBoundsDials(t *testing.T) {
	started := make(chan struct{}, 1)
	ended := make(chan struct{})
	dial := func(ctx context.Context, _, _ string) (net.Conn, error) {
		started <- struct{}{}
		<-ctx.Done()
		close(ended)
		return nil, ctx.Err()
	}
	c := NewClient(dial, 50*time.Millisecond)
	if r := c.Get(t.Context(), "http://192.0.2.1/"); r.Err == nil {
		t.Fatal("Get through a dial that never completes succeeded")
	}
	<-started
	select {
	case <-ended:
	case <-time.After(2 * time.Second):
		t.Fatal("the dial was still running 2s after the request's 50ms timeout")
	}
}

// Drain keeps answering, new connections included, until nothing has been
// open for the quiet time; an idle server drains at once; a connection
// left open holds it until ctx ends.
func TestEchoDrain(t *testing.T) {
	const quiet = 300 * time.Millisecond
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	e := ServeEcho("cluster1", "node-1", "p", []net.Listener{ln})
	defer e.Close()
	url := "http://" + ln.Addr().String() + "/"
	var d net.Dialer
	c := NewClient(d.DialContext, time.Second)
	if r := c.Get(t.Context(), url); r.Err != nil {
		t.Fatal(r.Err)
	}

	drained := make(chan error, 1)
	start := time.Now()
	go func() { drained <- e.Drain(t.Context(), quiet) }()
	// Requests keep coming for a while; every one is answered.
	var last time.Time
	for i := range 10 {
		if r := c.Get(t.Context(), url); r.Err != nil {
			t.Fatalf("request %d during drain: %v", i, r.Err)
		}
		last = time.Now()
		select {
		case err := <-drained:
			t.Fatalf("drained while requests kept coming: %v", err)
		case <-time.After(quiet / 4):
		}
	}
	if err := <-drained; err != nil {
		t.Fatal(err)
	}
	if since := time.Since(last); since < quiet-50*time.Millisecond {
		t.Errorf("drained %v after the last request, want about %v of quiet", since, quiet)
	}
	t.Logf("drained %v after it began", time.Since(start))

	// Idle for the quiet time already: at once.
	time.Sleep(quiet)
	t0 := time.Now()
	if err := e.Drain(t.Context(), quiet); err != nil || time.Since(t0) > quiet/2 {
		t.Errorf("drain of an idle server: %v after %v", err, time.Since(t0))
	}

	// An open connection holds it until ctx ends.
	conn, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		e.mu.Lock()
		open := e.open
		e.mu.Unlock()
		if open == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the server did not accept the connection: %d open", open)
		}
	}
	ctx, cancel := context.WithTimeout(t.Context(), 2*quiet)
	defer cancel()
	if err := e.Drain(ctx, quiet); err == nil {
		t.Error("drain returned nil with a connection open")
	}
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	if err := e.Drain(t.Context(), time.Hour); err != nil {
		t.Errorf("drain after Close: %v", err)
	}
}

// Result.Duration is how long Get took, failed requests included.
func TestClientDuration(t *testing.T) {
	const wait = 30 * time.Millisecond
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		time.Sleep(wait) // the slow network under test, not a synchronisation
		return nil, &net.OpError{Op: "dial", Net: network, Err: context.DeadlineExceeded}
	}
	c := NewClient(dial, time.Second)
	before := time.Now()
	r := c.Get(t.Context(), "http://192.0.2.1/")
	took := time.Since(before)
	if r.Err == nil {
		t.Fatal("Get through a failing dial succeeded")
	}
	if r.Duration < wait || r.Duration > took {
		t.Fatalf("Duration = %v, want between %v and %v (the time Get took)", r.Duration, wait, took)
	}

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	e := ServeEcho("cluster1", "node-1", "rebel-base-abc", []net.Listener{ln})
	defer e.Close()
	var d net.Dialer
	slow := func(ctx context.Context, network, addr string) (net.Conn, error) {
		time.Sleep(wait)
		return d.DialContext(ctx, network, addr)
	}
	before = time.Now()
	r = NewClient(slow, time.Second).Get(t.Context(), "http://"+ln.Addr().String()+"/")
	took = time.Since(before)
	if r.Err != nil {
		t.Fatal(r.Err)
	}
	if r.Duration < wait || r.Duration > took {
		t.Fatalf("Duration = %v, want between %v and %v (the time Get took)", r.Duration, wait, took)
	}
}
