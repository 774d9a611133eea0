// Package identity allocates and resolves the security identities of a
// cluster's endpoints.
//
// An identity is a number that stands for a set of security labels (a pod's
// labels, its namespace and its cluster). Within a cluster every label set
// has exactly one identity, inside the cluster's range (clusterID<<16 |
// local, local ≥ 1; shift 15 in a 511-cluster mesh, see wire.ClusterIdentityRange),
// and it stays the same across restarts of the mesh-apiserver and of the
// agents.
//
// The source of truth is a cluster-scoped custom resource in the cluster's
// own Kubernetes API, meshbed.io/v1alpha1 MeshIdentity, whose name is the
// numeric identity (see crd.yaml). Using the API server as the store keeps
// identities stable across restarts of the ephemeral mesh etcd, and the
// dynamic client makes the same code run against a real cluster (Kind) and
// against the simulator's in-memory API (dynamic/fake).
//
// Cache mirrors the resources through an informer and answers lookups by
// labels and by identity; Allocator creates identities. Both the
// mesh-apiserver (which exports identities and ipcache entries) and the
// agents (which resolve the identity of their pods) use them.
package identity

import (
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"

	"github.com/meshbed/meshbed/mesh/wire"
)

// The MeshIdentity resource.
const (
	Group    = "meshbed.io"
	Version  = "v1alpha1"
	Kind     = "MeshIdentity"
	ListKind = "MeshIdentityList"
	Resource = "meshidentities"
)

// GVR is the group, version and resource of MeshIdentity.
var GVR = schema.GroupVersionResource{Group: Group, Version: Version, Resource: Resource}

// ListKinds maps GVR to its list kind, as
// k8s.io/client-go/dynamic/fake.NewSimpleDynamicClientWithCustomListKinds
// needs it to serve lists of MeshIdentity from an in-memory API.
func ListKinds() map[schema.GroupVersionResource]string {
	return map[schema.GroupVersionResource]string{GVR: ListKind}
}

// Range is the span of identities one cluster allocates.
type Range struct {
	ClusterID uint32
	// Min and Max are inclusive: Min is clusterID<<shift | 1 (local 0 is
	// never used), Max is clusterID<<shift | (1<<shift - 1).
	Min, Max uint32
}

// NewRange returns the identity range of cluster clusterID in a mesh of
// maxConnected (255 or 511) clusters.
func NewRange(clusterID, maxConnected uint32) (Range, error) {
	lo, hi, err := wire.ClusterIdentityRange(clusterID, maxConnected)
	if err != nil {
		return Range{}, fmt.Errorf("identity range: %w", err)
	}
	return Range{ClusterID: clusterID, Min: lo + 1, Max: hi}, nil
}

// Contains reports whether id lies in r.
func (r Range) Contains(id uint32) bool { return id >= r.Min && id <= r.Max }

// Size is the number of identities in r.
func (r Range) Size() uint32 { return r.Max - r.Min + 1 }

func (r Range) String() string { return fmt.Sprintf("[%d, %d]", r.Min, r.Max) }

// ignoredLabelKeys and ignoredLabelPrefixes are pod labels that say nothing
// about what a workload is but change with every rollout or replica; keeping
// them would give every ReplicaSet generation its own identity.
var ignoredLabelKeys = map[string]bool{
	"pod-template-hash":        true,
	"pod-template-generation":  true,
	"controller-revision-hash": true,
	"controller-uid":           true,
}

var ignoredLabelPrefixes = []string{
	"statefulset.kubernetes.io/",
	"apps.kubernetes.io/",
	"batch.kubernetes.io/",
	// Identity labels are derived here; a pod must not set its own
	// cluster or namespace label to impersonate another workload.
	"io.cilium.k8s.policy.",
	"io.kubernetes.",
}

// PodLabels returns the security labels of a pod of cluster in namespace
// with the given Kubernetes labels: its labels minus the noisy ones, plus
// io.kubernetes.pod.namespace and io.cilium.k8s.policy.cluster, all of
// source k8s.
func PodLabels(cluster, namespace string, podLabels map[string]string) wire.Labels {
	kv := make(map[string]string, len(podLabels)+2)
	for k, v := range podLabels {
		if ignoredLabelKeys[k] || hasAnyPrefix(k, ignoredLabelPrefixes) {
			continue
		}
		kv[k] = v
	}
	kv[wire.PodNamespaceLabel] = namespace
	kv[wire.PolicyClusterLabel] = cluster
	return wire.NewLabels(wire.LabelSourceK8s, kv)
}

func hasAnyPrefix(s string, prefixes []string) bool {
	for _, p := range prefixes {
		if strings.HasPrefix(s, p) {
			return true
		}
	}
	return false
}

// Identity is an allocated identity and its labels.
type Identity struct {
	ID     uint32
	Labels wire.Labels
}

// securityLabelsField is where a MeshIdentity keeps its labels: a map from
// "source:key" to value, the shape of Cilium's CiliumIdentity, readable in
// `kubectl get -o yaml`.
var securityLabelsField = []string{"spec", "securityLabels"}

// ClusterLabel is a metadata label on every MeshIdentity naming the cluster
// that allocated it, for humans and for selecting in kubectl.
const ClusterLabel = "meshbed.io/cluster"

// newObject builds the MeshIdentity resource of id.
func newObject(cluster string, id uint32, labels wire.Labels) *unstructured.Unstructured {
	sec := make(map[string]any, len(labels))
	for _, l := range labels {
		sec[l.Source+":"+l.Key] = l.Value
	}
	u := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": Group + "/" + Version,
		"kind":       Kind,
		"metadata": map[string]any{
			"name":   strconv.FormatUint(uint64(id), 10),
			"labels": map[string]any{ClusterLabel: cluster},
		},
		"spec": map[string]any{"securityLabels": sec},
	}}
	return u
}

// FromObject decodes a MeshIdentity. The resource is written by allocators
// but readable and writable by anyone with access to the API, so it is
// checked like remote input: the name must be a canonical decimal identity
// and the labels must form a valid set.
func FromObject(u *unstructured.Unstructured) (Identity, error) {
	name := u.GetName()
	id, ok := parseName(name)
	if !ok {
		return Identity{}, fmt.Errorf("%s %q: name is not an identity", Kind, name)
	}
	raw, found, err := unstructured.NestedMap(u.Object, securityLabelsField...)
	if err != nil {
		return Identity{}, fmt.Errorf("%s %q: %w", Kind, name, err)
	}
	if !found || len(raw) == 0 {
		return Identity{}, fmt.Errorf("%s %q: no security labels", Kind, name)
	}
	labels := make(wire.Labels, 0, len(raw))
	for _, k := range slices.Sorted(maps.Keys(raw)) {
		v, ok := raw[k].(string)
		if !ok {
			return Identity{}, fmt.Errorf("%s %q: label %q is not a string", Kind, name, k)
		}
		src, key, ok := strings.Cut(k, ":")
		if !ok || src == "" {
			return Identity{}, fmt.Errorf("%s %q: label %q has no source", Kind, name, k)
		}
		labels = append(labels, wire.Label{Source: src, Key: key, Value: v})
	}
	if err := labels.Validate(); err != nil {
		return Identity{}, fmt.Errorf("%s %q: %w", Kind, name, err)
	}
	// Going through the wire form sorts the labels as the wire wants them
	// and proves they read back unchanged.
	if labels, err = wire.ParseLabels(labels.String()); err != nil {
		return Identity{}, fmt.Errorf("%s %q: %w", Kind, name, err)
	}
	return Identity{ID: id, Labels: labels}, nil
}

// parseName parses a resource name that must be a canonical decimal
// identity (no sign, no leading zero), 1..2^24-1.
func parseName(name string) (uint32, bool) {
	id, err := strconv.ParseUint(name, 10, 32)
	if err != nil || strconv.FormatUint(id, 10) != name || id == 0 || id > wire.MaxIdentity {
		return 0, false
	}
	return uint32(id), true
}
