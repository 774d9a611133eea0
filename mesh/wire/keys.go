package wire

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// Versioned prefixes under the cache root, written by kvstoremesh.
const (
	CacheNodesPrefix      = "cilium/cache/nodes/v1"
	CacheServicesPrefix   = "cilium/cache/services/v1"
	CacheIPPrefix         = "cilium/cache/ip/v1"
	CacheIdentitiesPrefix = "cilium/cache/identities/v1"

	// identityIDElem is the path element before the numeric identity.
	identityIDElem = "id"
)

// ClusterConfigKey is cilium/cluster-config/<cluster>.
func ClusterConfigKey(cluster string) string { return ClusterConfigRoot + cluster }

// SyncedKey is the canary cilium/synced/<cluster>/<prefix> that tells
// readers every initial key under prefix (no trailing "/") is written.
func SyncedKey(cluster, prefix string) string {
	return SyncedRoot + cluster + "/" + strings.TrimRight(prefix, "/")
}

// StatePrefix is the versioned prefix of r in the source cluster's store,
// e.g. cilium/state/nodes/v1 (no trailing "/").
func StatePrefix(r Resource) string { return StateRoot + string(r) + "/v1" }

// CachePrefix is the versioned prefix of r in a kvstoremesh cache, e.g.
// cilium/cache/nodes/v1 (no trailing "/").
func CachePrefix(r Resource) string { return CacheRoot + string(r) + "/v1" }

// ClusterPrefix is the prefix (with trailing "/") under which the keys of
// r of cluster live: in the cluster's own store when cached is false, in a
// kvstoremesh cache when true. Readers watch exactly this.
//
//	nodes, services: cilium/state/<r>/v1/<cluster>/ or cilium/cache/<r>/v1/<cluster>/
//	ip:              cilium/state/ip/v1/default/    or cilium/cache/ip/v1/<cluster>/
//	identities:      cilium/state/identities/v1/id/ or cilium/cache/identities/v1/<cluster>/id/
func ClusterPrefix(r Resource, cluster string, cached bool) string {
	if cached {
		switch r {
		case Identities:
			return CachePrefix(r) + "/" + cluster + "/" + identityIDElem + "/"
		default:
			return CachePrefix(r) + "/" + cluster + "/"
		}
	}
	switch r {
	case IP:
		return StatePrefix(r) + "/" + IPDefaultScope + "/"
	case Identities:
		return StatePrefix(r) + "/" + identityIDElem + "/"
	default:
		return StatePrefix(r) + "/" + cluster + "/"
	}
}

// CanaryKey is the sync canary that guards ClusterPrefix(r, cluster,
// cached): cilium/synced/<cluster>/cilium/{state,cache}/<r>/v1.
func CanaryKey(r Resource, cluster string, cached bool) string {
	if cached {
		return SyncedKey(cluster, CachePrefix(r))
	}
	return SyncedKey(cluster, StatePrefix(r))
}

// NodeKey is cilium/state/nodes/v1/<cluster>/<node>.
func NodeKey(cluster, node string) string { return NodesPrefix + "/" + cluster + "/" + node }

// ServiceKey is cilium/state/services/v1/<cluster>/<namespace>/<name>.
func ServiceKey(cluster, namespace, name string) string {
	return ServicesPrefix + "/" + cluster + "/" + namespace + "/" + name
}

// IPKey is cilium/state/ip/v1/default/<ip>. ip is an address ("10.0.0.1")
// or, for entries with a mask, a prefix ("10.0.0.0/24").
func IPKey(ip string) string { return IPPrefix + "/" + IPDefaultScope + "/" + ip }

// IdentityKey is cilium/state/identities/v1/id/<id>.
func IdentityKey(id uint32) string {
	return IdentitiesPrefix + "/" + identityIDElem + "/" + strconv.FormatUint(uint64(id), 10)
}

// CacheKey maps a key of cluster's own store (as listed under
// ClusterPrefix(r, cluster, false)) to the key kvstoremesh writes in its
// cache. The path after the prefix is kept; for ip and identities the
// cluster takes the place of "default" / is inserted before "id".
func CacheKey(cluster, stateKey string) (string, error) {
	k, err := ParseKey(stateKey)
	if err != nil {
		return "", err
	}
	if k.Cached {
		return "", fmt.Errorf("key %q: already a cache key", stateKey)
	}
	if k.Cluster != "" && k.Cluster != cluster {
		return "", fmt.Errorf("key %q: belongs to cluster %q, not %q", stateKey, k.Cluster, cluster)
	}
	rest := strings.TrimPrefix(stateKey, ClusterPrefix(k.Resource, cluster, false))
	return ClusterPrefix(k.Resource, cluster, true) + rest, nil
}

// Key is a parsed state or cache key.
type Key struct {
	Resource Resource
	// Cached is true for keys under cilium/cache/.
	Cached bool
	// Cluster named in the key; empty for state ip and identity keys, which
	// do not carry it.
	Cluster string
	// Namespace and Name of a service; Name is the node name for nodes.
	Namespace, Name string
	// Prefix of an ip key: a single address (/32, /128) unless the key is
	// a CIDR.
	Prefix netip.Prefix
	// IsCIDR is true when an ip key is written as "addr/len".
	IsCIDR bool
	// Identity of an identity key.
	Identity uint32
}

// ParseKey parses a key of one of the four resources, in the state or the
// cache layout. It checks the shape only (elements present, cluster name
// and IP syntax, numeric identity), not ranges.
func ParseKey(key string) (Key, error) {
	var k Key
	var rest string
	switch {
	case strings.HasPrefix(key, StateRoot):
		rest = key[len(StateRoot):]
	case strings.HasPrefix(key, CacheRoot):
		rest = key[len(CacheRoot):]
		k.Cached = true
	default:
		return k, fmt.Errorf("key %q: not under %q or %q", key, StateRoot, CacheRoot)
	}
	elems := strings.Split(rest, "/")
	if len(elems) < 3 || elems[1] != "v1" {
		return k, fmt.Errorf("key %q: malformed", key)
	}
	k.Resource = Resource(elems[0])
	elems = elems[2:]
	switch k.Resource {
	case Nodes, Services, IP:
		// All of them carry a cluster (or "default") first.
	case Identities:
	default:
		return k, fmt.Errorf("key %q: unknown resource %q", key, elems[0])
	}
	if k.Cached || (k.Resource != IP && k.Resource != Identities) {
		k.Cluster = elems[0]
		if err := ValidateClusterName(k.Cluster); err != nil {
			return k, fmt.Errorf("key %q: %w", key, err)
		}
		elems = elems[1:]
	} else if k.Resource == IP {
		if elems[0] != IPDefaultScope {
			return k, fmt.Errorf("key %q: want %q after %s", key, IPDefaultScope, IPPrefix)
		}
		elems = elems[1:]
	}
	switch k.Resource {
	case Nodes:
		if len(elems) != 1 || elems[0] == "" {
			return k, fmt.Errorf("key %q: want <cluster>/<node>", key)
		}
		k.Name = elems[0]
	case Services:
		if len(elems) != 2 || elems[0] == "" || elems[1] == "" {
			return k, fmt.Errorf("key %q: want <cluster>/<namespace>/<name>", key)
		}
		k.Namespace, k.Name = elems[0], elems[1]
	case IP:
		// A CIDR contains one "/", so the remainder is one or two elements.
		s := strings.Join(elems, "/")
		if strings.Contains(s, "/") {
			p, err := netip.ParsePrefix(s)
			if err != nil || p.Addr().Is4In6() || p.Masked() != p || p.String() != s {
				return k, fmt.Errorf("key %q: %q is not a canonical prefix", key, s)
			}
			k.Prefix, k.IsCIDR = p, true
		} else {
			a, err := netip.ParseAddr(s)
			if err != nil || a.Zone() != "" || a.Is4In6() || a.String() != s {
				return k, fmt.Errorf("key %q: %q is not a canonical IP address", key, s)
			}
			k.Prefix = netip.PrefixFrom(a, a.BitLen())
		}
	case Identities:
		if len(elems) != 2 || elems[0] != identityIDElem {
			return k, fmt.Errorf("key %q: want id/<number>", key)
		}
		id, err := strconv.ParseUint(elems[1], 10, 32)
		if err != nil || strconv.FormatUint(id, 10) != elems[1] || id == 0 || id > MaxIdentity {
			return k, fmt.Errorf("key %q: %q is not an identity", key, elems[1])
		}
		k.Identity = uint32(id)
	}
	return k, nil
}
