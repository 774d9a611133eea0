// Package kvstoremesh mirrors the state of every remote cluster of the mesh
// into the local cluster's etcd, so that the agents of the local cluster
// read one etcd instead of connecting to every remote cluster themselves
// (fan-in O(clusters), not O(nodes)). It runs inside the mesh-apiserver, on
// the apiserver's own (ephemeral) etcd.
//
// For each remote cluster (one etcd client config file per cluster in
// Config.ConfigDir, the file name being the cluster name) a Mesh holds one
// connection, made and validated by a remote.Manager, and writes into the
// local etcd through a kvstore.Writer of its own (leased keys, coalesced
// bursts, batched transactions, retries; one Writer per remote, so that a
// remote's canaries wait for its own keys only and remotes are written in
// parallel):
//
//   - cilium/cluster-config/<remote>: the remote's cluster-config with
//     capabilities.cached=true (same ID and maxConnectedClusters), which
//     tells agents to read the cache;
//   - the cache: every accepted value of the remote's cilium/state/...,
//     byte for byte, under the key wire.CacheKey maps it to
//     (cilium/cache/<resource>/v1/<remote>/..., see docs/wire.md); malformed
//     values are rejected by the Manager and never copied;
//   - the sync canary cilium/synced/<remote>/cilium/cache/<resource>/v1 of
//     each resource, once the initial copy of that resource is committed
//     (the Writer writes a canary only after every operation enqueued before
//     it, and after leftovers under the resource's cache prefix are pruned).
//
// Loss and recovery follow the contract of package remote: when the
// Manager reports a remote unreachable (its connection silent for
// HealthTimeout, 2 s by default, not counting time this process itself
// could not run: kvstore.HealthConfig.Bound), the services canary is
// withdrawn at once and only it; the cache and the other canaries stay, so
// agents withdraw the remote's backends and keep its identities, ipcache
// entries and nodes. When the remote is back, the Manager relists it, the
// cache is resynced (new and changed keys written, stale ones deleted), and
// only when the Manager reports it reachable again — which it does after
// that resync has been delivered — is the services canary rewritten, behind
// the resync's writes. A services canary found in the local etcd from an
// earlier run (a local etcd that outlived kvstoremesh) is withdrawn if its
// remote is not reachable within the same bound, and left alone otherwise,
// so that a restart of kvstoremesh does not make agents flap. A remote
// whose config file is removed is drained: its cache keys, cluster-config
// and canaries are deleted.
//
// Status reports, per remote, what `clustermesh status` shows; Equal is
// the check that a cache is exactly what it must be, for tests and the
// simulator's final check. A Mesh does not log except through
// Config.Logger.
package kvstoremesh

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/meshbed/meshbed/mesh/event"
	"github.com/meshbed/meshbed/mesh/kvstore"
	"github.com/meshbed/meshbed/mesh/remote"
	"github.com/meshbed/meshbed/mesh/wire"
)

// Config of a Mesh.
type Config struct {
	// ClusterName and ClusterID are the local cluster's; a remote with the
	// same name or ID is rejected.
	ClusterName string
	ClusterID   uint32
	// MaxConnectedClusters of the mesh (255 or 511; zero means 255); every
	// remote must announce the same.
	MaxConnectedClusters uint32

	// ConfigDir holds one etcd client config per remote cluster (see
	// remote.EtcdConfig); it is polled every PollInterval.
	ConfigDir string
	// PollInterval: zero means remote.DefaultPollInterval.
	PollInterval time.Duration

	// Dialer, when set, opens every connection to a remote etcd (the
	// simulator dials from inside the apiserver's network namespace).
	Dialer func(ctx context.Context, addr string) (net.Conn, error)

	// Local is the local etcd, with rights to write everything under
	// cilium/ (the apiserver's root client). The Mesh does not close it.
	Local *kvstore.Client

	// HealthInterval and HealthTimeout bound the detection of a lost
	// remote: its services canary is withdrawn within their sum after the
	// loss. Zero means the kvstore defaults (0.5 s and 2 s).
	HealthInterval, HealthTimeout time.Duration
	// MinBackoff and MaxBackoff bound the jittered retries of remote
	// sessions and reconnects; zero means remote's defaults.
	MinBackoff, MaxBackoff time.Duration
	// KeepAliveTime, KeepAliveTimeout and RequestTimeout tune the remote
	// connections (zero means the kvstore defaults).
	KeepAliveTime, KeepAliveTimeout, RequestTimeout time.Duration
	// OrphanSweepDelay is how long after Run starts the Mesh waits before
	// deleting cache entries of clusters that are not configured
	// (leftovers of an earlier run on a persistent local etcd); zero means
	// remote.DefaultSyncTimeout.
	OrphanSweepDelay time.Duration

	// LeaseTTL of the keys written in the local etcd; zero means
	// kvstore.DefaultLeaseTTL. They outlive a restarting Mesh and vanish if
	// it is gone for good.
	LeaseTTL time.Duration

	// Logger receives diagnostics; nil discards them.
	Logger *slog.Logger
	// Events receives kvstoremesh's decisions (its remote connections'
	// RemoteLost and RemoteRestored) and its life cycle
	// (ComponentStarted when Run starts, ComponentStopped when it
	// returns), scoped by the caller to its cluster and component; nil
	// discards them.
	Events event.Recorder
	// Metrics, when set, receives kvstoremesh's metrics: those of its
	// remote connections under Cilium's cilium_kvstoremesh_* names (see
	// package remote).
	Metrics prometheus.Registerer
}

// Mesh mirrors the remote clusters into the local etcd. Create it with New
// and run it with Run.
type Mesh struct {
	cfg Config
	log *slog.Logger
	mgr *remote.Manager

	started atomic.Bool
	// wg tracks the goroutines of the writers.
	wg sync.WaitGroup

	// mu guards the maps and runCtx. It is held while a cluster is
	// configured or drained and while orphans are deleted, so that these
	// decisions and the writes they enqueue are ordered.
	mu       sync.Mutex
	runCtx   context.Context
	clusters map[string]*cluster
	// writers holds one Writer per cluster name. A cluster's writes go
	// through its own Writer, so its canaries wait for its own keys only
	// and clusters are written in parallel; the Writer outlives a removal
	// of the cluster until its drain is committed, so that a cluster added
	// back is written by the same Writer, after the drain.
	writers map[string]*writer
}

// writer is the kvstore.Writer of one cluster name and its bookkeeping.
type writer struct {
	w      *kvstore.Writer
	cancel context.CancelFunc
	done   chan struct{}
	// wake is signalled after a canary request so that the flusher
	// confirms it.
	wake chan struct{}

	mu sync.Mutex
	// ops counts the operations enqueued; stamp numbers canary requests,
	// and flushed is the highest stamp known committed.
	ops, stamp, flushed uint64
}

func (wr *writer) upsert(key string, value []byte) {
	wr.mu.Lock()
	wr.ops++
	wr.mu.Unlock()
	wr.w.Upsert(key, value)
}

func (wr *writer) delete(key string) {
	wr.mu.Lock()
	wr.ops++
	wr.mu.Unlock()
	wr.w.Delete(key)
}

// synced requests the canary key (after prune) and returns the request's
// stamp.
func (wr *writer) synced(key string, prune ...string) uint64 {
	wr.w.Synced(key, prune...)
	return wr.request()
}

// unsynced withdraws the canary key.
func (wr *writer) unsynced(key string) {
	wr.w.Unsynced(key)
	wr.request()
}

func (wr *writer) request() uint64 {
	wr.mu.Lock()
	defer wr.mu.Unlock()
	wr.ops++
	wr.stamp++
	select {
	case wr.wake <- struct{}{}:
	default:
	}
	return wr.stamp
}

// confirmed reports whether the request of the given stamp is committed.
func (wr *writer) confirmed(stamp uint64) bool {
	wr.mu.Lock()
	defer wr.mu.Unlock()
	return stamp != 0 && stamp <= wr.flushed
}

func (wr *writer) opsCount() uint64 {
	wr.mu.Lock()
	defer wr.mu.Unlock()
	return wr.ops
}

// flusher confirms canary requests: after a Flush that began once a
// request was made, the local etcd holds what was requested.
func (wr *writer) flusher(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-wr.wake:
		}
		wr.mu.Lock()
		target := wr.stamp
		wr.mu.Unlock()
		if err := wr.w.Flush(ctx); err != nil {
			return // ctx done
		}
		wr.mu.Lock()
		wr.flushed = max(wr.flushed, target)
		wr.mu.Unlock()
	}
}

func (wr *writer) stop() {
	wr.cancel()
	<-wr.done
}

// cluster is what the Mesh holds of one configured remote cluster.
type cluster struct {
	name string
	wr   *writer

	// mu guards the fields below (the Manager serializes a cluster's
	// calls; Status reads concurrently).
	mu sync.Mutex
	id uint32
	// everReachable: reported reachable at least once by this run;
	// removed: drained. startup withdraws a services canary left by an
	// earlier run if the cluster is not reachable within the loss bound.
	everReachable, removed bool
	startup                *time.Timer
	keys                   map[wire.Resource]map[string]struct{}
	// canary is the stamp of the request of each resource's cache canary,
	// 0 when it is not requested (never synced, or withdrawn).
	canary map[wire.Resource]uint64
}

func newCluster(name string, wr *writer) *cluster {
	c := &cluster{name: name, wr: wr, keys: map[wire.Resource]map[string]struct{}{}, canary: map[wire.Resource]uint64{}}
	for _, r := range wire.Resources {
		c.keys[r] = map[string]struct{}{}
	}
	return c
}

// lossBound is how long a remote may be unreachable before its services
// canary must be gone: the loss detection of package remote.
func (m *Mesh) lossBound() time.Duration {
	return kvstore.HealthConfig{Interval: m.cfg.HealthInterval, Timeout: m.cfg.HealthTimeout}.Bound()
}

// New validates cfg and returns a Mesh; nothing happens until Run.
func New(cfg Config) (*Mesh, error) {
	if cfg.Local == nil {
		return nil, errors.New("kvstoremesh: no local etcd client")
	}
	if cfg.ConfigDir == "" {
		return nil, errors.New("kvstoremesh: no remote cluster config directory")
	}
	if cfg.OrphanSweepDelay <= 0 {
		cfg.OrphanSweepDelay = remote.DefaultSyncTimeout
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	cfg.Events = event.OrDiscard(cfg.Events)
	mgr, err := remote.New(remote.Config{
		ClusterName:          cfg.ClusterName,
		ClusterID:            cfg.ClusterID,
		MaxConnectedClusters: cfg.MaxConnectedClusters,
		Dir:                  cfg.ConfigDir,
		PollInterval:         cfg.PollInterval,
		Dialer:               cfg.Dialer,
		HealthInterval:       cfg.HealthInterval,
		HealthTimeout:        cfg.HealthTimeout,
		MinBackoff:           cfg.MinBackoff,
		MaxBackoff:           cfg.MaxBackoff,
		KeepAliveTime:        cfg.KeepAliveTime,
		KeepAliveTimeout:     cfg.KeepAliveTimeout,
		RequestTimeout:       cfg.RequestTimeout,
		Logger:               log,
		Events:               cfg.Events,
		Metrics:              cfg.Metrics,
		MetricsSubsystem:     "kvstoremesh",
	})
	if err != nil {
		return nil, fmt.Errorf("kvstoremesh: %w", err)
	}
	return &Mesh{
		cfg:      cfg,
		log:      log,
		mgr:      mgr,
		clusters: map[string]*cluster{},
		writers:  map[string]*writer{},
	}, nil
}

// ErrAlreadyStarted is returned by a second call of Run; a Mesh runs once.
var ErrAlreadyStarted = errors.New("kvstoremesh: already started")

// Run mirrors the remote clusters until ctx is done, then returns nil. The
// keys written stay in the local etcd until their lease expires, so that a
// restarting Mesh does not make agents flap.
func (m *Mesh) Run(ctx context.Context) error {
	if !m.started.CompareAndSwap(false, true) {
		return ErrAlreadyStarted
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	m.mu.Lock()
	m.runCtx = ctx
	m.mu.Unlock()
	m.cfg.Events.Record(event.Event{Kind: event.ComponentStarted, Message: "kvstoremesh started"})
	defer m.cfg.Events.Record(event.Event{Kind: event.ComponentStopped, Message: "kvstoremesh stopped"})
	m.wg.Go(func() {
		t := time.NewTimer(m.cfg.OrphanSweepDelay)
		defer t.Stop()
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if err := m.sweepOrphans(ctx); err != nil && ctx.Err() == nil {
			m.log.Warn("Cannot delete cache entries of unconfigured clusters", "error", err)
		}
	})
	err := m.mgr.Run(ctx, (*sink)(m))
	cancel()
	m.mu.Lock()
	for _, c := range m.clusters {
		c.mu.Lock()
		c.startup.Stop()
		c.mu.Unlock()
	}
	m.mu.Unlock()
	m.wg.Wait()
	if err != nil {
		return fmt.Errorf("kvstoremesh: %w", err)
	}
	return nil
}

// writerLocked returns the Writer of a cluster name, started on first use.
func (m *Mesh) writerLocked(name string) *writer {
	if wr := m.writers[name]; wr != nil {
		return wr
	}
	ctx, cancel := context.WithCancel(m.runCtx)
	wr := &writer{
		w:      kvstore.NewWriter(m.cfg.Local, kvstore.WriterConfig{LeaseTTL: m.cfg.LeaseTTL}),
		cancel: cancel,
		done:   make(chan struct{}),
		wake:   make(chan struct{}, 1),
	}
	m.writers[name] = wr
	m.wg.Go(func() { wr.flusher(ctx) })
	m.wg.Go(func() {
		defer close(wr.done)
		wr.w.Run(ctx)
	})
	return wr
}

// retire stops the Writer of a name that is not configured once what it
// was given (a drain, orphan deletions) is committed and no leftover of
// the name is found under its prefixes, unless the cluster is configured
// again meanwhile.
// The caller holds m.mu.
func (m *Mesh) retire(name string, wr *writer) {
	ctx := m.runCtx
	m.wg.Go(func() {
		swept := false
		for {
			ops := wr.opsCount()
			if err := wr.w.Flush(ctx); err != nil {
				return // stopping
			}
			if !swept {
				// Also what an earlier run left and this one never held.
				swept = true
				if _, err := m.sweep(ctx, drainPrefixes(name)...); err != nil && ctx.Err() == nil {
					m.log.Warn("Cannot list leftovers of a removed cluster", "remote", name, "error", err)
				}
				continue
			}
			m.mu.Lock()
			if m.clusters[name] != nil || m.writers[name] != wr {
				m.mu.Unlock()
				return
			}
			if wr.opsCount() != ops {
				m.mu.Unlock()
				continue
			}
			delete(m.writers, name)
			m.mu.Unlock()
			wr.stop()
			return
		}
	})
}

// Flush blocks until everything the Mesh has enqueued so far is committed
// to the local etcd, or ctx is done. For tests and orderly hand-overs.
func (m *Mesh) Flush(ctx context.Context) error {
	m.mu.Lock()
	ws := make([]*writer, 0, len(m.writers))
	for _, wr := range m.writers {
		ws = append(ws, wr)
	}
	m.mu.Unlock()
	for _, wr := range ws {
		if err := wr.w.Flush(ctx); err != nil {
			return fmt.Errorf("kvstoremesh: %w", err)
		}
	}
	return nil
}

// ResourceStatus is the state of one resource of a remote cluster in the
// local cache.
type ResourceStatus struct {
	Resource wire.Resource `json:"resource"`
	// Synced: the resource's cache canary is committed in the local etcd
	// (as last confirmed).
	Synced bool `json:"synced"`
	// Keys in the cache.
	Keys int `json:"keys"`
}

// ClusterStatus is the state of one remote cluster, for `clustermesh
// status` and tests.
type ClusterStatus struct {
	Name string `json:"name"`
	// ID from the remote's last validated cluster-config.
	ID uint32 `json:"id,omitempty"`
	// Connected: the current session validated the remote's
	// cluster-config.
	Connected bool `json:"connected"`
	// Reachable: connected, services synced, and the loss detector
	// content; the services canary is written exactly while this holds.
	Reachable bool `json:"reachable"`
	// Synced: every resource's canary is committed.
	Synced    bool             `json:"synced"`
	Resources []ResourceStatus `json:"resources"`
	// Sessions on the current connection (1 + restarts after losses,
	// errors and config changes).
	Sessions int `json:"sessions"`
	// Since is when Reachable last changed.
	Since time.Time `json:"since,omitzero"`
	// LastError is the last connection or validation error, empty once a
	// session synced; ConfigError the error of the cluster's config file.
	LastError   string `json:"lastError,omitempty"`
	ConfigError string `json:"configError,omitempty"`
}

// Status returns every configured remote cluster (and every config file
// that failed to load), sorted by name.
func (m *Mesh) Status() []ClusterStatus {
	remotes := m.mgr.Status()
	m.mu.Lock()
	clusters := make(map[string]*cluster, len(m.clusters))
	for n, c := range m.clusters {
		clusters[n] = c
	}
	m.mu.Unlock()
	out := make([]ClusterStatus, 0, len(remotes))
	for _, rs := range remotes {
		st := ClusterStatus{
			Name: rs.Name, ID: rs.ID, Connected: rs.Up, Reachable: rs.Reachable,
			Sessions: rs.Sessions, Since: rs.Since,
		}
		if rs.LastErr != nil {
			st.LastError = rs.LastErr.Error()
		}
		if rs.ConfigErr != nil {
			st.ConfigError = rs.ConfigErr.Error()
		}
		c := clusters[rs.Name]
		st.Synced = c != nil
		for _, r := range wire.Resources {
			rst := ResourceStatus{Resource: r}
			if c != nil {
				c.mu.Lock()
				rst.Keys, rst.Synced = len(c.keys[r]), c.wr.confirmed(c.canary[r])
				c.mu.Unlock()
			}
			st.Synced = st.Synced && rst.Synced
			st.Resources = append(st.Resources, rst)
		}
		out = append(out, st)
	}
	return out
}

// Remotes returns the Manager's own view of the remote connections.
func (m *Mesh) Remotes() []remote.ClusterStatus { return m.mgr.Status() }

// cachedConfig is the cluster-config kvstoremesh writes for a remote.
func cachedConfig(cc wire.ClusterConfig) wire.ClusterConfig {
	return wire.ClusterConfig{ID: cc.ID, Capabilities: wire.Capabilities{
		SyncedCanaries:       true,
		Cached:               true,
		MaxConnectedClusters: cc.Capabilities.MaxConnectedClusters,
	}}
}

// cacheKey maps a key read from cluster to its key in the cache. A remote
// that is itself a cache (cached=true) already uses the cache layout.
func cacheKey(cluster, key string) (string, error) {
	k, err := wire.ParseKey(key)
	if err != nil {
		return "", err
	}
	if k.Cached {
		if k.Cluster != cluster {
			return "", fmt.Errorf("key %q: belongs to cluster %q, not %q", key, k.Cluster, cluster)
		}
		return key, nil
	}
	return wire.CacheKey(cluster, key)
}

// sweepOrphans deletes the cache keys, cluster-configs and cache canaries
// of clusters that are not configured: leftovers of an earlier run on a
// local etcd that outlived it, whose config file is gone since.
func (m *Mesh) sweepOrphans(ctx context.Context) error {
	used, err := m.sweep(ctx, wire.CacheRoot, wire.ClusterConfigRoot, wire.SyncedRoot)
	m.mu.Lock()
	for name, wr := range used {
		m.retire(name, wr)
	}
	m.mu.Unlock()
	return err
}

// drainPrefixes are where kvstoremesh keys of cluster name live (its
// cluster-config is deleted by name).
func drainPrefixes(name string) []string {
	prefixes := []string{wire.SyncedRoot + name + "/"}
	for _, r := range wire.Resources {
		prefixes = append(prefixes, wire.ClusterPrefix(r, name, true))
	}
	return prefixes
}

// sweep deletes the kvstoremesh keys under prefixes whose cluster is not
// configured, each through its cluster name's Writer, and returns the
// Writers it used.
func (m *Mesh) sweep(ctx context.Context, prefixes ...string) (map[string]*writer, error) {
	var errs []error
	used := map[string]*writer{}
	for _, prefix := range prefixes {
		kvs, _, err := m.cfg.Local.List(ctx, prefix)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		keys := make([]string, 0, len(kvs))
		for k := range kvs {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		n := 0
		m.mu.Lock()
		for _, k := range keys {
			owner, ok := orphanOwner(k)
			if !ok || owner == m.cfg.ClusterName {
				continue
			}
			if _, configured := m.clusters[owner]; configured {
				continue
			}
			// Through the name's own Writer, under m.mu: a cluster of that
			// name configured right after writes behind this delete.
			wr := m.writerLocked(owner)
			wr.delete(k)
			used[owner] = wr
			n++
		}
		m.mu.Unlock()
		if n > 0 {
			m.log.Info("Deleting entries of unconfigured remote clusters", "prefix", prefix, "count", n)
		}
	}
	return used, errors.Join(errs...)
}

// orphanOwner names the cluster a kvstoremesh key belongs to: cache keys,
// cluster-configs, and canaries of cache prefixes (not the local
// apiserver's own state canaries).
func orphanOwner(key string) (string, bool) {
	switch {
	case strings.HasPrefix(key, wire.CacheRoot):
		k, err := wire.ParseKey(key)
		if err != nil {
			return "", false
		}
		return k.Cluster, true
	case strings.HasPrefix(key, wire.ClusterConfigRoot):
		name := strings.TrimPrefix(key, wire.ClusterConfigRoot)
		return name, wire.ValidateClusterName(name) == nil
	case strings.HasPrefix(key, wire.SyncedRoot):
		name, rest, ok := strings.Cut(strings.TrimPrefix(key, wire.SyncedRoot), "/")
		return name, ok && strings.HasPrefix(rest, wire.CacheRoot)
	}
	return "", false
}
