package remote

import (
	"errors"
	"slices"
	"strconv"

	"github.com/meshbed/meshbed/mesh/kvstore"
	"github.com/meshbed/meshbed/mesh/wire"
)

// store is what the sink holds of one resource of one cluster: the
// accepted keys, each with the session generation that last saw it.
type store struct {
	gen     uint64
	entries map[string]entry  // raw key → entry
	logical map[string]string // logical ID → raw key
}

type entry struct {
	key     wire.Key
	logical string
	gen     uint64
	// id is the cluster ID the value was validated against: a last good
	// value is kept only while the cluster keeps that ID.
	id uint32
}

func newStore() *store {
	return &store{entries: map[string]entry{}, logical: map[string]string{}}
}

// logicalID names what a key is about independently of the layout it was
// read in (state or cache), so that switching layouts replaces entries
// instead of deleting them after their replacement arrived.
func logicalID(k wire.Key) string {
	switch k.Resource {
	case wire.Services:
		return k.Namespace + "/" + k.Name
	case wire.Nodes:
		return k.Name
	case wire.IP:
		return k.Prefix.String()
	case wire.Identities:
		return strconv.FormatUint(uint64(k.Identity), 10)
	}
	return ""
}

// handle applies one reader event of session sid.
func (c *cluster) handle(sid uint64, r wire.Resource, ev kvstore.Event) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if sid != c.sess || c.sessEnded {
		return // a reader of an ended session, stopping
	}
	switch ev.Kind {
	case kvstore.EventUpsert:
		c.upsertLocked(r, ev.Key, ev.Value)
	case kvstore.EventDelete:
		c.deleteLocked(r, ev.Key)
	case kvstore.EventSynced:
		c.sweepLocked(r)
		if c.raw != nil {
			c.raw.Synced(c.name, r)
		}
		if r != wire.Services {
			return
		}
		c.sessSynced, c.current = true, true
		c.lastErr = nil
		if c.cached && ev.CanaryRevision > 0 {
			c.canaryProvenLocked(sid, ev.CanaryRevision)
		}
		if !c.everSynced {
			c.everSynced = true
			c.sink.ServicesSynced(c.name)
			c.m.servicesSynced(c.name)
		}
		c.recomputeLocked()
	}
}

// upsertLocked decodes a value and, if valid, hands it to the sink. An
// invalid value is rejected, logged and counted, and never applied; if the
// key held a good value before, that value stays in force (and survives the
// sweep after a relist) until a good value or a delete replaces it: remote
// input that turns bad must not take away what was already applied.
func (c *cluster) upsertLocked(r wire.Resource, key string, value []byte) {
	st := c.stores[r]
	k, err := wire.ParseKey(key)
	var apply func()
	if err == nil {
		apply, err = c.decode(r, key, value)
	}
	if err != nil {
		c.rejected++
		if e, ok := st.entries[key]; ok && e.id == c.id {
			e.gen = st.gen
			st.entries[key] = e
			c.logger.Warn("Rejected remote entry, keeping its last good value", "resource", r, "key", key, "error", err)
			return
		}
		c.logger.Warn("Rejected remote entry", "resource", r, "key", key, "error", err)
		c.deleteLocked(r, key) // accepted under another cluster ID, if at all
		return
	}
	id := logicalID(k)
	if old, ok := st.logical[id]; ok && old != key {
		// Same object under another key (layout change): replace quietly.
		delete(st.entries, old)
		if c.raw != nil {
			c.raw.DeleteRaw(c.name, r, old)
		}
	}
	st.entries[key] = entry{key: k, logical: id, gen: st.gen, id: c.id}
	st.logical[id] = key
	if c.raw != nil {
		c.raw.UpsertRaw(c.name, r, key, value)
	}
	apply()
}

// decode validates a value against its key and the cluster and returns
// the sink call that applies it.
func (c *cluster) decode(r wire.Resource, key string, value []byte) (func(), error) {
	maxConnected := c.m.cfg.MaxConnectedClusters
	switch r {
	case wire.Services:
		svc, err := wire.DecodeClusterService(key, value, c.name, c.id)
		if err != nil {
			return nil, err
		}
		return func() { c.sink.UpsertService(c.name, svc) }, nil
	case wire.Nodes:
		n, err := wire.DecodeNode(key, value, c.name, c.id)
		if err != nil {
			return nil, err
		}
		return func() { c.sink.UpsertNode(c.name, n) }, nil
	case wire.IP:
		p, err := wire.DecodeIPIdentityPair(key, value, c.name, c.id, maxConnected)
		if err != nil {
			return nil, err
		}
		return func() { c.sink.UpsertIPCache(c.name, p) }, nil
	case wire.Identities:
		id, err := wire.DecodeIdentity(key, value, c.name, c.id, maxConnected)
		if err != nil {
			return nil, err
		}
		return func() { c.sink.UpsertIdentity(c.name, id.ID, id.Labels) }, nil
	}
	return nil, &wire.DecodeError{Key: key, Err: errUnknownResource}
}

// deleteLocked removes an accepted key; unknown keys are ignored.
func (c *cluster) deleteLocked(r wire.Resource, key string) {
	st := c.stores[r]
	e, ok := st.entries[key]
	if !ok {
		return
	}
	delete(st.entries, key)
	if st.logical[e.logical] == key {
		delete(st.logical, e.logical)
	}
	if c.raw != nil {
		c.raw.DeleteRaw(c.name, r, key)
	}
	k := e.key
	switch r {
	case wire.Services:
		c.sink.DeleteService(c.name, k.Namespace, k.Name)
	case wire.Nodes:
		c.sink.DeleteNode(c.name, k.Name)
	case wire.IP:
		c.sink.DeleteIPCache(c.name, k.Prefix.Addr())
	case wire.Identities:
		c.sink.DeleteIdentity(c.name, k.Identity)
	}
}

// sweepLocked deletes every entry the current session has not seen.
func (c *cluster) sweepLocked(r wire.Resource) {
	st := c.stores[r]
	var stale []string
	for key, e := range st.entries {
		if e.gen != st.gen {
			stale = append(stale, key)
		}
	}
	slices.Sort(stale)
	if len(stale) > 0 {
		c.logger.Info("Deleting stale remote entries after resync", "resource", r, "count", len(stale))
	}
	for _, key := range stale {
		c.deleteLocked(r, key)
	}
}

var errUnknownResource = errors.New("unknown resource")
