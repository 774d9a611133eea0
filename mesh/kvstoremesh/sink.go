package kvstoremesh

import (
	"encoding/json"
	"net/netip"

	"github.com/meshbed/meshbed/mesh/remote"
	"github.com/meshbed/meshbed/mesh/wire"
)

// sink receives the Manager's calls. Only the raw calls and the cluster
// life cycle matter: the cache is a byte-for-byte copy, so the typed calls
// (which follow every raw call) are ignored. The Manager serializes the
// calls of one cluster; m.mu guards the clusters map against the calls of
// others and against Status.
type sink Mesh

var (
	_ remote.Sink    = (*sink)(nil)
	_ remote.RawSink = (*sink)(nil)
)

func (s *sink) ClusterConfigured(name string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.clusters[name] = newCluster(name)
}

func (s *sink) ClusterUp(name string, id uint32) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if c := s.clusters[name]; c != nil {
		c.id = id
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
	w := s.w
	for _, r := range wire.Resources {
		w.Unsynced(wire.CanaryKey(r, name, true))
		if c != nil {
			for k := range c.keys[r] {
				w.Delete(k)
			}
		}
	}
	w.Delete(wire.ClusterConfigKey(name))
	s.log.Info("Remote cluster removed; cache drained", "remote", name)
}

// Reachable carries the loss and the recovery of a remote to the agents
// through the services canary (see the package doc). On recovery the
// Manager has delivered the services resync before this call, so the
// canary written now is committed behind it.
func (s *sink) Reachable(name string, reachable bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c := s.clusters[name]
	if c == nil {
		return
	}
	key := wire.CanaryKey(wire.Services, name, true)
	if reachable {
		s.w.Synced(key, wire.ClusterPrefix(wire.Services, name, true))
		c.canary[wire.Services] = (*Mesh)(s).requestLocked()
		s.log.Info("Remote cluster reachable; services canary written", "remote", name)
		return
	}
	s.w.Unsynced(key)
	c.canary[wire.Services] = 0
	(*Mesh)(s).requestLocked()
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
	s.mu.Lock()
	defer s.mu.Unlock()
	c := s.clusters[name]
	if c == nil {
		return
	}
	c.id = cc.ID
	s.w.Upsert(wire.ClusterConfigKey(name), value)
}

func (s *sink) UpsertRaw(name string, r wire.Resource, key string, value []byte) {
	ck, err := cacheKey(name, key)
	if err != nil {
		// The Manager parsed the key before accepting the value.
		s.log.Warn("Remote key has no cache key; not copied", "remote", name, "key", key, "error", err)
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	c := s.clusters[name]
	if c == nil {
		return
	}
	c.keys[r][ck] = struct{}{}
	s.w.Upsert(ck, value)
}

func (s *sink) DeleteRaw(name string, r wire.Resource, key string) {
	ck, err := cacheKey(name, key)
	if err != nil {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	c := s.clusters[name]
	if c == nil {
		return
	}
	delete(c.keys[r], ck)
	s.w.Delete(ck)
}

// Synced writes the canary of a resource other than services once its
// (re)sync is enqueued; the services canary follows reachability instead.
// Leftovers under the resource's cache prefix that the resync did not
// deliver (written by an earlier run) are pruned before the canary.
func (s *sink) Synced(name string, r wire.Resource) {
	if r == wire.Services {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	c := s.clusters[name]
	if c == nil {
		return
	}
	s.w.Synced(wire.CanaryKey(r, name, true), wire.ClusterPrefix(r, name, true))
	c.canary[r] = (*Mesh)(s).requestLocked()
}
