package kvstoremesh

import (
	"encoding/json"
	"net/netip"
	"time"

	"github.com/meshbed/meshbed/mesh/remote"
	"github.com/meshbed/meshbed/mesh/wire"
)

// sink receives the Manager's calls. Only the raw calls and the cluster
// life cycle matter: the cache is a byte-for-byte copy, so the typed calls
// (which follow every raw call) are ignored. The Manager serializes the
// calls of one cluster; the calls of different clusters run concurrently,
// each on its own Writer.
type sink Mesh

var (
	_ remote.Sink    = (*sink)(nil)
	_ remote.RawSink = (*sink)(nil)
)

func (s *sink) mesh() *Mesh { return (*Mesh)(s) }

// cluster returns the configured cluster of that name, or nil.
func (s *sink) cluster(name string) *cluster {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.clusters[name]
}

func (s *sink) ClusterConfigured(name string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c := newCluster(name, s.mesh().writerLocked(name))
	s.clusters[name] = c
	bound := s.mesh().lossBound()
	c.mu.Lock()
	defer c.mu.Unlock()
	c.startup = time.AfterFunc(bound, func() {
		c.mu.Lock()
		defer c.mu.Unlock()
		if c.everReachable || c.removed {
			return
		}
		// Nothing of this run vouches for the remote: a canary of an
		// earlier run must not make agents use what may be stale.
		c.wr.unsynced(wire.CanaryKey(wire.Services, name, true))
		s.log.Info("Remote cluster not reachable since start; services canary withdrawn", "remote", name, "after", bound)
	})
}

func (s *sink) ClusterUp(name string, id uint32) {
	if c := s.cluster(name); c != nil {
		c.mu.Lock()
		c.id = id
		c.mu.Unlock()
	}
}

// ClusterDown drains a removed cluster: every cache key, the canaries and
// the cluster-config. Canaries go with the keys, in the order enqueued,
// which is safe: a reader without the cluster-config does not read the
// cache at all.
func (s *sink) ClusterDown(name string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c := s.clusters[name]
	delete(s.clusters, name)
	if c != nil {
		c.mu.Lock()
		c.removed = true
		c.startup.Stop()
		c.mu.Unlock()
	}
	wr := s.mesh().writerLocked(name)
	for _, r := range wire.Resources {
		wr.unsynced(wire.CanaryKey(r, name, true))
		if c != nil {
			c.mu.Lock()
			for k := range c.keys[r] {
				wr.delete(k)
			}
			c.mu.Unlock()
		}
	}
	wr.delete(wire.ClusterConfigKey(name))
	s.mesh().retire(name, wr)
	s.log.Info("Remote cluster removed; draining its cache", "remote", name)
}

// Reachable carries the loss and the recovery of a remote to the agents
// through the services canary (see the package doc). On recovery the
// Manager has delivered the services resync before this call, so the
// canary written now is committed behind it.
func (s *sink) Reachable(name string, reachable bool) {
	c := s.cluster(name)
	if c == nil {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	key := wire.CanaryKey(wire.Services, name, true)
	if reachable {
		c.everReachable = true
		c.canary[wire.Services] = c.wr.synced(key, wire.ClusterPrefix(wire.Services, name, true))
		s.log.Info("Remote cluster reachable; services canary written", "remote", name)
		return
	}
	c.wr.unsynced(key)
	c.canary[wire.Services] = 0
	s.log.Warn("Remote cluster lost; services canary withdrawn", "remote", name)
}

func (s *sink) ServicesSynced(string) {}

func (s *sink) UpsertService(string, *wire.ClusterService) {}
func (s *sink) DeleteService(string, string, string)       {}
func (s *sink) UpsertNode(string, *wire.Node)              {}
func (s *sink) DeleteNode(string, string)                  {}
func (s *sink) UpsertIPCache(string, *wire.IPIdentityPair) {}
func (s *sink) DeleteIPCache(string, netip.Addr)           {}
func (s *sink) UpsertIdentity(string, uint32, wire.Labels) {}
func (s *sink) DeleteIdentity(string, uint32)              {}

// ClusterConfig writes the remote's cluster-config, marked cached.
func (s *sink) ClusterConfig(name string, cc wire.ClusterConfig) {
	value, err := json.Marshal(cachedConfig(cc))
	if err != nil {
		// A struct of numbers and booleans always marshals.
		panic(err)
	}
	c := s.cluster(name)
	if c == nil {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.id = cc.ID
	c.wr.upsert(wire.ClusterConfigKey(name), value)
}

func (s *sink) UpsertRaw(name string, r wire.Resource, key string, value []byte) {
	ck, err := cacheKey(name, key)
	if err != nil {
		// The Manager parsed the key before accepting the value.
		s.log.Warn("Remote key has no cache key; not copied", "remote", name, "key", key, "error", err)
		return
	}
	c := s.cluster(name)
	if c == nil {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.keys[r][ck] = struct{}{}
	c.wr.upsert(ck, value)
}

func (s *sink) DeleteRaw(name string, r wire.Resource, key string) {
	ck, err := cacheKey(name, key)
	if err != nil {
		return
	}
	c := s.cluster(name)
	if c == nil {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.keys[r], ck)
	c.wr.delete(ck)
}

// Synced writes the canary of a resource other than services once its
// (re)sync is enqueued; the services canary follows reachability instead.
// Leftovers under the resource's cache prefix that the resync did not
// deliver (written by an earlier run) are pruned before the canary.
func (s *sink) Synced(name string, r wire.Resource) {
	if r == wire.Services {
		return
	}
	c := s.cluster(name)
	if c == nil {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.canary[r] = c.wr.synced(wire.CanaryKey(r, name, true), wire.ClusterPrefix(r, name, true))
}
