package kvstoremesh

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/meshbed/meshbed/mesh/kvstore"
	"github.com/meshbed/meshbed/mesh/wire"
)

// DiffError is the error of Equal: what the cache lacks, has in excess, or
// holds with a different value, as cache keys (sorted), plus any problem
// with the cached cluster-config or canaries.
type DiffError struct {
	Cluster                 string
	Missing, Extra, Changed []string
	Problems                []string
}

func (e *DiffError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "cache of cluster %q differs from its source:", e.Cluster)
	list := func(what string, keys []string) {
		if len(keys) == 0 {
			return
		}
		const shown = 5
		fmt.Fprintf(&b, " %d %s (%s", len(keys), what, strings.Join(keys[:min(shown, len(keys))], ", "))
		if len(keys) > shown {
			b.WriteString(", ...")
		}
		b.WriteString(")")
	}
	list("missing", e.Missing)
	list("extra", e.Extra)
	list("changed", e.Changed)
	for _, p := range e.Problems {
		b.WriteString(" " + p + ";")
	}
	return b.String()
}

// Store is what Equal reads of an etcd: a *kvstore.Client, or a scenario
// target's reads of a cluster's mesh-apiserver. List reads a directory: every
// key under prefix followed by "/" (see kvstore.Client.List).
type Store interface {
	Get(ctx context.Context, key string) (value []byte, found bool, err error)
	List(ctx context.Context, prefix string) (kvs map[string][]byte, revision int64, err error)
}

var _ Store = (*kvstore.Client)(nil)

// Equal checks that the cache of cluster in the etcd of cache (a
// kvstoremesh's local etcd) is what kvstoremesh must make of the cluster's
// own etcd, source:
//
//   - for each resource, the cache holds exactly the source's valid values
//     (those the wire decoders accept for the cluster's ID), byte for
//     byte, under their cache keys, and nothing else — except that under a
//     key whose source value is invalid the cache may hold a valid value
//     (the last good one, which a rejected update does not take away);
//   - the cached cluster-config has the source's ID and
//     maxConnectedClusters, and cached=true;
//   - every cache canary exists whose source canary exists.
//
// The two stores are read one after the other, so on a live mesh Equal
// holds only once changes have settled: poll it. It is the simulator's
// final check that no kvstoremesh cache is stale or incomplete. It
// returns a *DiffError for a difference, another error if a store cannot
// be read.
func Equal(ctx context.Context, source, cache Store, cluster string) error {
	ccKey := wire.ClusterConfigKey(cluster)
	raw, found, err := source.Get(ctx, ccKey)
	if err != nil {
		return fmt.Errorf("compare cache of cluster %q: %w", cluster, err)
	}
	if !found {
		return fmt.Errorf("compare cache of cluster %q: source has no %s", cluster, ccKey)
	}
	cc, err := wire.DecodeClusterConfig(ccKey, raw, cluster)
	if err != nil {
		return fmt.Errorf("compare cache of cluster %q: source %w", cluster, err)
	}
	diff := &DiffError{Cluster: cluster}

	raw, found, err = cache.Get(ctx, ccKey)
	if err != nil {
		return fmt.Errorf("compare cache of cluster %q: %w", cluster, err)
	}
	if !found {
		diff.Problems = append(diff.Problems, "no cached cluster-config")
	} else if got, err := wire.DecodeClusterConfig(ccKey, raw, cluster); err != nil {
		diff.Problems = append(diff.Problems, "cached "+err.Error())
	} else if got != cachedConfig(cc) {
		diff.Problems = append(diff.Problems, fmt.Sprintf("cached cluster-config %+v, want %+v", got, cachedConfig(cc)))
	}

	for _, r := range wire.Resources {
		src, _, err := source.List(ctx, wire.ClusterPrefix(r, cluster, false))
		if err != nil {
			return fmt.Errorf("compare cache of cluster %q: %w", cluster, err)
		}
		want := make(map[string]string, len(src))
		lastGood := map[string]bool{} // cache keys whose source value is invalid
		for k, v := range src {
			ck, err := wire.CacheKey(cluster, k)
			if err != nil {
				continue
			}
			if !valid(r, k, v, cluster, cc) {
				lastGood[ck] = true
				continue
			}
			want[ck] = string(v)
		}
		got, _, err := cache.List(ctx, wire.ClusterPrefix(r, cluster, true))
		if err != nil {
			return fmt.Errorf("compare cache of cluster %q: %w", cluster, err)
		}
		for k, v := range want {
			g, ok := got[k]
			switch {
			case !ok:
				diff.Missing = append(diff.Missing, k)
			case string(g) != v:
				diff.Changed = append(diff.Changed, k)
			}
		}
		for k := range got {
			if _, ok := want[k]; !ok && !lastGood[k] {
				diff.Extra = append(diff.Extra, k)
			}
		}

		_, srcSynced, err := source.Get(ctx, wire.CanaryKey(r, cluster, false))
		if err != nil {
			return fmt.Errorf("compare cache of cluster %q: %w", cluster, err)
		}
		_, cacheSynced, err := cache.Get(ctx, wire.CanaryKey(r, cluster, true))
		if err != nil {
			return fmt.Errorf("compare cache of cluster %q: %w", cluster, err)
		}
		if srcSynced && !cacheSynced {
			diff.Problems = append(diff.Problems, "no cache canary for "+string(r))
		}
	}
	if len(diff.Missing)+len(diff.Extra)+len(diff.Changed)+len(diff.Problems) == 0 {
		return nil
	}
	slices.Sort(diff.Missing)
	slices.Sort(diff.Extra)
	slices.Sort(diff.Changed)
	return diff
}

// valid reports whether kvstoremesh accepts a source value (the same
// decoders as package remote).
func valid(r wire.Resource, key string, value []byte, cluster string, cc wire.ClusterConfig) bool {
	maxConnected := cc.Capabilities.MaxConnectedClusters
	var err error
	switch r {
	case wire.Services:
		_, err = wire.DecodeClusterService(key, value, cluster, cc.ID)
	case wire.Nodes:
		_, err = wire.DecodeNode(key, value, cluster, cc.ID)
	case wire.IP:
		_, err = wire.DecodeIPIdentityPair(key, value, cluster, cc.ID, maxConnected)
	case wire.Identities:
		_, err = wire.DecodeIdentity(key, value, cluster, cc.ID, maxConnected)
	}
	return err == nil
}
