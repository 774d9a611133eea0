package kvstoremesh

import (
	"strings"
	"testing"

	"github.com/meshbed/meshbed/mesh/wire"
)

// FuzzCacheKey: whatever key a remote cluster delivers, the key written in
// the cache is either refused or a cache key of that cluster and of the
// same resource: a remote can never write outside its own cache prefix.
func FuzzCacheKey(f *testing.F) {
	for _, k := range []string{
		wire.NodeKey("cluster2", "node-1"),
		wire.ServiceKey("cluster2", "default", "rebel-base"),
		wire.IPKey("10.2.0.1"),
		wire.IPKey("10.2.0.0/24"),
		wire.IPKey("fd00::1"),
		wire.IdentityKey(2<<16 | 1),
		"cilium/cache/nodes/v1/cluster2/node-1",
		"cilium/cache/nodes/v1/cluster3/node-1",
		"cilium/state/nodes/v1/cluster2/../cluster3/x",
		"cilium/state/ip/v1/default/10.0.0.1/../../x",
		"cilium/state/services/v1/cluster2/ns",
		"",
	} {
		f.Add("cluster2", k)
	}
	f.Fuzz(func(t *testing.T, cluster, key string) {
		if wire.ValidateClusterName(cluster) != nil {
			return // the Manager only runs validly named clusters
		}
		ck, err := cacheKey(cluster, key)
		if err != nil {
			return
		}
		in, err := wire.ParseKey(key)
		if err != nil {
			t.Fatalf("cacheKey(%q, %q) = %q for an unparsable key", cluster, key, ck)
		}
		out, err := wire.ParseKey(ck)
		if err != nil {
			t.Fatalf("cacheKey(%q, %q) = %q: %v", cluster, key, ck, err)
		}
		if !out.Cached || out.Cluster != cluster || out.Resource != in.Resource {
			t.Fatalf("cacheKey(%q, %q) = %q: parsed %+v", cluster, key, ck, out)
		}
		if !strings.HasPrefix(ck, wire.ClusterPrefix(out.Resource, cluster, true)) {
			t.Fatalf("cacheKey(%q, %q) = %q: outside %s", cluster, key, ck, wire.ClusterPrefix(out.Resource, cluster, true))
		}
		if owner, ok := orphanOwner(ck); !ok || owner != cluster {
			t.Fatalf("orphanOwner(%q) = %q, %v; want %q", ck, owner, ok, cluster)
		}
	})
}
