// Package apiserver is the mesh-apiserver: one per cluster, it runs an
// embedded, ephemeral etcd, exports the cluster's state into it from the
// cluster's Kubernetes API, and serves it to the other clusters of the mesh
// over mTLS, read-only.
//
// What it writes (docs/wire.md), all on one lease through a
// kvstore.Writer, and all rewritten on every start:
//
//	cilium/cluster-config/<cluster>               {"id":N,"capabilities":{"syncedCanaries":true,"cached":false,"maxConnectedClusters":M}}
//	cilium/.heartbeat                             RFC 3339 time, every HeartbeatInterval
//	cilium/state/nodes/v1/<cluster>/<node>        every Node
//	cilium/state/services/v1/<cluster>/<ns>/<n>   every global and shared Service
//	cilium/state/ip/v1/default/<ip>               every pod IP (not host network)
//	cilium/state/identities/v1/id/<id>            every identity of the cluster (package identity)
//	cilium/synced/<cluster>/cilium/state/<r>/v1   per resource, after its initial keys
//
// Identities are allocated in the cluster's Kubernetes API (package
// identity) for the label set of every pod, so they survive restarts of this
// ephemeral etcd.
//
// The cluster-config says cached=false even when kvstoremesh runs: the flag
// tells a reader where THIS cluster's data lies, and it lies under
// cilium/state/. kvstoremesh writes cached=true on the copies of remote
// cluster-configs it puts into this etcd.
//
// # Access
//
// Clients authenticate with a client certificate issued by the mesh CA; its
// common name is the etcd user. Users are named per cluster (see mesh/pki:
// admin-<cluster>, local-<cluster>, kvstoremesh-<cluster>,
// remote-<reader>), and an apiserver knows only its own cluster's admin,
// local and kvstoremesh users and the remote users of the clusters allowed
// to read it, so a certificate of another cluster is refused. Remote readers
// may read cilium/state/, this cluster's config and canaries and the
// heartbeat, nothing else; a client without a valid certificate fails the
// TLS handshake.
//
// # Network namespaces
//
// Start binds every listener (the TLS client listener on ListenAddress, the
// unused peer listener, and a unix socket for local clients) on the calling
// goroutine's OS thread. To serve inside a network namespace, call Start
// from a goroutine locked (runtime.LockOSThread) into that namespace; once
// Start returns, the sockets belong to it and Run may be called from any
// goroutine. The apiserver's own client, and an in-process kvstoremesh
// (Client), use a unix socket (LocalSocket), which does not depend on the
// namespace.
//
// # kvstoremesh
//
// kvstoremesh (mirroring remote clusters into cilium/cache/) runs alongside:
// give it Client() as its local etcd. LocalConfig, Endpoints and the TLS
// directory are exposed for other clients.
package apiserver

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"sync"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/meshbed/meshbed/mesh/event"
	"github.com/meshbed/meshbed/mesh/identity"
	"github.com/meshbed/meshbed/mesh/kvstore"
	"github.com/meshbed/meshbed/mesh/pki"
	"github.com/meshbed/meshbed/mesh/wire"
)

// Defaults of Config.
const (
	DefaultHeartbeatInterval = 5 * time.Second
	DefaultTickMs            = 100
	DefaultElectionMs        = 1000
	DefaultStartTimeout      = 30 * time.Second
	// DefaultListenAddress is where the binary's etcd listens for clients.
	DefaultListenAddress = "0.0.0.0:2379"
	// DefaultConfigPollInterval is how often the binary rescans its
	// clustermesh config directory for the remote readers' users.
	DefaultConfigPollInterval = 10 * time.Second
)

// DefaultPrometheusServeAddr is the meshbed-apiserver binary's
// --prometheus-serve-addr: empty, metrics not served (the Kind manifests
// set :9963).
const DefaultPrometheusServeAddr = ""

// DefaultConfig is the mesh-apiserver's configuration before the
// environment (names, clients, TLS and data directories, remote readers,
// logger) is filled in. The meshbed-apiserver binary takes its flags'
// defaults from it and the simulator starts every apiserver from it, so the
// two cannot drift apart; New itself still fills in zero values.
func DefaultConfig() Config {
	return Config{
		MaxConnectedClusters:     wire.MaxConnectedClusters255,
		ListenAddress:            DefaultListenAddress,
		HeartbeatInterval:        DefaultHeartbeatInterval,
		TickMs:                   DefaultTickMs,
		ElectionMs:               DefaultElectionMs,
		StartTimeout:             DefaultStartTimeout,
		LeaseTTL:                 kvstore.DefaultLeaseTTL,
		IdentityGCInterval:       identity.DefaultGCInterval,
		IdentityHeartbeatTimeout: identity.DefaultHeartbeatTimeout,
	}
}

// Config of a Server.
type Config struct {
	// ClusterName and ClusterID identify the cluster (wire rules: name
	// [a-z0-9-]{1,32}, ID 1..MaxConnectedClusters).
	ClusterName string
	ClusterID   uint32
	// MaxConnectedClusters is 255 or 511; zero means 255.
	MaxConnectedClusters uint32

	// Kube is the cluster's Kubernetes API; Dynamic the same API for the
	// MeshIdentity custom resources. Both work with the client-go fakes.
	Kube    kubernetes.Interface
	Dynamic dynamic.Interface

	// ListenAddress is host:port of the etcd client listener (TLS); port 0
	// picks a free port (see Endpoints).
	ListenAddress string
	// TLSDir holds ca.crt, server.crt/.key (the etcd server certificate,
	// valid for localhost and the listen address) and admin.crt/.key (a
	// client certificate for pki.AdminUser(ClusterName)). pki.IssueServerTLS
	// writes them.
	TLSDir pki.Dir
	// DataDir is where etcd keeps its data and socket; empty means a new
	// temporary directory, removed by Close. A given directory is wiped on
	// Start: the store is ephemeral. Keep the path short: it holds a unix
	// socket (at most 108 bytes).
	DataDir string

	// RemoteClusters may read this cluster from the start (users
	// remote-<name>); SetRemoteClusters changes the set later.
	RemoteClusters []string

	// HeartbeatInterval between rewrites of cilium/.heartbeat; zero means
	// DefaultHeartbeatInterval.
	HeartbeatInterval time.Duration
	// LeaseTTL of every key; zero means kvstore.DefaultLeaseTTL.
	LeaseTTL time.Duration
	// TickMs and ElectionMs are etcd's raft timings; zero means 100 and
	// 1000. The simulator lowers them for a faster start.
	TickMs, ElectionMs uint
	// StartTimeout bounds the start of etcd; zero means 30 s.
	StartTimeout time.Duration

	// IdentityGCInterval is how often identities no pod uses are looked
	// for, IdentityHeartbeatTimeout how long one must stay unused before
	// it is deleted (and so withdrawn from the export and every remote
	// cache); zero means identity.DefaultGCInterval and
	// identity.DefaultHeartbeatTimeout (15 and 30 minutes, as Cilium's).
	IdentityGCInterval, IdentityHeartbeatTimeout time.Duration

	// Logger receives diagnostics; nil discards them.
	Logger *slog.Logger
	// Events receives the apiserver's life cycle: ComponentStarted once
	// Start has etcd serving, ComponentStopped when Close stops it. The
	// caller scopes it to its cluster and component; nil discards them.
	Events event.Recorder
	// Metrics, when set, receives the apiserver's metrics:
	// cilium_clustermesh_apiserver_kvstore_operations_duration_seconds for
	// the etcd calls of its export (scope "local").
	Metrics prometheus.Registerer
}

// Server is a mesh-apiserver.
type Server struct {
	cfg     Config
	logger  *slog.Logger
	dataDir string
	tempDir bool

	mu       sync.Mutex
	etcd     *embed.Etcd
	root     *kvstore.Client
	endpoint string
	closed   bool

	writer *kvstore.Writer
	ids    *identity.Cache
	alloc  *identity.Allocator
	synced chan struct{}
	ops    *kvstore.Operations
}

// New checks cfg and returns a Server; nothing runs until Start.
func New(cfg Config) (*Server, error) {
	if err := wire.ValidateClusterName(cfg.ClusterName); err != nil {
		return nil, fmt.Errorf("mesh-apiserver: %w", err)
	}
	if cfg.MaxConnectedClusters == 0 {
		cfg.MaxConnectedClusters = wire.MaxConnectedClusters255
	}
	if err := wire.ValidateClusterID(cfg.ClusterID, cfg.MaxConnectedClusters); err != nil {
		return nil, fmt.Errorf("mesh-apiserver of cluster %q: %w", cfg.ClusterName, err)
	}
	if cfg.Kube == nil || cfg.Dynamic == nil {
		return nil, fmt.Errorf("mesh-apiserver of cluster %q: no Kubernetes client", cfg.ClusterName)
	}
	if _, _, err := net.SplitHostPort(cfg.ListenAddress); err != nil {
		return nil, fmt.Errorf("mesh-apiserver of cluster %q: listen address %q: %w", cfg.ClusterName, cfg.ListenAddress, err)
	}
	if cfg.TLSDir == "" {
		return nil, fmt.Errorf("mesh-apiserver of cluster %q: no TLS directory", cfg.ClusterName)
	}
	for _, r := range cfg.RemoteClusters {
		if err := wire.ValidateClusterName(r); err != nil {
			return nil, fmt.Errorf("mesh-apiserver of cluster %q: remote cluster: %w", cfg.ClusterName, err)
		}
	}
	if cfg.HeartbeatInterval <= 0 {
		cfg.HeartbeatInterval = DefaultHeartbeatInterval
	}
	if cfg.TickMs == 0 {
		cfg.TickMs = DefaultTickMs
	}
	if cfg.ElectionMs == 0 {
		cfg.ElectionMs = DefaultElectionMs
	}
	if cfg.StartTimeout <= 0 {
		cfg.StartTimeout = DefaultStartTimeout
	}
	logger := cfg.Logger
	if logger == nil {
		logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	ids, err := identity.NewCache(cfg.Dynamic, identity.Config{
		Cluster:              cfg.ClusterName,
		ClusterID:            cfg.ClusterID,
		MaxConnectedClusters: cfg.MaxConnectedClusters,
		Logger:               logger,
	})
	if err != nil {
		return nil, fmt.Errorf("mesh-apiserver: %w", err)
	}
	cfg.Events = event.OrDiscard(cfg.Events)
	ops, err := kvstore.NewOperations(cfg.Metrics, "cilium_clustermesh_apiserver_kvstore_operations_duration_seconds")
	if err != nil {
		return nil, fmt.Errorf("mesh-apiserver: metrics: %w", err)
	}
	return &Server{
		ops:    ops,
		cfg:    cfg,
		logger: logger,
		ids:    ids,
		alloc:  identity.NewAllocator(cfg.Dynamic, ids),
		synced: make(chan struct{}),
	}, nil
}

// Start starts etcd, creates its users and enables auth, and connects the
// apiserver's own client. It binds the listeners in the calling thread's
// network namespace (see the package documentation). ctx bounds the start
// only; what Start starts runs until Close. On error, everything started is
// stopped again.
func (s *Server) Start(ctx context.Context) (err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.etcd != nil || s.closed {
		return errors.New("mesh-apiserver: Start called twice")
	}
	if err := s.prepareDataDir(); err != nil {
		return err
	}
	defer func() {
		if err != nil {
			s.stopLocked()
		}
	}()
	s.etcd, err = s.startEtcd()
	if err != nil {
		return fmt.Errorf("mesh-apiserver of cluster %q: %w", s.cfg.ClusterName, err)
	}
	for _, l := range s.etcd.Clients {
		if l.Addr().Network() == "tcp" {
			s.endpoint = "https://" + l.Addr().String()
		}
	}
	rootTLS, err := s.clientTLS(pki.AdminPair)
	if err != nil {
		return fmt.Errorf("mesh-apiserver of cluster %q: %w", s.cfg.ClusterName, err)
	}
	lc := s.LocalConfig(rootTLS)
	lc.Logger = s.logger
	lc.DialOptions = append(lc.DialOptions, s.ops.DialOption("local"))
	// The client lives until Close, not until ctx (which only bounds the
	// start).
	s.root, err = kvstore.Connect(context.WithoutCancel(ctx), lc)
	if err != nil {
		return fmt.Errorf("mesh-apiserver of cluster %q: %w", s.cfg.ClusterName, err)
	}
	actx, cancel := context.WithTimeout(ctx, s.cfg.StartTimeout)
	defer cancel()
	if err := s.bootstrapAuth(actx, s.root.Etcd()); err != nil {
		return fmt.Errorf("mesh-apiserver of cluster %q: %w", s.cfg.ClusterName, err)
	}
	s.writer = kvstore.NewWriter(s.root, kvstore.WriterConfig{LeaseTTL: s.cfg.LeaseTTL})
	s.cfg.Events.Record(event.Event{Kind: event.ComponentStarted, Message: "mesh-apiserver started, etcd serving at " + s.endpoint})
	return nil
}

func (s *Server) prepareDataDir() error {
	if s.cfg.DataDir == "" {
		d, err := os.MkdirTemp("", "meshbed-apiserver-")
		if err != nil {
			return fmt.Errorf("mesh-apiserver: data dir: %w", err)
		}
		s.dataDir, s.tempDir = d, true
		return nil
	}
	// Ephemeral: a previous run's data must not come back.
	if err := os.RemoveAll(s.cfg.DataDir); err != nil {
		return fmt.Errorf("mesh-apiserver: wipe data dir: %w", err)
	}
	if err := os.MkdirAll(s.cfg.DataDir, 0o700); err != nil {
		return fmt.Errorf("mesh-apiserver: data dir: %w", err)
	}
	s.dataDir = s.cfg.DataDir
	return nil
}

// clientTLS is the client configuration of user's pair in the TLS dir, for
// connections through the local socket.
func (s *Server) clientTLS(user string) (*tls.Config, error) {
	roots, err := s.cfg.TLSDir.Pool()
	if err != nil {
		return nil, err
	}
	pair, err := s.cfg.TLSDir.LoadCert(user)
	if err != nil {
		return nil, err
	}
	return pki.ClientTLSConfig(roots, pair, localServerName), nil
}

// Run exports the cluster's state until ctx is done, then returns nil. It
// must follow a successful Start, and is called once. Close stops etcd
// afterwards.
func (s *Server) Run(ctx context.Context) error {
	s.mu.Lock()
	w := s.writer
	s.mu.Unlock()
	if w == nil {
		return errors.New("mesh-apiserver: Run before Start")
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	var werr error
	wg.Go(func() {
		if werr = w.Run(ctx); werr != nil {
			werr = fmt.Errorf("mesh-apiserver of cluster %q: kvstore writer: %w", s.cfg.ClusterName, werr)
			cancel()
		}
	})
	s.writeClusterConfig()
	wg.Go(func() { s.heartbeat(ctx) })
	err := newExporter(s).run(ctx)
	cancel()
	wg.Wait()
	return errors.Join(err, werr)
}

// Synced is closed once every initial key is enqueued and the canaries are
// requested (the Writer commits them after the keys).
func (s *Server) Synced() <-chan struct{} { return s.synced }

// Flush blocks until every write requested so far is committed.
func (s *Server) Flush(ctx context.Context) error { return s.writer.Flush(ctx) }

func (s *Server) writeClusterConfig() {
	cc := wire.ClusterConfig{
		ID: s.cfg.ClusterID,
		Capabilities: wire.Capabilities{
			SyncedCanaries:       true,
			Cached:               false,
			MaxConnectedClusters: s.cfg.MaxConnectedClusters,
		},
	}
	s.writer.Upsert(wire.ClusterConfigKey(s.cfg.ClusterName), mustJSON(cc))
}

func (s *Server) heartbeat(ctx context.Context) {
	t := time.NewTicker(s.cfg.HeartbeatInterval)
	defer t.Stop()
	for {
		s.writer.Upsert(wire.HeartbeatKey, []byte(wire.Timestamp(time.Now())))
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// Close stops etcd and removes a temporary data directory. Stop Run first.
func (s *Server) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	running := s.etcd != nil
	err := s.stopLocked()
	if running {
		s.cfg.Events.Record(event.Event{Kind: event.ComponentStopped, Message: "mesh-apiserver stopped with its etcd"})
	}
	return err
}

func (s *Server) stopLocked() error {
	var errs []error
	if s.root != nil {
		if err := s.root.Close(); err != nil {
			errs = append(errs, err)
		}
		s.root = nil
	}
	if s.etcd != nil {
		s.etcd.Close()
		<-s.etcd.Server.StopNotify()
		s.etcd = nil
	}
	if s.tempDir && s.dataDir != "" {
		if err := os.RemoveAll(s.dataDir); err != nil {
			errs = append(errs, fmt.Errorf("remove data dir: %w", err))
		}
		s.dataDir = ""
	}
	return errors.Join(errs...)
}

// Endpoints are the etcd client URLs for remote clusters and agents:
// "https://<host>:<port>" with the port actually bound. With a wildcard
// listen host (0.0.0.0) the URL names the wildcard; others must then be
// told the address they reach the apiserver at (a Service, a node IP).
func (s *Server) Endpoints() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.endpoint == "" {
		return nil
	}
	return []string{s.endpoint}
}

// LocalSocket is the path of the unix socket etcd also serves on (TLS, same
// users), for clients on the same host whatever their network namespace.
func (s *Server) LocalSocket() string { return s.socketPath() }

// localEndpoint names the local socket to the etcd client; LocalDialer
// ignores the address. (The etcd client's own unix endpoints do not dial
// with this gRPC version.)
const localEndpoint = "https://" + localServerName + ":0"

// LocalDialer dials the local socket, whatever address it is asked for.
func (s *Server) LocalDialer() func(ctx context.Context, addr string) (net.Conn, error) {
	path := s.socketPath()
	return func(ctx context.Context, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", path)
	}
}

// LocalConfig is a kvstore configuration that reaches this etcd through
// the local socket, presenting the client certificate in tlsConfig (see
// pki.ClientTLSConfig; its ServerName is set to "localhost", which server
// certificates from pki.IssueServerTLS carry).
func (s *Server) LocalConfig(tlsConfig *tls.Config) kvstore.Config {
	tc := tlsConfig.Clone()
	tc.ServerName = localServerName
	return kvstore.Config{
		Endpoints: []string{localEndpoint},
		TLS:       tc,
		Dialer:    s.LocalDialer(),
	}
}

// Client is the apiserver's own etcd client, authenticated as the
// cluster's admin (etcd's root role) over the local socket. An in-process kvstoremesh uses it as its local etcd. It is
// closed by Close.
func (s *Server) Client() *kvstore.Client {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.root
}

// TLSDir is the directory with the CA and the apiserver's pairs.
func (s *Server) TLSDir() pki.Dir { return s.cfg.TLSDir }

// Identities is the cluster's identity cache (running while Run runs).
func (s *Server) Identities() *identity.Cache { return s.ids }

// ClusterName is the cluster's name.
func (s *Server) ClusterName() string { return s.cfg.ClusterName }

// ClientConfig is how a client of the mesh-apiserver that runs in a
// process of its own (kvstoremesh in its own Deployment on Kind) reaches
// the apiserver's etcd at endpoint ("https://host:port"): with the CA and
// client pair pair of dir, checking the server name that every
// mesh-apiserver certificate carries, whatever address it is dialled at.
func ClientConfig(dir pki.Dir, pair, endpoint string) (kvstore.Config, error) {
	roots, err := dir.Pool()
	if err != nil {
		return kvstore.Config{}, err
	}
	cert, err := dir.LoadCert(pair)
	if err != nil {
		return kvstore.Config{}, err
	}
	return kvstore.Config{
		Endpoints: []string{endpoint},
		TLS:       pki.ClientTLSConfig(roots, cert, localServerName),
	}, nil
}
