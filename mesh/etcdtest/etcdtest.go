// Package etcdtest starts a real, embedded, single-member etcd for tests:
// temporary data dir, loopback random ports, election timings tuned for
// speed, its own logs discarded. Restart brings it back on the same ports
// with a fresh data dir, which is exactly what a restarting ephemeral
// mesh-apiserver does to its clients: same address, every key gone.
package etcdtest

import (
	"context"
	"fmt"
	"net"
	"net/url"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
)

// Timings tuned for a single member on loopback: it elects itself in tens
// of milliseconds instead of a second.
const (
	tickMs     = 10
	electionMs = 50
	// readyTimeout bounds start-up; a slow shared CI machine needs margin.
	readyTimeout = 20 * time.Second
)

// Server is an embedded etcd for one test.
type Server struct {
	tb         testing.TB
	clientURL  url.URL
	peerURL    url.URL
	mu         sync.Mutex
	etcd       *embed.Etcd
	client     *clientv3.Client
	generation int
}

// Start starts an etcd for tb and stops it when tb ends.
func Start(tb testing.TB) *Server {
	tb.Helper()
	s := &Server{tb: tb}
	var err error
	for attempt := 0; attempt < 5; attempt++ {
		s.clientURL, s.peerURL = freeURL(tb), freeURL(tb)
		if err = s.start(); err == nil {
			break
		}
	}
	if err != nil {
		tb.Fatalf("start etcd: %v", err)
	}
	tb.Cleanup(func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		if s.client != nil {
			s.client.Close()
			s.client = nil
		}
		s.stopLocked()
	})
	return s
}

// freeURL reserves a loopback port by binding and releasing it. The port
// is then kept across restarts, so clients reconnect to the same address.
func freeURL(tb testing.TB) url.URL {
	tb.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatalf("reserve port: %v", err)
	}
	defer l.Close()
	return url.URL{Scheme: "http", Host: l.Addr().String()}
}

func (s *Server) start() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.etcd != nil {
		return nil
	}
	s.generation++
	cfg := embed.NewConfig()
	cfg.Name = "etcdtest"
	cfg.Dir = s.tb.TempDir()
	cfg.ListenClientUrls = []url.URL{s.clientURL}
	cfg.AdvertiseClientUrls = []url.URL{s.clientURL}
	cfg.ListenPeerUrls = []url.URL{s.peerURL}
	cfg.AdvertisePeerUrls = []url.URL{s.peerURL}
	cfg.InitialCluster = cfg.Name + "=" + s.peerURL.String()
	// A new token per generation makes every restart a new cluster, as a
	// fresh ephemeral etcd is.
	cfg.InitialClusterToken = fmt.Sprintf("etcdtest-%d", s.generation)
	cfg.TickMs = tickMs
	cfg.ElectionMs = electionMs
	cfg.UnsafeNoFsync = true
	cfg.Logger = "zap"
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop())
	// Let clients ping often (the default minimum is 5 s), so tests may use
	// short keepalives.
	cfg.GRPCKeepAliveMinTime = 100 * time.Millisecond
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return fmt.Errorf("start embedded etcd on %s: %w", s.clientURL.Host, err)
	}
	select {
	case <-e.Server.ReadyNotify():
	case <-time.After(readyTimeout):
		e.Close()
		return fmt.Errorf("embedded etcd on %s not ready after %v", s.clientURL.Host, readyTimeout)
	}
	s.etcd = e
	return nil
}

func (s *Server) stopLocked() {
	if s.etcd == nil {
		return
	}
	s.etcd.Close()
	<-s.etcd.Server.StopNotify()
	s.etcd = nil
}

// Endpoints are the client URLs; they stay the same across Restart.
func (s *Server) Endpoints() []string { return []string{s.clientURL.String()} }

// Addr is the client listen address, host:port.
func (s *Server) Addr() string { return s.clientURL.Host }

// Client returns a plain etcd client of the server, created on first use
// and closed when the test ends. It survives Restart (it reconnects).
func (s *Server) Client() *clientv3.Client {
	s.tb.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.client == nil {
		c, err := clientv3.New(clientv3.Config{
			Endpoints:   s.Endpoints(),
			DialTimeout: 5 * time.Second,
			Logger:      zap.NewNop(),
		})
		if err != nil {
			s.tb.Fatalf("etcd client: %v", err)
		}
		s.client = c
	}
	return s.client
}

// Stop stops the server; its clients see connection errors until Restart.
func (s *Server) Stop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.stopLocked()
}

// Restart stops the server if it runs and starts it again on the same ports
// with a fresh data dir: every key, lease and revision is gone.
func (s *Server) Restart() {
	s.tb.Helper()
	s.Stop()
	// The old listener's port may linger briefly; retry the bind.
	var err error
	deadline := time.Now().Add(readyTimeout)
	for {
		if err = s.start(); err == nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err != nil {
		s.tb.Fatalf("restart etcd: %v", err)
	}
}

// Running reports whether the server is started.
func (s *Server) Running() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.etcd != nil
}

// Compact compacts the store at its current revision, so that watches
// resuming from an older revision get ErrCompacted.
func (s *Server) Compact(ctx context.Context) (revision int64, err error) {
	c := s.Client()
	resp, err := c.Get(ctx, "compact-probe")
	if err != nil {
		return 0, fmt.Errorf("read revision: %w", err)
	}
	rev := resp.Header.Revision
	if _, err := c.Compact(ctx, rev, clientv3.WithCompactPhysical()); err != nil {
		return 0, fmt.Errorf("compact at %d: %w", rev, err)
	}
	return rev, nil
}
