//go:build ignore

// decode reads what a meshbed mesh-apiserver exports and decodes every key
// with Cilium's own types and the validators Cilium's agent and
// kvstoremesh apply to a remote cluster. It is not part of meshbed's
// module: hack/interop.sh builds it in the scratch module that holds
// Cilium's code, and the interop tests (sim/interop) run it.
//
// Input (stdin): {"cluster": NAME, "clusterID": N, "keys": {KEY: VALUE}}
// with values base64-encoded, as encoding/json writes []byte. Output: one
// line per key; the exit status is 1 when any key is rejected or of a kind
// this program does not know.
package main

import (
	"encoding/json"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"

	serviceStore "github.com/cilium/cilium/pkg/clustermesh/store"
	cmtypes "github.com/cilium/cilium/pkg/clustermesh/types"
	"github.com/cilium/cilium/pkg/identity"
	"github.com/cilium/cilium/pkg/identity/key"
	api "github.com/cilium/cilium/pkg/k8s/apis/cilium.io"
	"github.com/cilium/cilium/pkg/kvstore/store"
	"github.com/cilium/cilium/pkg/labels"
	nodeStore "github.com/cilium/cilium/pkg/node/store"
)

type input struct {
	Cluster   string            `json:"cluster"`
	ClusterID uint32            `json:"clusterID"`
	Keys      map[string][]byte `json:"keys"`
}

func main() {
	var in input
	if err := json.NewDecoder(os.Stdin).Decode(&in); err != nil {
		fmt.Fprintln(os.Stderr, "decode: read input:", err)
		os.Exit(2)
	}
	keys := make([]string, 0, len(in.Keys))
	for k := range in.Keys {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	failed := 0
	for _, k := range keys {
		what, err := decode(in, k, in.Keys[k])
		if err != nil {
			failed++
			fmt.Printf("FAIL %s: %v\n", k, err)
			continue
		}
		fmt.Printf("ok   %s: %s\n", k, what)
	}
	fmt.Printf("%d keys, %d rejected\n", len(keys), failed)
	if failed > 0 {
		os.Exit(1)
	}
}

// Prefixes as Cilium's packages define them; the cluster-scoped state
// prefixes are followed by the cluster name.
var (
	nodesPrefix      = nodeStore.NodeStorePrefix + "/"
	servicesPrefix   = serviceStore.ServiceStorePrefix + "/"
	ipPrefix         = "cilium/state/ip/v1/default/"
	identitiesPrefix = "cilium/state/identities/v1/id/"
	configPrefix     = "cilium/cluster-config/"
	syncedPrefix     = "cilium/synced/"
	heartbeatKey     = "cilium/.heartbeat"
)

func decode(in input, k string, v []byte) (string, error) {
	id := in.ClusterID
	switch {
	case strings.HasPrefix(k, nodesPrefix+in.Cluster+"/"):
		n := nodeStore.ValidatingKeyCreator(nodeStore.ClusterNameValidator(in.Cluster),
			nodeStore.NameValidator(), nodeStore.ClusterIDValidator(&id))()
		if err := n.Unmarshal(strings.TrimPrefix(k, nodesPrefix+in.Cluster+"/"), v); err != nil {
			return "", err
		}
		return "node " + n.GetKeyName(), nil

	case strings.HasPrefix(k, servicesPrefix):
		s := serviceStore.KeyCreator(serviceStore.ClusterNameValidator(in.Cluster),
			serviceStore.NamespacedNameValidator(), serviceStore.ClusterIDValidator(&id))()
		// The validators compare against the key below the cluster name.
		name := strings.TrimPrefix(k, servicesPrefix+in.Cluster+"/")
		if name == k {
			return "", fmt.Errorf("service key outside cluster %s", in.Cluster)
		}
		if err := s.Unmarshal(name, v); err != nil {
			return "", err
		}
		svc := s.(*serviceStore.ValidatingClusterService)
		return fmt.Sprintf("service %s, %d frontends, %d backends, shared=%v", name,
			len(svc.Frontends), len(svc.Backends), svc.Shared), nil

	case strings.HasPrefix(k, ipPrefix):
		var pair identity.IPIdentityPair
		if err := pair.Unmarshal(strings.TrimPrefix(k, ipPrefix), v); err != nil {
			return "", err
		}
		// As ipcache.WithIdentityValidator: reserved identities, or the
		// cluster's range.
		lo, hi := identity.GetMinimalAllocationIdentity(id), identity.GetMaximumAllocationIdentity(id)
		if pair.ID >= identity.MinimalNumericIdentity && (pair.ID < lo || pair.ID > hi) {
			return "", fmt.Errorf("ID %d does not belong to the allocation range of cluster ID %d", pair.ID, id)
		}
		return fmt.Sprintf("ip %s identity %d host %s", pair.PrefixString(), pair.ID, pair.HostIP), nil

	case strings.HasPrefix(k, identitiesPrefix):
		n, err := strconv.ParseUint(strings.TrimPrefix(k, identitiesPrefix), 10, 32)
		if err != nil {
			return "", fmt.Errorf("identity key: %w", err)
		}
		// As the identity allocator's cache validators for a remote
		// cluster: the ID in the cluster's range, and a cluster label
		// naming the cluster.
		nid := identity.NumericIdentity(n)
		if nid < identity.GetMinimalAllocationIdentity(id) || nid > identity.GetMaximumAllocationIdentity(id) {
			return "", fmt.Errorf("ID %d does not belong to the allocation range of cluster ID %d", n, id)
		}
		gi := (&key.GlobalIdentity{}).PutKey(string(v)).(*key.GlobalIdentity)
		if len(gi.LabelArray) == 0 {
			return "", fmt.Errorf("identity %d has no labels", n)
		}
		if !hasCluster(gi.LabelArray, in.Cluster) {
			return "", fmt.Errorf("identity %d has no %s=%s label: %s", n, api.PolicyLabelCluster, in.Cluster, gi.LabelArray)
		}
		return fmt.Sprintf("identity %d, %d labels", n, len(gi.LabelArray)), nil

	case k == configPrefix+in.Cluster:
		var cfg cmtypes.CiliumClusterConfig
		if err := json.Unmarshal(v, &cfg); err != nil {
			return "", err
		}
		local := cmtypes.ClusterInfo{ID: 1, Name: "interop-local", MaxConnectedClusters: 255}
		if err := local.ValidateRemoteConfig(cfg); err != nil {
			return "", err
		}
		if cfg.ID != id {
			return "", fmt.Errorf("cluster config has ID %d, want %d", cfg.ID, id)
		}
		return fmt.Sprintf("cluster config %+v", cfg), nil

	case strings.HasPrefix(k, syncedPrefix+in.Cluster+"/"):
		// Canaries: Cilium looks only at their existence.
		return "synced canary", nil

	case k == heartbeatKey:
		if _, err := time.Parse(time.RFC3339, string(v)); err != nil {
			return "", fmt.Errorf("heartbeat: %w", err)
		}
		return "heartbeat", nil
	}
	return "", fmt.Errorf("a key of no kind Cilium reads from a remote cluster")
}

func hasCluster(la labels.LabelArray, cluster string) bool {
	for _, l := range la {
		if l.Key == api.PolicyLabelCluster && l.Source == labels.LabelSourceK8s && l.Value == cluster {
			return true
		}
	}
	return false
}

var _ store.Key // the interface every decoded kind implements
