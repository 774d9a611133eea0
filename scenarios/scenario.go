// Package scenarios is the scenario file format meshbed.io/v1alpha1 (see
// docs/scenarios.md): the typed form of a scenario, its strict decoder and
// validator, and the results of a run (report.json, report.html and the
// terminal progress lines).
//
// A scenario file is decoded and checked completely before anything starts:
// Load returns either a Scenario in which every reference resolves and every
// value is typed (durations, rates, share and count matchers, parsed
// manifests), or every problem found at once, each formatted
//
//	FILE: step N (NAME): FIELD: what is wrong
//	FILE: spec.topology.clusters[1].id: what is wrong
//
// so that a user fixes a file in one pass. The engine that executes steps
// works on these types only and never sees YAML.
//
// # Value grammar
//
// Durations are Go durations with a unit ("5s", "500ms", "1m30s"); a bare
// number is rejected because its unit would be a guess.
//
// Matchers (expect.responses values, expect.errors, kvstore count):
//
//	matcher = [op] amount
//	op      = ">=" | "<=" | ">" | "<" | "=" | "=="     (none means equal)
//	amount  = count | share
//	count   = digits                                  a number of requests
//	share   = digits ["." 1*3digits] "%"              0% to 100%
//
// A YAML number (0, 52) is a count. Spaces around op are allowed. A value
// that begins with ">" must be quoted in YAML (">=25%"), since a bare ">"
// starts a folded block. expect.errors also accepts "all": every request
// failed (what a policy denial looks like), and at least one was made. A
// kvstore count accepts counts only.
//
// A response share is the share of the successful responses that a cluster
// answered (failures are not in the denominator); with no successful
// response every share is 0%. An errors share is failed requests over all
// requests.
//
// Rates (traffic.rate) are "N/UNIT" or "N/DURATION": a positive integer
// number of requests per period, e.g. "50/s", "600/m", "5/100ms". The
// resulting interval between two requests must be at least 1ms.
//
// # References
//
// References are checked in file order, the way a run would meet them: the
// objects of spec.manifests exist in their clusters before step 1; an apply
// step adds objects from its step on, a delete step removes one (a
// Namespace with everything in it). scale and curl/traffic "from" need the
// Deployment, annotate and expect.backends the Service, delete the object,
// in that cluster at that point. A traffic name may not be started again
// before its stopTraffic, and stopTraffic needs a running stream. When a
// manifest of a cluster fails to parse, references into that cluster are
// not checked, so that one broken file does not cause a cascade of errors.
//
// # Choices beyond docs/scenarios.md
//
// Each is a strict superset of the written format, or a rule the format
// leaves open:
//
//   - curl and traffic "from" also take <cluster>/<namespace>/<deployment>;
//     <cluster>/<deployment> means namespace "default".
//   - expect.backends.service may be a bare name (namespace "default");
//     expect.backends and expect.kvstore take one object or a list.
//   - expect.kvstore count is a count matcher (2, ">=1").
//   - Cluster IDs are 1..255; pod and service CIDRs are IPv4, have no host
//     bits set, and no two CIDRs of the topology overlap (pod or service,
//     same cluster or not).
//   - URLs are http:// only (the simulated echo server speaks HTTP).
//   - A step's name defaults to its action's key; metadata.name is required;
//     spec.seed defaults to 0.
//   - connections absent means a full mesh; an explicit empty list means
//     no cluster is connected to another.
//   - scale and delete (of a Deployment) take gracePeriodSeconds (0..3600):
//     the grace period of the pods the step removes, in place of their own
//     terminationGracePeriodSeconds (default 30, as Kubernetes). Pods are
//     deleted gracefully: marked terminating (the endpoint goes
//     ready=false, serving=true, terminating=true, so load balancers stop
//     sending new connections), and gone once their workload has drained
//     or the grace period ends; an idle pod goes at once. 0 kills them at
//     once (kubectl delete --grace-period=0 --force), the abrupt case.
package scenarios

import (
	"fmt"
	"net/netip"
	"net/url"
	"time"

	"k8s.io/apimachinery/pkg/runtime"
)

// APIVersion and Kind identify a scenario file.
const (
	APIVersion = "meshbed.io/v1alpha1"
	Kind       = "Scenario"
)

// Limits of the format.
const (
	// MaxClusterID is the largest cluster ID: the mesh splits identities
	// for 255 clusters (docs/wire.md).
	MaxClusterID = 255
	// MaxClusterNameLen is the longest cluster name.
	MaxClusterNameLen = 32
	// MaxNodes is the most nodes a simulated cluster may have: node-i
	// takes the (i+1)-th address of its cluster's /24 of the underlay, the
	// first being the apiserver's, up to .254.
	MaxNodes = 253
	// DefaultNodes is the node count of a cluster that does not say.
	DefaultNodes = 2
	// DefaultCurlCount and DefaultTimeout are the curl and traffic
	// defaults.
	DefaultCurlCount = 10
	DefaultTimeout   = time.Second
	// MinRateInterval bounds a traffic stream's rate from above.
	MinRateInterval = time.Millisecond
	// DefaultNamespace is the namespace of namespaced objects and
	// references that do not name one.
	DefaultNamespace = "default"
)

// Scenario is a decoded and validated scenario file.
type Scenario struct {
	// File is the path the scenario was loaded from, as given.
	File        string
	Name        string
	Description string
	// Seed drives every random choice of a run except load balancing.
	// Zero when the file does not set it.
	Seed      int64
	Topology  Topology
	Manifests []Manifest
	Steps     []Step
}

// Routing is how pod traffic crosses nodes and clusters.
type Routing string

const (
	RoutingTunnel Routing = "tunnel" // VXLAN, the default
	RoutingNative Routing = "native"
)

// RemoteLoss is what an agent does with a remote cluster's backends once it
// has lost its connection to that cluster (docs/architecture.md, "Semantics").
type RemoteLoss string

const (
	// RemoteLossWithdraw takes the backends out of load balancing and keeps
	// identities and ipcache entries. The default.
	RemoteLossWithdraw RemoteLoss = "withdraw"
	// RemoteLossFailStatic keeps everything, as Cilium does.
	RemoteLossFailStatic RemoteLoss = "fail-static"
)

// Encryption is how traffic between nodes is protected.
type Encryption string

const (
	EncryptionNone      Encryption = "none" // the default
	EncryptionWireGuard Encryption = "wireguard"
)

// Topology is the simulated mesh. Defaults are filled in by the decoder.
type Topology struct {
	Routing     Routing
	KVStoreMesh bool
	RemoteLoss  RemoteLoss
	// Encryption of pod traffic between nodes, within and across clusters.
	Encryption Encryption
	Clusters   []Cluster
	// Connections lists the connected cluster pairs, each pair once, in
	// file order; when the file has no connections list it holds every
	// pair (a full mesh). An explicit empty list connects nothing.
	Connections [][2]string
}

// Cluster is one simulated cluster.
type Cluster struct {
	Name string
	ID   int
	// Nodes is the number of nodes, named node-1..node-N.
	Nodes int
	// PodCIDR and ServiceCIDR default to 10.<id>.0.0/16 and 10.0.<id>.0/24,
	// so that defaults of distinct IDs never overlap.
	PodCIDR     netip.Prefix
	ServiceCIDR netip.Prefix
}

// NodeNames returns node-1..node-N.
func (c Cluster) NodeNames() []string {
	names := make([]string, c.Nodes)
	for i := range names {
		names[i] = NodeName(i + 1)
	}
	return names
}

// NodeName is the name of a cluster's i-th node, counting from 1.
func NodeName(i int) string { return fmt.Sprintf("node-%d", i) }

// DefaultPodCIDR and DefaultServiceCIDR are the CIDRs of a cluster that does
// not set them.
func DefaultPodCIDR(id int) netip.Prefix {
	return netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(id), 0, 0}), 16)
}

// DefaultServiceCIDR: see DefaultPodCIDR.
func DefaultServiceCIDR(id int) netip.Prefix {
	return netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 0, byte(id), 0}), 24)
}

// Cluster returns the cluster with that name.
func (t *Topology) Cluster(name string) (Cluster, bool) {
	for _, c := range t.Clusters {
		if c.Name == name {
			return c, true
		}
	}
	return Cluster{}, false
}

// Connected reports whether clusters a and b see each other.
func (t *Topology) Connected(a, b string) bool {
	for _, p := range t.Connections {
		if (p[0] == a && p[1] == b) || (p[0] == b && p[1] == a) {
			return true
		}
	}
	return false
}

// Manifest is a set of Kubernetes objects applied to some clusters, in order.
type Manifest struct {
	Clusters []string
	// File is the manifest file as written in the scenario (relative to
	// the scenario file), or empty for inline objects.
	File    string
	Objects []Object
}

// Object is one Kubernetes object of a supported kind.
type Object struct {
	APIVersion string
	Kind       string
	// Namespace is empty for cluster-scoped kinds (Namespace) and defaults
	// to "default" for the others.
	Namespace string
	Name      string
	// Object is the decoded object with the API server's defaults that the
	// engine needs filled in (namespace "default", a Deployment's replicas
	// 1, port protocols TCP, a Service port's targetPort its port):
	// *corev1.Namespace, *corev1.Service,
	// *corev1.ConfigMap, *appsv1.Deployment, *networkingv1.NetworkPolicy,
	// or *unstructured.Unstructured for a CiliumNetworkPolicy (cilium.io/v2),
	// whose rules the policy code interprets.
	Object runtime.Object
	// JSON is Object encoded as JSON.
	JSON []byte
}

// Step is one step of a scenario: exactly one of the action fields is set.
// Stop, Start and Restart share their fields (Process).
type Step struct {
	// Index counts steps from 1, as error messages and reports do.
	Index int
	// Name defaults to the action's name.
	Name string

	Apply       *Apply
	Delete      *Delete
	Scale       *Scale
	Annotate    *Annotate
	Curl        *Curl
	Traffic     *Traffic
	StopTraffic *StopTraffic
	Partition   *Partition
	Heal        *Heal
	Stop        *Stop
	Start       *Start
	Restart     *Restart
	Wait        *Wait
	AddNode     *AddNode
	Chaos       *Chaos

	Expect Expect
}

// Action is implemented by every action type.
type Action interface {
	// ActionName is the action's key in a scenario file ("curl",
	// "stopTraffic"), also used in reports.
	ActionName() string
}

// Action returns the step's action, nil only for a Step not made by the
// decoder.
func (s *Step) Action() Action {
	// A typed nil pointer in an interface is not nil, hence one case each.
	switch {
	case s.Apply != nil:
		return s.Apply
	case s.Delete != nil:
		return s.Delete
	case s.Scale != nil:
		return s.Scale
	case s.Annotate != nil:
		return s.Annotate
	case s.Curl != nil:
		return s.Curl
	case s.Traffic != nil:
		return s.Traffic
	case s.StopTraffic != nil:
		return s.StopTraffic
	case s.Partition != nil:
		return s.Partition
	case s.Heal != nil:
		return s.Heal
	case s.Stop != nil:
		return s.Stop
	case s.Start != nil:
		return s.Start
	case s.Restart != nil:
		return s.Restart
	case s.Wait != nil:
		return s.Wait
	case s.AddNode != nil:
		return s.AddNode
	case s.Chaos != nil:
		return s.Chaos
	}
	return nil
}

// Apply creates or updates objects, like kubectl apply.
type Apply struct{ Manifest }

// Delete deletes one object.
type Delete struct {
	Cluster string
	// Kind is one of the supported kinds (Namespace, Deployment, Service,
	// ConfigMap, CiliumNetworkPolicy, NetworkPolicy).
	Kind string
	// Namespace is empty for a Namespace and defaults to "default".
	Namespace string
	Name      string
	// GracePeriod (Deployment only) overrides its pods' grace period.
	GracePeriod *GracePeriod
}

// Scale sets a deployment's replicas, like kubectl scale.
type Scale struct {
	Cluster    string
	Namespace  string
	Deployment string
	Replicas   int
	// GracePeriod overrides the grace period of the pods a scale-down
	// removes.
	GracePeriod *GracePeriod
}

// GracePeriod is a step's gracePeriodSeconds: how long the pods that the
// step removes get to finish (0: killed at once, as kubectl delete
// --grace-period=0 --force). A nil *GracePeriod leaves each pod its own
// terminationGracePeriodSeconds (default 30 s); an idle pod goes at once
// either way.
type GracePeriod struct{ Seconds int64 }

func (g *GracePeriod) String() string {
	if g == nil {
		return "default"
	}
	return fmt.Sprintf("%ds", g.Seconds)
}

// Annotate sets or removes annotations of a service, like kubectl annotate.
type Annotate struct {
	Cluster   string
	Namespace string
	Service   string
	// Annotations maps a key to its new value; nil removes the key.
	Annotations map[string]*string
}

// Workload names a deployment in a cluster: curl and traffic pick one of
// its ready pods.
type Workload struct {
	Cluster    string
	Namespace  string
	Deployment string
}

// String formats w as the scenario file does: cluster/deployment, with the
// namespace in the middle when it is not "default".
func (w Workload) String() string {
	if w.Namespace == DefaultNamespace {
		return w.Cluster + "/" + w.Deployment
	}
	return w.Cluster + "/" + w.Namespace + "/" + w.Deployment
}

// Curl makes Count sequential requests from one pod of From.
type Curl struct {
	From    Workload
	URL     *url.URL
	Count   int
	Timeout time.Duration
}

// Traffic starts a background stream of requests, one every
// Rate.Interval(), until a StopTraffic of the same name.
type Traffic struct {
	Name    string
	From    Workload
	URL     *url.URL
	Rate    Rate
	Timeout time.Duration
}

// StopTraffic stops a stream; the stream's whole record is the step's result.
type StopTraffic struct{ Name string }

// Plane is what a partition cuts.
type Plane string

const (
	// PlaneBoth cuts everything between the groups, as a real network
	// partition does. The default.
	PlaneBoth Plane = "both"
	// PlaneData cuts pod and node traffic only.
	PlaneData Plane = "data"
	// PlaneControl cuts only connections between mesh control-plane
	// components of different clusters.
	PlaneControl Plane = "control"
)

// Member is a member of a partition group: a whole cluster (Node empty) or
// one node of it.
type Member struct {
	Cluster string
	Node    string
}

func (m Member) String() string {
	if m.Node == "" {
		return m.Cluster
	}
	return m.Cluster + "/" + m.Node
}

// Partition cuts the network between groups. Members not in any group keep
// their connectivity. No member appears twice, and a cluster never appears
// both whole and by node.
type Partition struct {
	Groups [][]Member
	Plane  Plane
	// OneWay cuts only traffic from the first group to the others.
	OneWay bool
}

// Heal removes every partition.
type Heal struct{}

// Component is a process that stop, start and restart act on.
type Component string

const (
	// ComponentAPIServer is a cluster's mesh-apiserver; stopping it also
	// stops its etcd.
	ComponentAPIServer   Component = "apiserver"
	ComponentKVStoreMesh Component = "kvstoremesh"
	ComponentAgent       Component = "agent"
)

// Process names one process: Node is set for agents only.
type Process struct {
	Component Component
	Cluster   string
	Node      string
}

// Stop, Start and Restart are process-level faults.
type (
	Stop    struct{ Process }
	Start   struct{ Process }
	Restart struct{ Process }
)

// Wait sleeps.
type Wait struct{ Duration time.Duration }

func (*Apply) ActionName() string       { return "apply" }
func (*Delete) ActionName() string      { return "delete" }
func (*Scale) ActionName() string       { return "scale" }
func (*Annotate) ActionName() string    { return "annotate" }
func (*Curl) ActionName() string        { return "curl" }
func (*Traffic) ActionName() string     { return "traffic" }
func (*StopTraffic) ActionName() string { return "stopTraffic" }
func (*Partition) ActionName() string   { return "partition" }
func (*Heal) ActionName() string        { return "heal" }
func (*Stop) ActionName() string        { return "stop" }
func (*Start) ActionName() string       { return "start" }
func (*Restart) ActionName() string     { return "restart" }

// AddNode is a new node joining a cluster: the next node-N, with its
// Kubernetes Node, datapath and agent. Pods are placed on it like on any
// node (a Deployment's nodeSelector on kubernetes.io/hostname pins them).
type AddNode struct {
	Cluster string
}

func (*AddNode) ActionName() string { return "addNode" }
func (*Wait) ActionName() string    { return "wait" }
func (*Chaos) ActionName() string   { return "chaos" }

// Expect holds a step's expectations; the zero value expects nothing.
type Expect struct {
	// Within, when non-zero, retries the action (or re-checks state
	// expectations) until every expectation holds, for at most this long.
	Within time.Duration
	// Responses maps a cluster name to the share or count of successful
	// responses it must have answered (curl, stopTraffic).
	Responses map[string]Matcher
	// Errors bounds the failed requests (curl, stopTraffic).
	Errors *Matcher
	// MaxOutage bounds the longest stretch in which every request failed
	// (stopTraffic; chaos: of every running stream during every fault).
	MaxOutage *time.Duration
	// Converge (chaos; heal, start and restart) bounds the time after
	// every heal until the final check passes.
	Converge time.Duration
	// Backends and KVStore are state expectations (any step). The file may
	// give one object or a list.
	Backends []BackendsExpect
	KVStore  []KVStoreExpect
	// Encrypted (curl): true asserts that no packet on the underlay between
	// the nodes involved carried a request or an answer in clear while the
	// requests ran (and that some requests did cross nodes, or the capture
	// proves nothing); false asserts that one did.
	Encrypted *bool
	// Events counts decision events recorded since the step began (any
	// step; one object or a list).
	Events []EventsExpect
}

// IsZero reports whether e expects nothing.
func (e *Expect) IsZero() bool {
	return e.Within == 0 && e.Responses == nil && e.Errors == nil && e.MaxOutage == nil && e.Converge == 0 &&
		e.Backends == nil && e.KVStore == nil && e.Encrypted == nil && e.Events == nil
}

// BackendsExpect: on every node of Cluster, the datapath's service map holds
// backends for the service from exactly the clusters From (empty: none).
type BackendsExpect struct {
	Cluster   string
	Namespace string
	Service   string
	// From is sorted and free of duplicates.
	From []string
}

// KVStoreExpect reads Cluster's mesh-apiserver etcd. Either Key is set (with
// Exists, and JSON when Exists), or Prefix with Count.
type KVStoreExpect struct {
	Cluster string

	Key    string
	Exists bool
	// JSON, when non-nil, must be a subset of the key's value: see
	// MatchJSONSubset.
	JSON any

	Prefix string
	Count  *Matcher
}

// NodeCapacity is how many nodes a cluster with pod CIDR p can hold: node-i
// takes the i-th /24 of it (the first /24 stays unused), as the simulator
// allocates them.
func NodeCapacity(p netip.Prefix) int {
	if !p.IsValid() || p.Bits() > 24 {
		return 0
	}
	return min(1<<(24-p.Bits())-1, MaxNodes)
}

// podCIDRFor is the widest pod CIDR prefix length that holds n nodes.
func podCIDRFor(n int) int {
	bits := 24
	for 1<<(24-bits)-1 < n {
		bits--
	}
	return bits
}
