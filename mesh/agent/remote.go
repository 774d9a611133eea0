package agent

import (
	"net/netip"
	"sort"
	"time"

	"github.com/meshbed/meshbed/datapath/state"
	"github.com/meshbed/meshbed/mesh/policy"
	"github.com/meshbed/meshbed/mesh/remote"
	"github.com/meshbed/meshbed/mesh/wire"
)

// remoteCluster is what the agent knows of one remote cluster.
type remoteCluster struct {
	id             uint32
	up             bool // cluster-config validated
	reachable      bool
	servicesSynced bool
	services       map[string]*wire.ClusterService // namespace/name
	nodes          map[string]*wire.Node
	ipcache        map[netip.Addr]*wire.IPIdentityPair
	identities     map[uint32]wire.Labels
	// lostAt is when the cluster was reported unreachable, until the
	// withdrawal of its backends is applied (meshbed_backends_withdraw_seconds).
	lostAt time.Time
}

func newRemoteCluster() *remoteCluster {
	return &remoteCluster{
		services:   map[string]*wire.ClusterService{},
		nodes:      map[string]*wire.Node{},
		ipcache:    map[netip.Addr]*wire.IPIdentityPair{},
		identities: map[uint32]wire.Labels{},
	}
}

func (rc *remoteCluster) serviceList() []*wire.ClusterService {
	keys := make([]string, 0, len(rc.services))
	for k := range rc.services {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	out := make([]*wire.ClusterService, len(keys))
	for i, k := range keys {
		out[i] = rc.services[k]
	}
	return out
}

func (rc *remoteCluster) nodeList() []state.Node {
	var out []state.Node
	for _, n := range rc.nodes {
		var ip netip.Addr
		for _, addr := range n.IPAddresses {
			if a, ok := netip.AddrFromSlice(addr.IP); ok && addr.Type == wire.NodeAddressInternalIP {
				ip = a.Unmap()
				break
			}
		}
		if !ip.IsValid() {
			continue
		}
		sn := state.Node{Name: n.Name, Cluster: n.Cluster, ClusterID: rc.id, IP: ip, WireguardPubKey: n.WireguardPubKey}
		if n.IPv4AllocCIDR != nil {
			if a, ok := netip.AddrFromSlice(n.IPv4AllocCIDR.IP); ok {
				ones, _ := n.IPv4AllocCIDR.Mask.Size()
				sn.PodCIDR = netip.PrefixFrom(a.Unmap(), ones)
			}
		}
		out = append(out, sn)
	}
	return out
}

func (rc *remoteCluster) ipcacheList() []state.IPCacheEntry {
	out := make([]state.IPCacheEntry, 0, len(rc.ipcache))
	for ip, p := range rc.ipcache {
		id := p.ID
		if id == state.IdentityHost {
			id = state.IdentityRemoteNode
		}
		e := state.IPCacheEntry{Prefix: netip.PrefixFrom(ip, ip.BitLen()), Identity: id, ClusterID: rc.id}
		if p.Mask != nil {
			if ones, bits := p.Mask.Size(); bits == ip.BitLen() {
				e.Prefix = netip.PrefixFrom(ip, ones).Masked()
			}
		}
		if h, ok := netip.AddrFromSlice(p.HostIP); ok {
			e.TunnelEndpoint = h.Unmap()
		}
		out = append(out, e)
	}
	return out
}

// sink is the Agent seen as a RemoteSink.
type sink Agent

var _ RemoteSink = (*sink)(nil)

func (s *sink) with(cluster string, create bool, fn func(rc *remoteCluster)) {
	a := (*Agent)(s)
	a.mu.Lock()
	defer a.mu.Unlock()
	rc, ok := a.remotes[cluster]
	if !ok {
		if !create {
			return
		}
		rc = newRemoteCluster()
		a.remotes[cluster] = rc
	}
	fn(rc)
	a.markDirty()
}

// ClusterConfigured registers a cluster the agent is configured to connect
// to: services are not programmed until it has synced (or the wait
// expires).
func (s *sink) ClusterConfigured(cluster string) {
	s.with(cluster, true, func(*remoteCluster) {})
}

func (s *sink) ClusterUp(cluster string, id uint32) {
	s.with(cluster, true, func(rc *remoteCluster) { rc.id, rc.up = id, true })
}

func (s *sink) ClusterDown(cluster string) {
	a := (*Agent)(s)
	a.mu.Lock()
	defer a.mu.Unlock()
	if rc, ok := a.remotes[cluster]; ok {
		for id := range rc.identities {
			a.policies.DeleteIdentity(id)
		}
		delete(a.remotes, cluster)
	}
	a.markDirty()
}

func (s *sink) Reachable(cluster string, reachable bool) {
	s.with(cluster, false, func(rc *remoteCluster) {
		if rc.reachable != reachable {
			(*Agent)(s).log.Info("Remote cluster reachability changed", "remote", cluster, "reachable", reachable)
			rc.lostAt = time.Time{}
			if !reachable {
				rc.lostAt = time.Now()
			}
		}
		rc.reachable = reachable
	})
}

func (s *sink) ServicesSynced(cluster string) {
	s.with(cluster, false, func(rc *remoteCluster) { rc.servicesSynced = true })
}

func (s *sink) UpsertService(cluster string, svc *wire.ClusterService) {
	s.with(cluster, false, func(rc *remoteCluster) { rc.services[svc.Namespace+"/"+svc.Name] = svc })
}

func (s *sink) DeleteService(cluster, namespace, name string) {
	s.with(cluster, false, func(rc *remoteCluster) { delete(rc.services, namespace+"/"+name) })
}

func (s *sink) UpsertNode(cluster string, n *wire.Node) {
	s.with(cluster, false, func(rc *remoteCluster) { rc.nodes[n.Name] = n })
}

func (s *sink) DeleteNode(cluster, name string) {
	s.with(cluster, false, func(rc *remoteCluster) { delete(rc.nodes, name) })
}

func (s *sink) UpsertIPCache(cluster string, p *wire.IPIdentityPair) {
	ip, ok := netip.AddrFromSlice(p.IP)
	if !ok {
		return
	}
	s.with(cluster, false, func(rc *remoteCluster) { rc.ipcache[ip.Unmap()] = p })
}

func (s *sink) DeleteIPCache(cluster string, ip netip.Addr) {
	s.with(cluster, false, func(rc *remoteCluster) { delete(rc.ipcache, ip.Unmap()) })
}

func (s *sink) UpsertIdentity(cluster string, id uint32, labels wire.Labels) {
	a := (*Agent)(s)
	s.with(cluster, false, func(rc *remoteCluster) {
		rc.identities[id] = labels
		if _, err := a.policies.UpsertIdentity(policy.Identity{ID: id, Labels: plainLabels(labels)}); err != nil {
			a.log.Warn("Remote identity not usable by policy", "remote", cluster, "identity", id, "err", err)
		}
	})
}

func (s *sink) DeleteIdentity(cluster string, id uint32) {
	a := (*Agent)(s)
	s.with(cluster, false, func(rc *remoteCluster) {
		delete(rc.identities, id)
		a.policies.DeleteIdentity(id)
	})
}

// allSyncedLocked reports whether every configured remote cluster has
// synced its services.
func (a *Agent) allSyncedLocked() bool {
	return len(a.pendingSyncLocked()) == 0
}

func (a *Agent) pendingSyncLocked() []string {
	var pending []string
	for _, name := range a.remoteNamesLocked() {
		if !a.remotes[name].servicesSynced {
			pending = append(pending, name)
		}
	}
	return pending
}

// A remote.Manager is what drives an agent's remote clusters.
var _ Remote = (*remote.Manager)(nil)
