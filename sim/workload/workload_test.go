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
