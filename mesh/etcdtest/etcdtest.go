// Package etcdtest starts a real, embedded, single-member etcd for tests:
// temporary data dir, loopback random ports, election timings tuned for
// speed, its own logs discarded.
//
// Clients reach it through a small TCP relay on a fixed loopback port, which
// lets a test act on the connection the way the network or a crash would:
// Stop drops every connection at once and refuses new ones (a dead server),
// Partition silently stops delivering bytes while keeping connections open
// (a black hole) until Heal, and Restart brings a new etcd with a fresh data
// dir behind the same address, which is exactly what a restarting ephemeral
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
	tb testing.TB
	// addr is the relay's stable listen address, what clients dial.
	addr string

	// backendURL and peerURL are etcd's own listen addresses, kept across
	// restarts so that Client (which bypasses the relay) keeps working.
	backendURL, peerURL url.URL

	mu         sync.Mutex
	etcd       *embed.Etcd
	listener   net.Listener
	conns      map[*relayConn]struct{}
	partition  chan struct{} // closed on Heal; nil when not partitioned
	client     *clientv3.Client
	generation int
	wg         sync.WaitGroup
}

// Start starts an etcd for tb and stops it when tb ends.
func Start(tb testing.TB) *Server {
	tb.Helper()
	s := &Server{tb: tb, conns: make(map[*relayConn]struct{})}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatalf("listen: %v", err)
	}
	s.addr = l.Addr().String()
	for attempt := 0; ; attempt++ {
		if s.backendURL, err = localURL(); err == nil {
			s.peerURL, err = localURL()
		}
		if err == nil {
			err = s.startEtcd()
		}
		if err == nil || attempt == 4 {
			break
		}
	}
	if err != nil {
		l.Close()
		tb.Fatalf("start etcd: %v", err)
	}
	s.serve(l)
	tb.Cleanup(func() {
		s.mu.Lock()
		c := s.client
		s.client = nil
		s.mu.Unlock()
		if c != nil {
			c.Close()
		}
		s.Heal()
		s.Stop()
		s.wg.Wait()
	})
	return s
}

func localURL() (url.URL, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return url.URL{}, err
	}
	defer l.Close()
	return url.URL{Scheme: "http", Host: l.Addr().String()}, nil
}

// startEtcd starts a fresh etcd with an empty data dir.
func (s *Server) startEtcd() error {
	clientURL, peerURL := s.backendURL, s.peerURL
	s.mu.Lock()
	s.generation++
	gen := s.generation
	s.mu.Unlock()
	cfg := embed.NewConfig()
	cfg.Name = "etcdtest"
	cfg.Dir = s.tb.TempDir()
	cfg.ListenClientUrls = []url.URL{clientURL}
	cfg.AdvertiseClientUrls = []url.URL{clientURL}
	cfg.ListenPeerUrls = []url.URL{peerURL}
	cfg.AdvertisePeerUrls = []url.URL{peerURL}
	cfg.InitialCluster = cfg.Name + "=" + peerURL.String()
	// A new token per generation makes every restart a new cluster, as a
	// fresh ephemeral etcd is.
	cfg.InitialClusterToken = fmt.Sprintf("etcdtest-%d", gen)
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
		return fmt.Errorf("start embedded etcd: %w", err)
	}
	select {
	case <-e.Server.ReadyNotify():
	case <-time.After(readyTimeout):
		e.Close()
		return fmt.Errorf("embedded etcd not ready after %v", readyTimeout)
	}
	s.mu.Lock()
	s.etcd = e
	s.mu.Unlock()
	return nil
}

// serve relays connections accepted on l to the current etcd.
func (s *Server) serve(l net.Listener) {
	s.mu.Lock()
	s.listener = l
	s.mu.Unlock()
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			s.relay(c)
		}
	}()
}

// relayConn is one client connection and its etcd side.
type relayConn struct {
	client, backend net.Conn
}

func (rc *relayConn) close() {
	rc.client.Close()
	if rc.backend != nil {
		rc.backend.Close()
	}
}

func (s *Server) relay(c net.Conn) {
	b, err := net.Dial("tcp", s.backendURL.Host)
	if err != nil {
		c.Close()
		return
	}
	rc := &relayConn{client: c, backend: b}
	s.mu.Lock()
	if s.etcd == nil {
		s.mu.Unlock()
		rc.close()
		return
	}
	s.conns[rc] = struct{}{}
	s.mu.Unlock()
	s.wg.Add(2)
	go s.pipe(rc, b, c)
	go s.pipe(rc, c, b)
}

// pipe copies src to dst, holding the bytes back while partitioned.
func (s *Server) pipe(rc *relayConn, dst, src net.Conn) {
	defer s.wg.Done()
	defer func() {
		s.mu.Lock()
		delete(s.conns, rc)
		s.mu.Unlock()
		rc.close()
	}()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			s.mu.Lock()
			heal := s.partition
			s.mu.Unlock()
			if heal != nil {
				<-heal
			}
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// Dial connects to addr (a Server's relay) without exposing the socket to
// the caller (the connection is not a syscall.Conn), so that a client
// cannot read its kernel's TCP state: a Partition is then what a black
// hole is to it, a silence. Use it as the Dialer of clients whose tests
// cut the network with Partition.
func Dial(ctx context.Context, addr string) (net.Conn, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	return opaqueConn{c}, nil
}

// opaqueConn hides the socket of a net.Conn.
type opaqueConn struct{ net.Conn }

// Endpoints are the client URLs; they stay the same across Restart.
func (s *Server) Endpoints() []string { return []string{"http://" + s.addr} }

// Addr is the client address, host:port; it stays the same across Restart.
func (s *Server) Addr() string { return s.addr }

// Client returns a plain etcd client of the server, created on first use
// and closed when the test ends. It connects to etcd directly, not through
// the relay: it sees the server's side of a Partition, which is how a test
// changes the store while its clients are cut off. It survives Restart.
func (s *Server) Client() *clientv3.Client {
	s.tb.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.client == nil {
		c, err := clientv3.New(clientv3.Config{
			Endpoints:   []string{s.backendURL.String()},
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

// Stop kills the server the way a crash does: every client connection is
// dropped at once, new ones are refused, and the data is lost.
func (s *Server) Stop() {
	s.mu.Lock()
	l, e := s.listener, s.etcd
	s.listener, s.etcd = nil, nil
	conns := make([]*relayConn, 0, len(s.conns))
	for rc := range s.conns {
		conns = append(conns, rc)
	}
	s.mu.Unlock()
	if l != nil {
		l.Close()
	}
	for _, rc := range conns {
		rc.close()
	}
	if e != nil {
		// No client stream is left, so the graceful stop is quick.
		e.Close()
		<-e.Server.StopNotify()
	}
}

// Restart stops the server if it runs and starts a new one behind the same
// address with a fresh data dir: every key, lease and revision is gone.
func (s *Server) Restart() {
	s.tb.Helper()
	s.Stop()
	// Rebind the stable addresses; a just-closed port may linger briefly.
	deadline := time.Now().Add(readyTimeout)
	for {
		err := s.startEtcd()
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			s.tb.Fatalf("restart etcd: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	for {
		l, err := net.Listen("tcp", s.addr)
		if err == nil {
			s.serve(l)
			return
		}
		if time.Now().After(deadline) {
			s.tb.Fatalf("restart etcd: listen on %s: %v", s.addr, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Running reports whether the server is started.
func (s *Server) Running() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.etcd != nil
}

// DropConnections resets every client connection while the server keeps
// running with its data, as a middlebox losing its state or a keepalive
// timeout would; clients reconnect to the same store.
func (s *Server) DropConnections() {
	s.mu.Lock()
	conns := make([]*relayConn, 0, len(s.conns))
	for rc := range s.conns {
		conns = append(conns, rc)
	}
	s.mu.Unlock()
	for _, rc := range conns {
		rc.close()
	}
}

// Partition makes the network silently drop traffic between clients and
// the server: connections stay open, nothing is delivered (new connections
// are accepted and hang too), until Heal. Bytes held back meanwhile are
// delivered on Heal, as TCP would retransmit them.
//
// The relay holds the bytes in user space, so a client's kernel still sees
// them acknowledged: to a client that asks its kernel (kvstore.Health does)
// this is a hung server, not a cut link. Clients that dial through Dial see
// only the silence, as they would behind a black hole.
func (s *Server) Partition() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.partition == nil {
		s.partition = make(chan struct{})
	}
}

// Heal ends a Partition.
func (s *Server) Heal() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.partition != nil {
		close(s.partition)
		s.partition = nil
	}
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
