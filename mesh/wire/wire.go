// Package wire defines the kvstore keys and values of the mesh, compatible
// with Cilium ClusterMesh (see docs/wire.md): cluster-config, sync
// canaries, nodes, cluster services, ipcache pairs and identities.
//
// Everything read from a remote cluster is untrusted. The Decode* functions
// parse a value, check it against its key and the cluster it came from, and
// return an error naming the key instead of a half-valid value.
package wire

import (
	"net"
	"time"
)

// Key prefixes and fixed keys.
const (
	Root              = "cilium/"
	HeartbeatKey      = "cilium/.heartbeat"
	ClusterConfigRoot = "cilium/cluster-config/"
	SyncedRoot        = "cilium/synced/"
	StateRoot         = "cilium/state/"
	CacheRoot         = "cilium/cache/"

	NodesPrefix      = "cilium/state/nodes/v1"
	ServicesPrefix   = "cilium/state/services/v1"
	IPPrefix         = "cilium/state/ip/v1"
	IdentitiesPrefix = "cilium/state/identities/v1"

	// IPDefaultScope is the constant path element of ipcache keys in the
	// source cluster (not the cluster name).
	IPDefaultScope = "default"
)

// Resource names the four kinds of state a cluster exports.
type Resource string

const (
	Nodes      Resource = "nodes"
	Services   Resource = "services"
	IP         Resource = "ip"
	Identities Resource = "identities"
)

// Resources in the order a reader should start them: identities before the
// ipcache entries that name them.
var Resources = []Resource{Identities, Nodes, IP, Services}

// MaxConnectedClusters255 and MaxConnectedClusters511 are the two supported
// mesh sizes; they set how identities are split between clusters.
const (
	MaxConnectedClusters255 = 255
	MaxConnectedClusters511 = 511
)

// ClusterConfig is the value of cilium/cluster-config/<cluster>.
type ClusterConfig struct {
	ID           uint32       `json:"id"`
	Capabilities Capabilities `json:"capabilities"`
}

// Capabilities of the cluster's mesh-apiserver.
type Capabilities struct {
	SyncedCanaries       bool   `json:"syncedCanaries"`
	Cached               bool   `json:"cached"`
	MaxConnectedClusters uint32 `json:"maxConnectedClusters"`
}

// PortConfig is a port of a ClusterService frontend or backend.
type PortConfig struct {
	Protocol string `json:"Protocol"`
	Port     uint16 `json:"Port"`
}

// PortConfiguration maps a port name to its port.
type PortConfiguration map[string]*PortConfig

// ClusterService is the value of cilium/state/services/v1/<cluster>/<ns>/<name>.
type ClusterService struct {
	Cluster         string                       `json:"cluster"`
	Namespace       string                       `json:"namespace"`
	Name            string                       `json:"name"`
	Frontends       map[string]PortConfiguration `json:"frontends"`
	Backends        map[string]PortConfiguration `json:"backends"`
	Hostnames       map[string]string            `json:"hostnames,omitempty"`
	Zones           map[string]BackendZone       `json:"zones,omitempty"`
	Labels          map[string]string            `json:"labels"`
	Selector        map[string]string            `json:"selector"`
	IncludeExternal bool                         `json:"includeExternal"`
	Shared          bool                         `json:"shared"`
	ClusterID       uint32                       `json:"clusterID"`
}

// BackendZone is the topology zone of a backend.
type BackendZone struct {
	Zone string `json:"zone,omitempty"`
}

// NamedPort is a named container port of a pod.
type NamedPort struct {
	Name     string `json:"Name"`
	Port     uint16 `json:"Port"`
	Protocol string `json:"Protocol"`
}

// IPIdentityPair is the value of cilium/state/ip/v1/default/<ip>.
type IPIdentityPair struct {
	IP           net.IP      `json:"IP"`
	Mask         net.IPMask  `json:"Mask,omitempty"`
	HostIP       net.IP      `json:"HostIP"`
	ID           uint32      `json:"ID"`
	Key          uint8       `json:"Key"`
	Metadata     string      `json:"Metadata,omitempty"`
	K8sNamespace string      `json:"K8sNamespace,omitempty"`
	K8sPodName   string      `json:"K8sPodName,omitempty"`
	NamedPorts   []NamedPort `json:"NamedPorts,omitempty"`
}

// NodeAddress is one address of a node.
type NodeAddress struct {
	Type string `json:"Type"`
	IP   net.IP `json:"IP"`
}

// Node is the value of cilium/state/nodes/v1/<cluster>/<node>.
type Node struct {
	Name          string            `json:"Name"`
	Cluster       string            `json:"Cluster"`
	ClusterID     uint32            `json:"ClusterID"`
	Source        string            `json:"Source"`
	IPAddresses   []NodeAddress     `json:"IPAddresses"`
	IPv4AllocCIDR *net.IPNet        `json:"IPv4AllocCIDR,omitempty"`
	IPv6AllocCIDR *net.IPNet        `json:"IPv6AllocCIDR,omitempty"`
	EncryptionKey uint8             `json:"EncryptionKey"`
	Labels        map[string]string `json:"Labels"`
	Annotations   map[string]string `json:"Annotations"`
	// WireguardPubKey is the node's WireGuard public key (base64), empty
	// when the node does not encrypt. Cilium writes the field always, ""
	// included; meshbed leaves an empty one out (the value a Cilium reader
	// decodes is the same) so a node that does not encrypt keeps the exact
	// value of WIRE.md's example.
	WireguardPubKey string `json:"WireguardPubKey,omitempty"`
}

// WireguardPubKeyAnnotation is the Kubernetes Node annotation in which a
// node's agent publishes its WireGuard public key (Cilium's name); the
// mesh-apiserver exports it as Node.WireguardPubKey.
const WireguardPubKeyAnnotation = "network.cilium.io/wg-pub-key"

// NodeAddressInternalIP is the address type of a node's tunnel endpoint.
const NodeAddressInternalIP = "InternalIP"

// Timestamp is the text written to heartbeat and canary keys.
func Timestamp(t time.Time) string { return t.UTC().Format(time.RFC3339Nano) }
