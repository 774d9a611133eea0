package engine

import (
	"context"
	"net/netip"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"

	"github.com/meshbed/meshbed/datapath/state"
	"github.com/meshbed/meshbed/scenarios"
)

// Target is where a scenario runs: the simulator (sim/target) or real
// clusters. The engine drives it through these methods only and never
// imports a target's package; internal/run and sim/control (for
// cmd/meshbed) and tests pick the target and hand it to Start or Run.
//
// Every method takes a context and returns an error rather than panicking
// on something the target cannot do; no method returns a type of a
// target's own package, so that a target built on client-go and exec (Kind)
// implements the same interface as the simulator. Cluster names are those of
// the scenario's topology; node names are node-1..node-N.
//
// # Capabilities
//
// A target may lack some capabilities: a Kind target may be unable to cut
// the control plane alone, to cut one direction only, to isolate a single
// node, or to stop a component. Supports answers for each Capability, and
// the engine asks it for every step of a scenario before Up: a step that
// needs a capability the target lacks fails the run before anything
// starts, with an error naming the step, the capability and the target
// (see ErrUnsupported). A method called for a capability the target does
// not support returns an error wrapping ErrUnsupported.
//
// # Life cycle
//
// Up builds the mesh of the scenario's topology and returns once every
// component runs; the engine then applies the manifests (Apply) and waits
// for Settle. Close tears down what Up built, also after a failed Up.
type Target interface {
	// Name names the target in reports and errors ("sim", "kind").
	Name() string
	// Supports reports whether the target can perform c.
	Supports(c Capability) bool

	// Up builds and starts the mesh of sc's topology.
	Up(ctx context.Context, sc *scenarios.Scenario) error
	// Settle waits until the mesh has converged: every Deployment ready,
	// every agent running and synced with its remote clusters, and
	// (without a partition) every remote cluster up and reachable.
	Settle(ctx context.Context) error
	// Recover heals every partition and starts every stopped component:
	// the first part of the final check.
	Recover(ctx context.Context) error
	// Close stops everything Up started and removes what it created.
	Close() error

	// Apply creates or updates objects in a cluster, like kubectl apply.
	Apply(ctx context.Context, cluster string, objs []scenarios.Object) error
	// Delete deletes one object (namespace empty for cluster-scoped kinds).
	// grace, for a Deployment, overrides its pods' grace period (nil: their
	// own terminationGracePeriodSeconds; 0: killed at once).
	Delete(ctx context.Context, cluster, kind, namespace, name string, grace *scenarios.GracePeriod) error
	// Scale sets a Deployment's replicas; grace overrides the grace period
	// of the pods a scale-down removes, as for Delete.
	Scale(ctx context.Context, cluster, namespace, deployment string, replicas int, grace *scenarios.GracePeriod) error
	// Annotate sets (or, for a nil value, removes) annotations of a Service.
	Annotate(ctx context.Context, cluster, namespace, service string, annotations map[string]*string) error

	// Client returns a client that sends HTTP GETs to url from one ready
	// pod of the workload, each request on a new connection and bounded by
	// timeout. Service names in url resolve as the pod's cluster DNS would
	// resolve them.
	Client(ctx context.Context, from scenarios.Workload, url string, timeout time.Duration) (Client, error)

	// Partition cuts the network between the groups (see
	// scenarios.Partition); Heal removes every partition.
	Partition(ctx context.Context, groups [][]scenarios.Member, plane scenarios.Plane, oneWay bool) error
	Heal(ctx context.Context) error
	// Stop, Start and Restart act on a mesh process: an apiserver (with its
	// etcd), a kvstoremesh, or the agent of one node (all nodes when Node is
	// empty).
	Stop(ctx context.Context, p scenarios.Process) error
	Start(ctx context.Context, p scenarios.Process) error
	Restart(ctx context.Context, p scenarios.Process) error
	// Components reports every mesh process of the cluster (its
	// apiserver, its kvstoremesh when the topology runs one, the agent of
	// every node): whether it runs, and the error of one that exited on
	// its own. The chaos checker reads it to catch a crash.
	Components(ctx context.Context, cluster string) ([]ComponentStatus, error)

	// Backends reads, on every node of the cluster in node order, the
	// datapath's service map: the cluster IDs of the active backends of the
	// service's ClusterIP frontends, sorted.
	Backends(ctx context.Context, cluster, namespace, service string) ([]NodeBackends, error)
	// Policies reports, over the cluster's agents, the policies enforced
	// with a limitation (policy reference to warnings) and those rejected
	// (policy reference to the reason).
	Policies(ctx context.Context, cluster string) (warnings map[string][]string, rejected map[string]string, err error)

	// The reads of the final check.
	Reader
}

// Reader is what the final check (FinalCheck) reads of a target; every
// Target is one.
type Reader interface {
	// KVGet reads one key of the cluster's mesh-apiserver etcd.
	KVGet(ctx context.Context, cluster, key string) (value []byte, found bool, err error)
	// KVList reads every key of the cluster's mesh-apiserver etcd that
	// begins with prefix, a plain key prefix as etcdctl get --prefix takes
	// it (no "/" is added).
	KVList(ctx context.Context, cluster, prefix string) (map[string][]byte, error)
	// Objects reads the cluster's Services, EndpointSlices and Pods (all
	// namespaces) from its Kubernetes API.
	Objects(ctx context.Context, cluster string) (*ClusterObjects, error)
	// Nodes reads every node of the cluster, in node order: what its agent
	// wants and what its datapath holds.
	Nodes(ctx context.Context, cluster string) ([]NodeState, error)
}

// Client sends requests from one pod; it is safe for concurrent use.
type Client interface {
	// Get makes one request. Its failures are in the Result: a failed
	// request is an outcome, not an error of the run.
	Get(ctx context.Context) Result
}

// Result is one request of a curl or a traffic stream.
type Result struct {
	Start    time.Time
	Duration time.Duration
	// Cluster is the cluster that answered ("" when the request failed).
	Cluster string
	// Node is the node of the answering pod, when the answer says
	// ("" otherwise).
	Node string
	Err  error
}

// ComponentStatus is one mesh process as Target.Components sees it.
type ComponentStatus struct {
	// Process names it (Node set for an agent).
	Process scenarios.Process
	// Running is false once it was stopped, or exited.
	Running bool
	// Exited is the error of a process that ended without being stopped;
	// empty otherwise.
	Exited string
}

// NodeBackends is what one node's datapath holds for a service.
type NodeBackends struct {
	Node string
	// ClusterIDs of the active backends, sorted, each once.
	ClusterIDs []uint32
}

// ClusterObjects are a cluster's Kubernetes objects as the final check
// reads them.
type ClusterObjects struct {
	Services       []corev1.Service
	EndpointSlices []discoveryv1.EndpointSlice
	Pods           []corev1.Pod
}

// NodeState is one node as the final check reads it: what its agent wants
// and what its datapath holds.
type NodeState struct {
	Node string
	// Running is false while the node's agent is stopped.
	Running bool
	// Desired is the agent's last desired state, nil when it is stopped or
	// has programmed nothing yet.
	Desired *state.State
	// Services and IPCache are read back from the node's BPF maps; a
	// service's backends are the active ones, in slot order.
	Services []state.Service
	IPCache  []state.IPCacheEntry
	// Encryption is the node's WireGuard device as read back, nil when the
	// node does not encrypt.
	Encryption *NodeEncryption
}

// NodeEncryption is a node's WireGuard device: its public key and peers.
type NodeEncryption struct {
	PublicKey string
	Peers     []EncryptionPeer
}

// EncryptionPeer is one configured peer.
type EncryptionPeer struct {
	PublicKey  string
	Endpoint   netip.Addr
	AllowedIPs []netip.Prefix
}
