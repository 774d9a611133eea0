// Package state is the desired datapath state: the one type the control plane
// (mesh/...) hands to the datapath (datapath/...). It imports neither side, so
// the agent can compute it without netlink or BPF and the datapath can apply
// it without etcd or client-go.
//
// A State is a complete snapshot. The datapath reconciles its maps to it
// incrementally: entries equal to what is already programmed are not
// rewritten, entries no longer present are removed.
package state

import (
	"fmt"
	"net/netip"
)

// Protocol is an IP protocol number as carried in the IP header.
type Protocol uint8

// Protocols the datapath load-balances and enforces policy on.
const (
	ProtoAny Protocol = 0 // policy only: any protocol
	TCP      Protocol = 6
	UDP      Protocol = 17
)

func (p Protocol) String() string {
	switch p {
	case ProtoAny:
		return "ANY"
	case TCP:
		return "TCP"
	case UDP:
		return "UDP"
	}
	return fmt.Sprintf("proto-%d", uint8(p))
}

// ParseProtocol accepts TCP, UDP and ANY (any case is not accepted: Kubernetes
// and Cilium spell them in upper case).
func ParseProtocol(s string) (Protocol, error) {
	switch s {
	case "TCP", "":
		return TCP, nil
	case "UDP":
		return UDP, nil
	case "ANY":
		return ProtoAny, nil
	}
	return 0, fmt.Errorf("unsupported protocol %q (want TCP, UDP or ANY)", s)
}

// Reserved security identities, shared by every cluster of the mesh.
const (
	IdentityUnknown       uint32 = 0
	IdentityHost          uint32 = 1
	IdentityWorld         uint32 = 2
	IdentityUnmanaged     uint32 = 3
	IdentityHealth        uint32 = 4
	IdentityInit          uint32 = 5
	IdentityRemoteNode    uint32 = 6
	IdentityKubeAPIServer uint32 = 7
	// IdentityMinCluster is the smallest identity a cluster allocates
	// locally; below it are the reserved ones.
	IdentityMinCluster uint32 = 256
	// IdentityMax is the largest identity that fits the 24-bit VNI.
	IdentityMax uint32 = 1<<24 - 1
)

// Frontend is a service address as clients see it.
type Frontend struct {
	IP       netip.Addr
	Port     uint16
	Protocol Protocol
}

func (f Frontend) String() string {
	return fmt.Sprintf("%s/%s", netip.AddrPortFrom(f.IP, f.Port), f.Protocol)
}

// BackendState says whether a backend takes new connections.
type BackendState uint8

const (
	// BackendActive backends are chosen for new connections.
	BackendActive BackendState = iota
	// BackendTerminating backends keep their established connections but
	// are never chosen for new ones.
	BackendTerminating
)

// Backend is one address a frontend forwards to.
type Backend struct {
	IP       netip.Addr
	Port     uint16
	Protocol Protocol
	// ClusterID is the cluster the backend lives in (1..511).
	ClusterID uint32
	State     BackendState
}

func (b Backend) String() string {
	return fmt.Sprintf("%s/%s@%d", netip.AddrPortFrom(b.IP, b.Port), b.Protocol, b.ClusterID)
}

// Service is one frontend and the backends new connections to it are spread
// over. The control plane has already applied merge, shared and affinity
// rules: every Active backend here is eligible.
type Service struct {
	// Name is namespace/name, for flow events and error messages.
	Name     string
	Frontend Frontend
	Backends []Backend
}

// IPCacheEntry maps a prefix (a pod IP as /32, or a CIDR) to the security
// identity of what lives there and, for addresses on other nodes, the
// tunnel endpoint to reach them.
type IPCacheEntry struct {
	Prefix   netip.Prefix
	Identity uint32
	// TunnelEndpoint is the IP of the node hosting the address; the zero
	// Addr means the address is local or reached without a tunnel.
	TunnelEndpoint netip.Addr
	// ClusterID is the cluster the address belongs to; 0 for world.
	ClusterID uint32
}

// Node is a node of this or another cluster, for routes and tunnels.
type Node struct {
	Name      string
	Cluster   string
	ClusterID uint32
	IP        netip.Addr
	PodCIDR   netip.Prefix
	// WireguardPubKey is the node's WireGuard public key as it published
	// it (base64, not yet validated: the datapath rejects one that does
	// not decode); empty when it publishes none.
	WireguardPubKey string
}

// Endpoint is a pod on this node.
type Endpoint struct {
	// ID is the endpoint ID, unique on the node, 1..65535.
	ID       uint16
	IP       netip.Addr
	Identity uint32
	// Interface is the name of the host-side veth of the pod.
	Interface string
	// Policy is this endpoint's allow sets; nil means no policy selects it
	// and everything is allowed in both directions.
	Policy *EndpointPolicy
}

// Direction of traffic as seen from the endpoint.
type Direction uint8

const (
	Ingress Direction = iota
	Egress
)

func (d Direction) String() string {
	if d == Ingress {
		return "ingress"
	}
	return "egress"
}

// PolicyKey is one allowed (peer identity, port range, protocol) in one
// direction. Identity 0 means any peer; Port 0 means any port; EndPort is the
// inclusive end of a port range (0 or equal to Port for a single port).
type PolicyKey struct {
	Direction Direction
	Identity  uint32
	Protocol  Protocol
	Port      uint16
	EndPort   uint16
}

// EndpointPolicy is what an endpoint may talk to. A direction that is not
// enforced allows everything; an enforced direction allows only Allow's
// entries of that direction (replies of allowed connections always pass).
type EndpointPolicy struct {
	IngressEnforced bool
	EgressEnforced  bool
	Allow           []PolicyKey
}

// RoutingMode selects how packets reach other nodes.
type RoutingMode uint8

const (
	// Tunnel encapsulates in VXLAN with the source identity in the VNI.
	Tunnel RoutingMode = iota
	// Native hands packets to the host stack, which routes them.
	Native
)

// State is the complete desired state of one node's datapath.
type State struct {
	Services  []Service
	IPCache   []IPCacheEntry
	Nodes     []Node
	Endpoints []Endpoint
}

// Datapath is implemented by the datapath and driven by the agent.
type Datapath interface {
	// Apply reconciles the programmed state to s. It is idempotent; on error
	// the datapath keeps a consistent earlier state for every service it
	// could not update and the caller retries later.
	Apply(s *State) error
}

// PlumbRequest describes the network interface to create for a pod on this
// node, as the CNI path asks for it.
type PlumbRequest struct {
	// ID is the endpoint ID the agent allocated.
	ID uint16
	// Namespace and Pod name the pod, for interface naming and errors.
	Namespace, Pod string
	// NetNS is the path of the pod's network namespace, as CNI passes it.
	NetNS string
	// IP is the pod's address, from the node's pod CIDR.
	IP netip.Addr
}

// Plumber creates and removes pods' interfaces on a node. The agent owns
// endpoint addresses and identities; the datapath owns the interfaces.
type Plumber interface {
	// Plumb creates the pod's interface and returns the name of its
	// host-side end.
	Plumb(req PlumbRequest) (hostIf string, err error)
	// Unplumb removes what Plumb created.
	Unplumb(hostIf string) error
}
