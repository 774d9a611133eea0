// Package workload holds the simulator's built-in pod behaviours: an echo
// server that answers every request with its cluster's name (the seed
// demo's rebel-base), and an HTTP client that makes real TCP requests from
// inside a pod's network namespace (the seed demo's x-wing running curl).
package workload

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"
)

// IsEcho reports whether a container image gets the echo server: meshbed/echo
// or cilium/json-mock, with any registry prefix and any tag or digest.
func IsEcho(image string) bool {
	name := image
	if i := strings.IndexByte(name, '@'); i >= 0 {
		name = name[:i]
	}
	if i := strings.LastIndexByte(name, ':'); i > strings.LastIndexByte(name, '/') {
		name = name[:i]
	}
	return name == "meshbed/echo" || strings.HasSuffix(name, "/meshbed/echo") ||
		name == "cilium/json-mock" || strings.HasSuffix(name, "/cilium/json-mock")
}

// Answer is the echo server's reply body.
type Answer struct {
	Galaxy  string `json:"Galaxy"`
	Cluster string `json:"Cluster"`
	Pod     string `json:"Pod"`
	Node    string `json:"Node"`
	Port    int    `json:"Port"`
}

// Echo serves Answer on every listener until Close. Drain is its graceful
// end (SIGTERM): it keeps answering until nothing is in flight.
type Echo struct {
	servers []*http.Server
	done    chan error

	closeOnce sync.Once
	closeErr  error
	closed    chan struct{}

	mu      sync.Mutex
	open    int           // accepted connections not yet closed
	last    time.Time     // when a connection last opened or closed
	changed chan struct{} // a token after every change of open
}

// ServeEcho answers on each listener (one per declared container port).
func ServeEcho(cluster, node, pod string, listeners []net.Listener) *Echo {
	e := &Echo{
		done:    make(chan error, len(listeners)),
		closed:  make(chan struct{}),
		last:    time.Now(),
		changed: make(chan struct{}, 1),
	}
	for _, ln := range listeners {
		port := 0
		if a, ok := ln.Addr().(*net.TCPAddr); ok {
			port = a.Port
		}
		body, _ := json.Marshal(Answer{Galaxy: "Alderaan", Cluster: cluster, Pod: pod, Node: node, Port: port})
		srv := &http.Server{
			Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
				w.Header().Set("Content-Type", "application/json")
				_, _ = w.Write(body)
			}),
			ReadHeaderTimeout: 5 * time.Second,
			ConnState:         e.track,
		}
		e.servers = append(e.servers, srv)
		go func() {
			if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				e.done <- err
				return
			}
			e.done <- nil
		}()
	}
	return e
}

func (e *Echo) track(_ net.Conn, st http.ConnState) {
	e.mu.Lock()
	switch st {
	case http.StateNew:
		e.open++
	case http.StateClosed, http.StateHijacked:
		e.open--
	default:
		e.mu.Unlock()
		return
	}
	e.last = time.Now()
	e.mu.Unlock()
	select {
	case e.changed <- struct{}{}:
	default:
	}
}

// Drain is the server's answer to SIGTERM: it stops keeping connections
// alive (idle ones are closed) but keeps accepting and answering, because
// clients whose load balancer has not yet seen the pod go still send new
// connections to it. It returns nil once no connection is open and none
// has opened or closed for quiet — the load balancers have moved on — or
// ctx's error when ctx ends first (the grace period is over). A server
// idle for quiet already returns at once. Close follows either way.
func (e *Echo) Drain(ctx context.Context, quiet time.Duration) error {
	for _, s := range e.servers {
		s.SetKeepAlivesEnabled(false)
	}
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		e.mu.Lock()
		open, idle := e.open, time.Since(e.last)
		e.mu.Unlock()
		if open == 0 && idle >= quiet {
			return nil
		}
		timer.Stop()
		if open == 0 {
			timer.Reset(quiet - idle)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("drain: %d connections still open: %w", open, ctx.Err())
		case <-e.closed:
			return nil
		case <-e.changed:
		case <-timer.C:
		}
	}
}

// Close stops the servers and drops their connections. It may be called
// more than once, also while Drain runs (Drain then returns).
func (e *Echo) Close() error {
	e.closeOnce.Do(func() {
		var errs []error
		for _, s := range e.servers {
			errs = append(errs, s.Close())
		}
		for range e.servers {
			errs = append(errs, <-e.done)
		}
		e.closeErr = errors.Join(errs...)
		close(e.closed)
	})
	return e.closeErr
}

// DialFunc dials from inside a pod.
type DialFunc func(ctx context.Context, network, addr string) (net.Conn, error)

// Result is one request's outcome.
type Result struct {
	Start    time.Time
	Duration time.Duration
	// Cluster is the answering cluster, empty when the request failed.
	Cluster string
	Pod     string
	Node    string
	Err     error
}

// Client makes sequential requests like `curl`, a new TCP connection each
// time (so that every request is a new load-balancing decision).
type Client struct {
	http *http.Client
}

// NewClient returns a client that dials through dial.
func NewClient(dial DialFunc, timeout time.Duration) *Client {
	tr := &http.Transport{
		// The transport lets a dial outlive its request; bound it by the
		// request timeout, or a SYN that a policy or partition drops keeps
		// retrying for minutes (on a thread inside the pod's namespace).
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			ctx, cancel := context.WithTimeout(ctx, timeout)
			defer cancel()
			return dial(ctx, network, addr)
		},
		DisableKeepAlives: true,
		Proxy:             nil,
	}
	return &Client{http: &http.Client{Transport: tr, Timeout: timeout}}
}

// Get requests url (whose host is already an IP) and reports who answered.
func (c *Client) Get(ctx context.Context, url string) (r Result) {
	r = Result{Start: time.Now()}
	defer func() { r.Duration = time.Since(r.Start) }()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		r.Err = err
		return r
	}
	resp, err := c.http.Do(req)
	if err != nil {
		r.Err = err
		return r
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<16))
	if err != nil {
		r.Err = err
		return r
	}
	if resp.StatusCode != http.StatusOK {
		r.Err = fmt.Errorf("HTTP %d", resp.StatusCode)
		return r
	}
	var a Answer
	if err := json.Unmarshal(body, &a); err != nil || a.Cluster == "" {
		r.Err = fmt.Errorf("answer is not an echo reply: %q", truncate(string(body), 80))
		return r
	}
	r.Cluster, r.Pod, r.Node = a.Cluster, a.Pod, a.Node
	return r
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}
