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
