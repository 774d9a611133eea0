package remote

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/meshbed/meshbed/mesh/event"
	"github.com/meshbed/meshbed/mesh/kvstore"
	"github.com/meshbed/meshbed/mesh/wire"
)

// cluster is the connection to one remote cluster and what it exported.
type cluster struct {
	m      *Manager
	name   string
	logger *slog.Logger
	sink   Sink
	raw    RawSink // nil unless the sink implements it

	// conf, cancel and done belong to the Manager's scan goroutine.
	conf   *loadedConfig
	cancel context.CancelFunc
	done   chan struct{}

	// health runs the probe of the current connection; owned by run.
	health *healthRunner

	// restart carries session numbers whose session must end (a loss).
	restart chan uint64

	// mu guards everything below and serializes the sink calls of this
	// cluster, which keeps them in order.
	mu          sync.Mutex
	running     bool
	id          uint32
	cached      bool
	up          bool
	reachable   bool
	since       time.Time
	everSynced  bool
	sess        uint64 // current session number
	sessions    int
	sessReaders bool // the current session started its readers
	sessSynced  bool // ... and its services reader has listed
	sessEnded   bool // a loss ended the current session; ignore its events
	// current: the services are as current as the connection allows; false
	// from a loss until a later session has listed them again.
	current       bool
	healthOK      bool // direct connections: kvstore.Health verdict
	canaryOK      bool // cached connections: services canary verdict
	canaryPresent bool
	// canaryRev is the revision of the latest observation of the canary
	// this session (a read's, or a watched or proven write's).
	canaryRev int64
	grace     *time.Timer
	lastErr   error
	// lossReason says why the cluster became unreachable, for the
	// RemoteLost event; lostAt is when it was lost (zero: not lost).
	lossReason string
	lostAt     time.Time
	// failures and lastFailure count losses and failed sessions.
	failures    int
	lastFailure time.Time
	rejected    int // remote values rejected by validation
	stores      map[wire.Resource]*store
}

func newCluster(m *Manager, name string) *cluster {
	c := &cluster{
		m:        m,
		name:     name,
		logger:   m.logger.With("remote", name),
		sink:     m.sink,
		raw:      m.raw,
		restart:  make(chan uint64, 4),
		healthOK: true,
		canaryOK: true,
		stores:   map[wire.Resource]*store{},
	}
	for _, r := range wire.Resources {
		c.stores[r] = newStore()
	}
	return c
}

func (c *cluster) start(ctx context.Context, lc *loadedConfig) {
	c.conf = lc
	cctx, cancel := context.WithCancel(ctx)
	c.cancel, c.done = cancel, make(chan struct{})
	c.mu.Lock()
	c.running = true
	c.mu.Unlock()
	go func() {
		defer close(c.done)
		c.run(cctx, lc)
	}()
}

func (c *cluster) stop() {
	if c.cancel == nil {
		return
	}
	c.cancel()
	<-c.done
	c.cancel = nil
	c.mu.Lock()
	c.running = false
	c.stopGraceLocked()
	c.mu.Unlock()
}

// forget drops the cluster's state after its config was removed; the
// caller tells the sink (ClusterDown).
func (c *cluster) forget() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for r := range c.stores {
		c.stores[r] = newStore()
	}
	c.up, c.reachable = false, false
	c.m.releaseID(c.name)
}

func (c *cluster) status() ClusterStatus {
	c.mu.Lock()
	defer c.mu.Unlock()
	return ClusterStatus{
		Name:           c.name,
		Running:        c.running,
		ID:             c.id,
		Cached:         c.cached,
		Up:             c.up,
		Reachable:      c.reachable,
		ServicesSynced: c.everSynced,
		Sessions:       c.sessions,
		LastErr:        c.lastErr,
		Rejected:       c.rejected,
		Since:          c.since,
		Failures:       c.failures,
		LastFailure:    c.lastFailure,
		Entries:        c.entriesLocked(),
	}
}

// entriesLocked counts the accepted entries of every resource.
func (c *cluster) entriesLocked() map[wire.Resource]int {
	out := make(map[wire.Resource]int, len(c.stores))
	for r, st := range c.stores {
		out[r] = len(st.entries)
	}
	return out
}

// failureLocked counts a loss or a failed session.
func (c *cluster) failureLocked() {
	c.failures++
	c.lastFailure = time.Now()
}

// run owns one connection (one config) until ctx ends: a client, its
// health probe, and a sequence of sessions.
func (c *cluster) run(ctx context.Context, lc *loadedConfig) {
	cfg := c.m.cfg
	ctx = kvstore.WithScope(ctx, "remote/"+c.name)
	client, release, err := c.m.acquireConn(lc, c.logger)
	if err != nil {
		c.mu.Lock()
		c.lastErr = fmt.Errorf("connect to cluster %q: %w", c.name, err)
		c.mu.Unlock()
		c.logger.Error("Cannot connect to remote cluster", "error", err)
		return
	}
	defer release()

	c.mu.Lock()
	c.sessions = 0
	c.mu.Unlock()
	// The health probe runs from the start, as the mode is not known yet
	// and a direct connection must detect a loss even before its first
	// session validated the cluster; sessions that find the cluster cached
	// stop it (it would only probe the local etcd).
	health := &healthRunner{c: c, client: client, ctx: ctx}
	health.set(true)
	defer health.set(false)
	c.health = health

	bo := newBackoff(cfg.MinBackoff, cfg.MaxBackoff)
	for ctx.Err() == nil {
		sid := c.beginSession()
		sctx, scancel := context.WithCancel(ctx)
		errc := make(chan error, 1)
		go func() { errc <- c.session(sctx, client, sid) }()
		var err error
	wait:
		for {
			select {
			case <-ctx.Done():
				scancel()
				<-errc
				return
			case s := <-c.restart:
				if s != sid {
					continue
				}
				scancel()
				<-errc
				break wait
			case err = <-errc:
				scancel()
				break wait
			}
		}
		c.mu.Lock()
		synced := c.sessSynced
		c.mu.Unlock()
		if synced {
			bo.reset()
		}
		if err != nil && ctx.Err() == nil {
			c.failed(err)
			if !bo.wait(ctx) {
				return
			}
		}
	}
}

// beginSession starts a session: every known entry becomes stale until the
// session's readers see it again.
func (c *cluster) beginSession() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.sess++
	c.sessions++
	c.sessReaders, c.sessSynced, c.sessEnded = false, false, false
	c.canaryRev = 0 // a new session may read a restarted etcd
	c.stopGraceLocked()
	for _, st := range c.stores {
		st.gen++
	}
	return c.sess
}

// errConfigChanged ends a session whose cluster-config changed.
var errConfigChanged = errors.New("cluster-config changed")

// session validates the cluster-config and runs the readers until ctx ends
// or the cluster-config changes.
func (c *cluster) session(ctx context.Context, client *kvstore.Client, sid uint64) error {
	key := wire.ClusterConfigKey(c.name)
	value, err := client.WaitKey(ctx, key)
	if err != nil {
		return fmt.Errorf("cluster %q: read cluster-config: %w", c.name, err)
	}
	cc, err := c.validate(key, value)
	if err != nil {
		return err
	}
	if err := c.m.claimID(c.name, cc.ID); err != nil {
		return err
	}
	c.mu.Lock()
	if sid != c.sess {
		c.mu.Unlock()
		return ctx.Err()
	}
	announce := !c.up || c.id != cc.ID
	if c.up && c.id != cc.ID {
		c.logger.Warn("Remote cluster changed its ID; revalidating its state", "old", c.id, "new", cc.ID)
	}
	c.id, c.cached, c.up = cc.ID, cc.Capabilities.Cached, true
	if c.raw != nil {
		c.raw.ClusterConfig(c.name, cc)
	}
	if announce {
		c.sink.ClusterUp(c.name, cc.ID)
	}
	c.sessReaders = true
	cached := c.cached
	c.mu.Unlock()
	if c.health != nil {
		c.health.set(!cached)
	}
	c.logger.Info("Remote cluster connected", "id", cc.ID, "cached", cached, "session", sid)

	rctx, rcancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer func() {
		rcancel()
		wg.Wait()
	}()
	cfg := c.m.cfg
	for _, r := range wire.Resources {
		rd := kvstore.NewReader(client, kvstore.ReaderConfig{
			Prefix:     wire.ClusterPrefix(r, c.name, cached),
			Canary:     wire.CanaryKey(r, c.name, cached),
			MinBackoff: cfg.MinBackoff,
			MaxBackoff: cfg.MaxBackoff,
		}, func(ev kvstore.Event) { c.handle(sid, r, ev) })
		wg.Go(func() { rd.Run(rctx) })
	}
	if cached {
		wg.Go(func() { c.monitorCanary(rctx, client, sid) })
	} else {
		wg.Go(func() { c.m.metrics.watchHeartbeat(rctx, client, c.name) })
	}
	changed := make(chan struct{})
	wg.Go(func() {
		if c.watchConfig(rctx, client, key, cc) {
			close(changed)
		}
	})
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-changed:
		return fmt.Errorf("cluster %q: %w", c.name, errConfigChanged)
	}
}

// validate decodes and checks a cluster-config against the local cluster.
func (c *cluster) validate(key string, value []byte) (wire.ClusterConfig, error) {
	cfg := c.m.cfg
	cc, err := wire.DecodeClusterConfig(key, value, c.name)
	if err != nil {
		return cc, fmt.Errorf("cluster %q: %w", c.name, err)
	}
	if got := cc.Capabilities.MaxConnectedClusters; got != cfg.MaxConnectedClusters {
		return cc, fmt.Errorf("cluster %q: maxConnectedClusters %d, local cluster %q has %d", c.name, got, cfg.ClusterName, cfg.MaxConnectedClusters)
	}
	if cc.ID == cfg.ClusterID {
		return cc, fmt.Errorf("cluster %q: cluster ID %d is already used by cluster %q (the local cluster)", c.name, cc.ID, cfg.ClusterName)
	}
	return cc, nil
}

// failed records a session error; an unusable cluster is not reachable.
func (c *cluster) failed(err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if errors.Is(err, errConfigChanged) {
		c.logger.Info("Remote cluster-config changed; resyncing")
		return
	}
	if c.lastErr == nil || c.lastErr.Error() != err.Error() {
		c.logger.Error("Remote cluster session failed; retrying", "error", err)
	} else {
		c.logger.Debug("Remote cluster session failed again; retrying", "error", err)
	}
	c.lastErr = err
	c.failureLocked()
	if !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, context.Canceled) {
		c.up, c.current = false, false
	}
	c.recomputeLocked()
}

// healthRunner starts and stops the kvstore.Health of a connection.
type healthRunner struct {
	c      *cluster
	client *kvstore.Client
	ctx    context.Context // the connection's
	mu     sync.Mutex
	cancel context.CancelFunc
	done   chan struct{}
}

// set starts (on) or stops the probe. It must not be called with c.mu
// held: stopping waits for the probe, whose callback takes c.mu.
func (h *healthRunner) set(on bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	switch {
	case on && h.cancel == nil:
		h.c.mu.Lock()
		h.c.healthOK = true // no verdict yet; the probe will give one
		h.c.mu.Unlock()
		cfg := h.c.m.cfg
		health := kvstore.NewHealth(h.client, kvstore.HealthConfig{
			Interval: cfg.HealthInterval,
			Timeout:  cfg.HealthTimeout,
			OnChange: h.c.onHealth,
		})
		hctx, cancel := context.WithCancel(h.ctx)
		done := make(chan struct{})
		go func() {
			defer close(done)
			health.Run(hctx)
		}()
		h.cancel, h.done = cancel, done
	case !on && h.cancel != nil:
		h.cancel()
		<-h.done
		h.cancel, h.done = nil, nil
	}
}

// onHealth is the kvstore.Health callback of direct connections.
func (c *cluster) onHealth(s kvstore.Status) {
	c.mu.Lock()
	defer c.mu.Unlock()
	was := c.healthOK
	c.healthOK = s.Reachable
	if c.cached {
		// Through kvstoremesh the local etcd's health says nothing about
		// the remote cluster (see the package doc).
		return
	}
	if was && !s.Reachable {
		if c.current && !s.LastActivity.IsZero() {
			c.m.metrics.lossDetected(c.name, time.Since(s.LastActivity))
		}
		c.loseLocked(fmt.Sprintf("health probe: %v", s.Err))
		return
	}
	c.recomputeLocked()
}

// loseLocked handles a detected loss: the cluster is unreachable at once,
// and a session that has started its readers is ended so that the next one
// relists everything before the cluster is reachable again.
func (c *cluster) loseLocked(reason string) {
	if !c.current {
		// Nothing to lose: no session has listed the cluster's services
		// since the start or the last loss, so it is unreachable already,
		// and the readers' first list comes after this. A cluster still
		// being synced (a bring-up slower than the canary grace or the
		// health timeout) is not reported lost, nor its session restarted
		// for a relist that would only make a busy machine busier.
		c.logger.Info("Remote cluster not reachable yet", "reason", reason)
		c.recomputeLocked()
		return
	}
	c.logger.Warn("Remote cluster lost", "reason", reason)
	c.current = false
	c.lossReason = reason
	c.failureLocked()
	c.recomputeLocked()
	if c.sessReaders {
		// Events its readers deliver until they stop may predate the
		// loss: none of them may make the cluster current again.
		c.sessEnded = true
		select {
		case c.restart <- c.sess:
		default:
		}
	}
}

// recomputeLocked reports a change of reachability.
func (c *cluster) recomputeLocked() {
	ok := c.up && c.current
	if c.cached {
		ok = ok && c.canaryOK
	} else {
		ok = ok && c.healthOK
	}
	if ok == c.reachable {
		return
	}
	c.reachable, c.since = ok, time.Now()
	if ok {
		c.logger.Info("Remote cluster reachable")
	} else {
		c.logger.Warn("Remote cluster unreachable")
	}
	c.sink.Reachable(c.name, ok)
	// The events come after the sink has the news, so that what they
	// announce has been handed on.
	switch {
	case !ok:
		reason := c.lossReason
		if reason == "" {
			reason = "cluster unusable"
			if c.lastErr != nil {
				reason = c.lastErr.Error()
			}
		}
		c.lossReason, c.lostAt = "", c.since
		c.m.cfg.Events.Record(event.Event{Time: c.since, Kind: event.RemoteLost, Remote: c.name, Message: reason})
	case !c.lostAt.IsZero():
		c.m.cfg.Events.Record(event.Event{Time: c.since, Kind: event.RemoteRestored, Remote: c.name,
			Message: fmt.Sprintf("resynced %.2fs after the loss", c.since.Sub(c.lostAt).Seconds())})
		c.lostAt = time.Time{}
	}
}

// watchConfig returns true when the cluster-config changes from cc (a
// deletion is not a change: a restarting mesh-apiserver rewrites it).
func (c *cluster) watchConfig(ctx context.Context, client *kvstore.Client, key string, cc wire.ClusterConfig) bool {
	bo := newBackoff(c.m.cfg.MinBackoff, c.m.cfg.MaxBackoff)
	differs := func(v []byte) bool {
		got, err := wire.DecodeClusterConfig(key, v, c.name)
		return err != nil || got != cc
	}
	for ctx.Err() == nil {
		wctx, cancel := context.WithCancel(ctx)
		reconnected := client.Reconnects(wctx)
		resp, err := get(wctx, client, key)
		if err != nil {
			cancel()
			bo.wait(ctx)
			continue
		}
		bo.reset()
		if len(resp.Kvs) > 0 && differs(resp.Kvs[0].Value) {
			cancel()
			return true
		}
		wch := client.Etcd().Watch(clientv3.WithRequireLeader(wctx), key, clientv3.WithRev(resp.Header.Revision+1))
	watch:
		for {
			select {
			case <-reconnected:
				break watch
			case wr, ok := <-wch:
				if !ok || wr.Err() != nil {
					break watch
				}
				for _, ev := range wr.Events {
					if ev.Type == clientv3.EventTypePut && differs(ev.Kv.Value) {
						cancel()
						return true
					}
				}
			}
		}
		cancel()
	}
	return false
}

// monitorCanary watches the services canary of a cluster read through
// kvstoremesh (see the package doc for the contract).
func (c *cluster) monitorCanary(ctx context.Context, client *kvstore.Client, sid uint64) {
	key := wire.CanaryKey(wire.Services, c.name, true)
	bo := newBackoff(c.m.cfg.MinBackoff, c.m.cfg.MaxBackoff)
	for ctx.Err() == nil {
		wctx, cancel := context.WithCancel(ctx)
		reconnected := client.Reconnects(wctx)
		resp, err := get(wctx, client, key)
		if err != nil {
			cancel()
			bo.wait(ctx)
			continue
		}
		bo.reset()
		// What a fresh read finds is not a deletion we saw happen.
		c.canary(sid, len(resp.Kvs) > 0, false, resp.Header.Revision)
		wch := client.Etcd().Watch(clientv3.WithRequireLeader(wctx), key, clientv3.WithRev(resp.Header.Revision+1))
	watch:
		for {
			select {
			case <-reconnected:
				break watch
			case wr, ok := <-wch:
				if !ok || wr.Err() != nil {
					break watch
				}
				for _, ev := range wr.Events {
					c.canary(sid, ev.Type == clientv3.EventTypePut, true, ev.Kv.ModRevision)
				}
			}
		}
		cancel()
	}
}

// canary records the services canary's presence at revision rev; live
// says a change was observed on a watch rather than found on a (re)read.
// A read is always taken (after a restart of the local etcd revisions
// start over); a watched change no newer than what is known is stale.
func (c *cluster) canary(sid uint64, present, live bool, rev int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if sid != c.sess {
		return
	}
	c.canaryLocked(sid, present, live, rev)
}

// canaryProvenLocked takes the services reader's proof that the canary
// was written at rev: it lists only once the canary exists. The watch of
// monitorCanary can lag seconds behind on a busy connection shared by many
// clusters, and an absent read's grace must not outlast the proof that
// the canary was written after that read.
func (c *cluster) canaryProvenLocked(sid uint64, rev int64) {
	if c.canaryPresent || rev <= c.canaryRev {
		return
	}
	c.canaryLocked(sid, true, true, rev)
}

func (c *cluster) canaryLocked(sid uint64, present, live bool, rev int64) {
	if live && rev <= c.canaryRev {
		return
	}
	c.canaryRev = rev
	c.canaryPresent = present
	switch {
	case present:
		c.stopGraceLocked()
		if !c.canaryOK {
			c.canaryOK = true
			c.recomputeLocked()
		}
	case live:
		c.stopGraceLocked()
		if c.canaryOK {
			c.canaryOK = false
			c.loseLocked("kvstoremesh deleted the services canary")
		}
	case c.canaryOK && c.grace == nil:
		grace := c.m.cfg.CanaryGrace
		var t *time.Timer
		t = time.AfterFunc(grace, func() {
			c.mu.Lock()
			defer c.mu.Unlock()
			if c.grace != t {
				return // stopped or replaced
			}
			c.grace = nil
			if sid != c.sess || c.canaryPresent || !c.canaryOK {
				return
			}
			c.canaryOK = false
			c.loseLocked(fmt.Sprintf("services canary absent for %v", grace))
		})
		c.grace = t
	}
}

func (c *cluster) stopGraceLocked() {
	if c.grace != nil {
		c.grace.Stop()
		c.grace = nil
	}
}

// get is a linearizable read bounded by the request timeout.
func get(ctx context.Context, client *kvstore.Client, key string) (*clientv3.GetResponse, error) {
	timeout := kvstore.DefaultRequestTimeout
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	resp, err := client.Etcd().Get(ctx, key)
	if err != nil {
		return nil, fmt.Errorf("get %q: %w", key, err)
	}
	return resp, nil
}

// backoff is a jittered exponential delay.
type retryBackoff struct{ lo, hi, cur time.Duration }

func newBackoff(lo, hi time.Duration) *retryBackoff { return &retryBackoff{lo: lo, hi: hi} }

func (b *retryBackoff) reset() { b.cur = 0 }

// wait sleeps for a delay in [d/2, d), d doubling from lo to hi; false if
// ctx ended first.
func (b *retryBackoff) wait(ctx context.Context) bool {
	if b.cur == 0 {
		b.cur = b.lo
	} else {
		b.cur = min(2*b.cur, b.hi)
	}
	t := time.NewTimer(b.cur/2 + rand.N(b.cur/2+1))
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
