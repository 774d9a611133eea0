// Package remote maintains the connections of an agent (or of kvstoremesh) to
// the remote clusters of the mesh and turns what they export into typed,
// validated events for a Sink.
//
// # Configuration
//
// A Manager watches a directory holding one file per remote cluster: the
// file name is the cluster name, the content an etcd client config in
// Cilium's format (EtcdConfig). The directory is polled (Config.PollInterval),
// files are read through symlinks, and names starting with "." are skipped,
// so the atomic "..data" symlink swap with which Kubernetes updates a mounted
// Secret is seen as a change of every file at once. A file that appears
// starts a connection; a changed file (or a change of a certificate it
// names) restarts the connection with the new settings while keeping the
// cluster's state; a removed file stops the connection and the cluster is
// forgotten (Sink.ClusterDown). A file that cannot be read or parsed is
// reported (log, ClusterStatus.ConfigErr) naming the file, and the cluster
// stays as it was.
//
// A poll costs a stat per file: a config file, or a certificate it names,
// is read (and parsed) again only when its stamp changed (device, inode,
// size, modification time, mode, taken through symlinks) or when it was
// modified so shortly before its last read that a rewrite in the same
// timestamp tick could hide.
//
// # Connection
//
// Each cluster has one etcd client (package kvstore) dialled through
// Config.Dialer when set, with mTLS from the config file and gRPC's
// reconnection backoff bounded by Config.MaxBackoff (exponential, with
// jitter). A connection runs sessions. A session reads and validates
// cilium/cluster-config/<cluster> (ID in range and not the local ID,
// maxConnectedClusters equal to the local one, ID not used by another
// connected cluster: a duplicate is rejected with an error naming both
// clusters and retried with jittered backoff), announces the cluster
// (Sink.ClusterUp), and then runs one kvstore.Reader per resource
// (identities, nodes, ip, services), each waiting for its sync canary. With
// capabilities.cached=false the readers watch the cluster's own
// cilium/state/... prefixes; with cached=true (the cluster-config that
// kvstoremesh writes into the local etcd, which is then what the config file
// points at) they watch cilium/cache/<resource>/v1/<cluster>/. Every value
// is decoded with package wire against its key, the cluster's name and ID;
// an invalid value is logged, counted (ClusterStatus.Rejected) and never
// applied, and a good value it would replace stays in force until a good
// value or a delete replaces it.
//
// A session starts with every known entry marked stale; when a reader has
// listed its prefix, what is still stale is deleted. So a session after a
// loss, a remote restart with changed state, or a changed config leaves no
// stale entry behind.
//
// # Reachability (loss and recovery)
//
// A cluster is reported reachable (Sink.Reachable) when its services have
// been listed by a session started after the last loss and the loss detector
// is content; it is reported unreachable as soon as the detector fires (and
// while its cluster-config fails validation). A session restarted for a
// changed config file is not a loss: the cluster stays reachable while the
// new session resyncs. Identities, ipcache entries,
// nodes and services are all KEPT while a cluster is unreachable: the
// consumer decides (the agent withdraws the cluster's backends, or keeps
// them in fail-static mode, and keeps identities and ipcache entries so
// established flows and policy keep working). A loss ends the session; the
// next one relists everything, so the cluster is reported reachable again
// only after its services have been resynced from scratch: there is no
// window with stale or missing backends.
//
// The detector depends on where the cluster's data is read:
//
//   - Directly from the remote cluster's etcd: a kvstore.Health probe on the
//     connection. A loss is reported once the connection was silent for
//     HealthTimeout (2 s by default), at most kvstore.HealthConfig.Bound
//     after it happens (2.85 s by default), below the mesh's 3 s bound.
//     Time in which this process itself could not run (a CPU-starved
//     machine, a stop-the-world pause; kvstore.Watchdog) is not silence of
//     the connection, up to HealthConfig.MaxDiscount.
//     Any answer on the connection (the readers' watch events included)
//     counts as proof of life, not only the probe's: on a CPU-starved
//     machine a probe may take longer than its timeout while the cluster's
//     events keep arriving, and a false loss would cost a full relist.
//
//   - Through kvstoremesh (cached=true): the agent's connection is to its
//     local etcd, which stays up when a remote cluster is lost, so
//     kvstoremesh carries the loss (and the health probe, which would only
//     probe the local etcd, is stopped). The contract, which kvstoremesh
//     implements:
//
//     1. kvstoremesh writes cilium/cluster-config/<remote> with cached=true,
//     the cache under cilium/cache/<resource>/v1/<remote>/, and each sync
//     canary cilium/synced/<remote>/cilium/cache/<resource>/v1 once the
//     initial copy of that resource is complete (CanaryKey with cached).
//     2. When kvstoremesh loses <remote> (its own Manager reports
//     Reachable(remote, false)), it DELETES the services canary
//     cilium/synced/<remote>/cilium/cache/services/v1 at once, and only it:
//     the cache itself and the other canaries stay, so agents keep
//     identities, ipcache entries and nodes.
//     3. When <remote> is back, kvstoremesh resyncs its cache (writes new and
//     changed keys, deletes the stale ones) and only then writes the services
//     canary again. Reachable(remote, true) from its Manager is exactly that
//     moment: it is reported after the services resync, stale deletions
//     included, has been delivered.
//
//     The agent treats a deletion of the services canary observed on a live
//     watch as a loss (reported within milliseconds, so the end-to-end bound
//     is kvstoremesh's detection bound plus a watch round trip). A canary
//     that is merely absent when the agent (re)connects to its local etcd is
//     not a loss by itself: the local mesh-apiserver may just have restarted
//     with an empty ephemeral etcd and kvstoremesh be refilling it. It
//     becomes one if the canary is still absent after Config.CanaryGrace.
//     Loss of the local etcd itself is not a loss of the remote clusters
//     (the data plane does not depend on it): their state is kept as it is.
//     On recovery the agent relists the cache after the canary reappears
//     (its readers wait for it), so it reports the cluster reachable after
//     kvstoremesh's resync and its own.
//
// # Start-up
//
// Sink.ClusterConfigured is called for every cluster found in the directory
// before connecting to it, Sink.ServicesSynced once per cluster after its
// first services sync. Manager.ServicesSynced is closed once every cluster
// configured at start has synced its services, or Config.SyncTimeout after
// Run started, whichever comes first: the agent must not prune backends
// before.
//
// # kvstoremesh
//
// kvstoremesh uses a Manager like an agent does (its config files point at
// the remote clusters' own etcd). A Sink that also implements RawSink
// additionally receives every accepted value as read (key and bytes, so the
// cache copy is byte-for-byte the source), the validated cluster-config,
// and a call after every (re)sync of each resource, which is when it may
// write that resource's canary.
package remote

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"

	"github.com/meshbed/meshbed/mesh/event"
	"github.com/meshbed/meshbed/mesh/wire"
)

// Sink receives the state of remote clusters. Calls for one cluster are
// serialized and in order; calls for different clusters may be concurrent.
// Methods must not block for long and must not call back into the Manager.
// The method set equals the agent's RemoteSink.
type Sink interface {
	// ClusterConfigured announces a cluster found in the config directory,
	// before connecting to it.
	ClusterConfigured(cluster string)
	// ClusterUp announces a cluster whose cluster-config was validated; it
	// is called again if the ID changes.
	ClusterUp(cluster string, clusterID uint32)
	// ClusterDown: the cluster's config file was removed; forget it and
	// everything it exported.
	ClusterDown(cluster string)
	// Reachable reports a change of reachability (see the package doc).
	Reachable(cluster string, reachable bool)
	// ServicesSynced: the cluster's services finished their first sync.
	ServicesSynced(cluster string)

	UpsertService(cluster string, svc *wire.ClusterService)
	DeleteService(cluster, namespace, name string)
	UpsertNode(cluster string, node *wire.Node)
	DeleteNode(cluster, name string)
	// UpsertIPCache and DeleteIPCache: a CIDR entry is deleted by its
	// prefix's address.
	UpsertIPCache(cluster string, pair *wire.IPIdentityPair)
	DeleteIPCache(cluster string, ip netip.Addr)
	UpsertIdentity(cluster string, id uint32, labels wire.Labels)
	DeleteIdentity(cluster string, id uint32)
}

// RawSink is implemented in addition to Sink by consumers that copy the
// remote state as it is (kvstoremesh). Raw calls come right before the
// typed call of the same change, from the same goroutine.
type RawSink interface {
	// ClusterConfig is the validated cluster-config of a session.
	ClusterConfig(cluster string, cfg wire.ClusterConfig)
	// UpsertRaw delivers an accepted value under its key in the store read
	// (a cilium/state/... key when reading the cluster directly).
	UpsertRaw(cluster string, r wire.Resource, key string, value []byte)
	// DeleteRaw removes a key previously given to UpsertRaw.
	DeleteRaw(cluster string, r wire.Resource, key string)
	// Synced: the resource's keys of the cluster are complete: called after
	// the first list of every session (initial, after a loss, after a config
	// change), stale deletions delivered. (Resyncs the reader does on its own
	// after a transport reconnect do not repeat it.)
	Synced(cluster string, r wire.Resource)
}

// Defaults of Config.
const (
	DefaultPollInterval = time.Second
	DefaultCanaryGrace  = 5 * time.Second
	DefaultSyncTimeout  = 30 * time.Second
	DefaultMinBackoff   = 100 * time.Millisecond
	DefaultMaxBackoff   = 2 * time.Second
)

// Config of a Manager.
type Config struct {
	// ClusterName and ClusterID are the local cluster's; a remote with the
	// same name or ID is rejected.
	ClusterName string
	ClusterID   uint32
	// MaxConnectedClusters of the mesh (255 or 511; zero means 255); every
	// remote must announce the same.
	MaxConnectedClusters uint32

	// Dir is the config directory (one file per remote cluster). A missing
	// directory is an empty one.
	Dir string
	// PollInterval is how often Dir is scanned; zero means 1 s.
	PollInterval time.Duration

	// Dialer, when set, opens every connection to a remote etcd (the
	// simulator dials from inside a node's network namespace).
	Dialer func(ctx context.Context, addr string) (net.Conn, error)

	// HealthInterval and HealthTimeout bound loss detection on direct
	// connections: a loss is reported within kvstore.HealthConfig.Bound.
	// Zero means the kvstore defaults (0.5 s and 2 s).
	HealthInterval, HealthTimeout time.Duration
	// CanaryGrace is how long an absent services canary found on
	// (re)connecting to a kvstoremesh cache is tolerated before the cluster
	// counts as lost; zero means 5 s.
	CanaryGrace time.Duration
	// SyncTimeout bounds ServicesSynced; zero means 30 s.
	SyncTimeout time.Duration
	// MinBackoff and MaxBackoff bound the jittered exponential backoff of
	// session retries and of gRPC reconnects; zero means 100 ms and 2 s.
	MinBackoff, MaxBackoff time.Duration
	// KeepAliveTime, KeepAliveTimeout and RequestTimeout are passed to
	// kvstore.Config (zero means its defaults).
	KeepAliveTime, KeepAliveTimeout, RequestTimeout time.Duration

	// Logger receives diagnostics (rejected values, connection changes);
	// nil discards them.
	Logger *slog.Logger
	// Metrics, when set, receives the Manager's metrics (see metrics.go):
	// Cilium's cilium_<MetricsSubsystem>_remote_cluster* series and
	// cilium_kvstore_operations_duration_seconds, and meshbed's loss
	// detection and propagation lag. MetricsSubsystem is "clustermesh"
	// (an agent, the default) or "kvstoremesh"; SourceNode names the node
	// of an agent (Cilium's source_node_name label).
	Metrics          prometheus.Registerer
	MetricsSubsystem string
	SourceNode       string

	// Events receives the Manager's decisions: event.RemoteLost when a
	// cluster that was reachable becomes unreachable, event.RemoteRestored
	// when a lost cluster is reachable again (its state resynced). The
	// caller scopes it to its cluster, node and component (event.Scope);
	// nil discards them.
	Events event.Recorder

	// dialOptions are added to every remote connection's gRPC options;
	// tests use it to slow chosen calls down.
	dialOptions []grpc.DialOption
}

// ClusterStatus is a snapshot of one remote cluster, for status commands
// and tests.
type ClusterStatus struct {
	Name string
	// ConfigErr is the error of the last read of the cluster's config file
	// (nil when it was fine). A cluster with a ConfigErr keeps running with
	// its previous config, if it had one.
	ConfigErr error
	// Running: a connection is configured.
	Running bool
	// ID and Cached are from the last validated cluster-config.
	ID     uint32
	Cached bool
	// Up: the cluster-config of the current session was validated.
	Up        bool
	Reachable bool
	// ServicesSynced: services synced at least once.
	ServicesSynced bool
	// Sessions started on the current connection (1 + resyncs after loss,
	// config changes and errors).
	Sessions int
	// LastErr is the last connection or validation error (nil once a
	// session got its services synced).
	LastErr error
	// Rejected counts the remote values that failed validation (each is
	// logged; none was applied).
	Rejected int
	// Since is when Reachable last changed.
	Since time.Time
	// Failures counts the losses and failed sessions of the cluster since
	// it was configured; LastFailure is when the last one happened.
	Failures    int
	LastFailure time.Time
	// Entries counts the accepted entries per resource (nodes, services,
	// identities, ip: the endpoints).
	Entries map[wire.Resource]int
}

// Manager runs the connections to every configured remote cluster.
type Manager struct {
	cfg    Config
	logger *slog.Logger

	mu         sync.Mutex
	sink       Sink
	raw        RawSink
	clusters   map[string]*cluster
	configErrs map[string]error
	ids        map[uint32]string // claimed cluster IDs
	pending    map[string]bool   // clusters ServicesSynced waits for
	scanned    bool
	synced     chan struct{}
	syncedDone bool

	// files caches the config directory between polls; owned by Run.
	files *configFiles

	metrics *metrics // never nil; its parts are no-ops without a registry

	connMu sync.Mutex
	conns  map[[sha256.Size]byte]*sharedConn // by config fingerprint
}

// New returns a Manager; it does nothing until Run.
func New(cfg Config) (*Manager, error) {
	if cfg.MaxConnectedClusters == 0 {
		cfg.MaxConnectedClusters = wire.MaxConnectedClusters255
	}
	if err := wire.ValidateClusterName(cfg.ClusterName); err != nil {
		return nil, fmt.Errorf("remote clusters: local %w", err)
	}
	if err := wire.ValidateClusterID(cfg.ClusterID, cfg.MaxConnectedClusters); err != nil {
		return nil, fmt.Errorf("remote clusters: local %w", err)
	}
	if cfg.Dir == "" {
		return nil, errors.New("remote clusters: no config directory")
	}
	if cfg.PollInterval <= 0 {
		cfg.PollInterval = DefaultPollInterval
	}
	if cfg.CanaryGrace <= 0 {
		cfg.CanaryGrace = DefaultCanaryGrace
	}
	if cfg.SyncTimeout <= 0 {
		cfg.SyncTimeout = DefaultSyncTimeout
	}
	if cfg.MinBackoff <= 0 {
		cfg.MinBackoff = DefaultMinBackoff
	}
	if cfg.MaxBackoff < cfg.MinBackoff {
		cfg.MaxBackoff = max(DefaultMaxBackoff, cfg.MinBackoff)
	}
	logger := cfg.Logger
	if logger == nil {
		logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	cfg.Events = event.OrDiscard(cfg.Events)
	if cfg.MetricsSubsystem == "" {
		cfg.MetricsSubsystem = "clustermesh"
	}
	m := &Manager{
		cfg:        cfg,
		logger:     logger,
		clusters:   map[string]*cluster{},
		configErrs: map[string]error{},
		ids:        map[uint32]string{},
		pending:    map[string]bool{},
		synced:     make(chan struct{}),
		files:      newConfigFiles(),
		conns:      map[[sha256.Size]byte]*sharedConn{},
	}
	var err error
	if m.metrics, err = newMetrics(m, cfg.Metrics); err != nil {
		return nil, fmt.Errorf("remote clusters: metrics: %w", err)
	}
	return m, nil
}

// Run watches the config directory and runs the connections until ctx is
// done; it then stops every connection and returns nil. Run must be called
// once.
func (m *Manager) Run(ctx context.Context, sink Sink) error {
	m.mu.Lock()
	m.sink = sink
	m.raw, _ = sink.(RawSink)
	m.mu.Unlock()

	syncTimer := time.AfterFunc(m.cfg.SyncTimeout, func() {
		m.mu.Lock()
		defer m.mu.Unlock()
		if !m.syncedDone {
			pending := slices.Sorted(maps.Keys(m.pending))
			m.logger.Warn("Remote services did not sync in time", "timeout", m.cfg.SyncTimeout, "pending", pending)
			m.closeSyncedLocked()
		}
	})
	defer syncTimer.Stop()

	ticker := time.NewTicker(m.cfg.PollInterval)
	defer ticker.Stop()
	for {
		m.scan(ctx)
		select {
		case <-ctx.Done():
			m.mu.Lock()
			all := make([]*cluster, 0, len(m.clusters))
			for _, c := range m.clusters {
				all = append(all, c)
			}
			m.mu.Unlock()
			for _, c := range all {
				c.stop()
			}
			return nil
		case <-ticker.C:
		}
	}
}

// ServicesSynced is closed when every cluster configured at start has
// synced its services, or SyncTimeout after Run started.
func (m *Manager) ServicesSynced() <-chan struct{} { return m.synced }

// Status returns every configured cluster (and every file that failed to
// load), sorted by name.
func (m *Manager) Status() []ClusterStatus {
	m.mu.Lock()
	names := map[string]bool{}
	for n := range m.clusters {
		names[n] = true
	}
	for n := range m.configErrs {
		names[n] = true
	}
	clusters := make(map[string]*cluster, len(m.clusters))
	for n, c := range m.clusters {
		clusters[n] = c
	}
	errs := make(map[string]error, len(m.configErrs))
	for n, e := range m.configErrs {
		errs[n] = e
	}
	m.mu.Unlock()

	out := make([]ClusterStatus, 0, len(names))
	for _, n := range slices.Sorted(maps.Keys(names)) {
		st := ClusterStatus{Name: n}
		if c := clusters[n]; c != nil {
			st = c.status()
		}
		st.ConfigErr = errs[n]
		out = append(out, st)
	}
	return out
}

// scan reads the directory once and reconciles the clusters to it.
func (m *Manager) scan(ctx context.Context) {
	found, errs, err := m.readConfigs()
	if err != nil {
		m.logger.Error("Cannot read remote cluster config directory", "dir", m.cfg.Dir, "error", err)
		return // keep everything as it is
	}
	m.reconcile(ctx, found, errs)
}

// readConfigs reads the directory: the config of every cluster file (nil
// for a file that exists but cannot be loaded: its cluster is kept) and the
// error of every file at fault. err is set only when the directory itself
// cannot be read (a missing one is empty).
func (m *Manager) readConfigs() (found map[string]*loadedConfig, errs map[string]error, err error) {
	found, errs = map[string]*loadedConfig{}, map[string]error{}
	entries, err := os.ReadDir(m.cfg.Dir)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, nil, err
	}
	m.files.beginPoll()
	defer m.files.endPoll()
	for _, e := range entries {
		name := e.Name()
		if strings.HasPrefix(name, ".") {
			continue // hidden files and Kubernetes' ..data links
		}
		path := m.cfg.Dir + string(os.PathSeparator) + name
		st := m.files.stat(path) // follows symlinks
		if st.fi == nil || st.fi.IsDir() {
			continue
		}
		if err := wire.ValidateClusterName(name); err != nil {
			errs[name] = fmt.Errorf("config file %s: %w: file name must be the cluster name: %w", path, ErrInvalidConfig, err)
			continue
		}
		if name == m.cfg.ClusterName {
			errs[name] = fmt.Errorf("config file %s: %w: names the local cluster %q", path, ErrInvalidConfig, name)
			continue
		}
		lc, err := m.files.load(m.cfg.Dir, path)
		if err != nil {
			errs[name] = fmt.Errorf("config file: %w", err)
			// A file that exists but cannot be loaded keeps its cluster.
			found[name] = nil
			continue
		}
		found[name] = lc
	}
	return found, errs, nil
}

// reconcile starts, restarts and stops clusters to match what readConfigs
// found.
func (m *Manager) reconcile(ctx context.Context, found map[string]*loadedConfig, errs map[string]error) {
	m.mu.Lock()
	for name, err := range errs {
		if prev := m.configErrs[name]; prev == nil || prev.Error() != err.Error() {
			m.logger.Error("Invalid remote cluster config; cluster left as it was", "remote", name, "error", err)
		}
	}
	m.configErrs = errs
	var start, stop []*cluster
	var restart []struct {
		c  *cluster
		lc *loadedConfig
	}
	for name, lc := range found {
		c, ok := m.clusters[name]
		switch {
		case lc == nil:
		case !ok:
			c = newCluster(m, name)
			m.clusters[name] = c
			if !m.scanned {
				m.pending[name] = true
			}
			c.conf = lc
			start = append(start, c)
		case c.conf == nil || c.conf.fingerprint != lc.fingerprint:
			restart = append(restart, struct {
				c  *cluster
				lc *loadedConfig
			}{c, lc})
		}
	}
	for name, c := range m.clusters {
		if _, ok := found[name]; !ok {
			delete(m.clusters, name)
			delete(m.pending, name)
			stop = append(stop, c)
		}
	}
	firstScan := !m.scanned
	m.scanned = true
	if firstScan || len(stop) > 0 {
		m.checkSyncedLocked()
	}
	sink := m.sink
	m.mu.Unlock()

	for _, c := range stop {
		m.logger.Info("Remote cluster removed from config", "remote", c.name)
		c.stop()
		c.forget()
		sink.ClusterDown(c.name)
	}
	slices.SortFunc(start, func(a, b *cluster) int { return strings.Compare(a.name, b.name) })
	for _, c := range start {
		m.logger.Info("Remote cluster configured", "remote", c.name, "endpoints", c.conf.etcd.Endpoints)
		sink.ClusterConfigured(c.name)
		c.start(ctx, c.conf)
	}
	for _, r := range restart {
		m.logger.Info("Remote cluster config changed; reconnecting", "remote", r.c.name, "endpoints", r.lc.etcd.Endpoints)
		r.c.stop()
		r.c.start(ctx, r.lc)
	}
}

// claimID registers id for cluster, failing with an error naming both
// clusters if another connected cluster holds it. A cluster's previous ID,
// if different, is released.
func (m *Manager) claimID(name string, id uint32) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if other, ok := m.ids[id]; ok && other != name {
		return fmt.Errorf("cluster %q: cluster ID %d is already used by cluster %q", name, id, other)
	}
	for oid, n := range m.ids {
		if n == name && oid != id {
			delete(m.ids, oid)
		}
	}
	m.ids[id] = name
	return nil
}

func (m *Manager) releaseID(name string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for id, n := range m.ids {
		if n == name {
			delete(m.ids, id)
		}
	}
}

// servicesSynced records the first services sync of a cluster.
func (m *Manager) servicesSynced(name string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.pending, name)
	m.checkSyncedLocked()
}

func (m *Manager) checkSyncedLocked() {
	if m.scanned && len(m.pending) == 0 {
		m.closeSyncedLocked()
	}
}

func (m *Manager) closeSyncedLocked() {
	if !m.syncedDone {
		m.syncedDone = true
		close(m.synced)
	}
}
