package wire

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
)

// DecodeError is returned by every Decode function: the key whose value was
// rejected and why. Callers log it and ignore the entry; it never means the
// connection is broken.
type DecodeError struct {
	Key string
	Err error
}

func (e *DecodeError) Error() string { return fmt.Sprintf("decode %q: %v", e.Key, e.Err) }
func (e *DecodeError) Unwrap() error { return e.Err }

func invalid(key string, format string, args ...any) error {
	return &DecodeError{Key: key, Err: fmt.Errorf(format, args...)}
}

// unmarshal rejects empty values and JSON null, which json.Unmarshal would
// silently turn into a zero value.
func unmarshal(key string, value []byte, v any) error {
	trimmed := bytes.TrimSpace(value)
	if len(trimmed) == 0 || bytes.Equal(trimmed, []byte("null")) {
		return invalid(key, "empty value")
	}
	if err := json.Unmarshal(value, v); err != nil {
		return &DecodeError{Key: key, Err: fmt.Errorf("malformed JSON: %w", err)}
	}
	return nil
}

// parseKeyOf parses key, checks its resource and that it belongs to
// cluster when it names one.
func parseKeyOf(key string, r Resource, cluster string) (Key, error) {
	k, err := ParseKey(key)
	if err != nil {
		return k, &DecodeError{Key: key, Err: err}
	}
	if k.Resource != r {
		return k, invalid(key, "is a %s key, want %s", k.Resource, r)
	}
	if k.Cluster != "" && k.Cluster != cluster {
		return k, invalid(key, "key names cluster %q, want %q", k.Cluster, cluster)
	}
	return k, nil
}

// DecodeClusterConfig decodes the value of ClusterConfigKey(cluster). A
// missing maxConnectedClusters means 255 (older writers omit it) and is
// returned as 255. The ID must be valid for maxConnectedClusters.
func DecodeClusterConfig(key string, value []byte, cluster string) (ClusterConfig, error) {
	var c ClusterConfig
	if err := ValidateClusterName(cluster); err != nil {
		return c, &DecodeError{Key: key, Err: err}
	}
	if key != ClusterConfigKey(cluster) {
		return c, invalid(key, "want key %q", ClusterConfigKey(cluster))
	}
	if err := unmarshal(key, value, &c); err != nil {
		return ClusterConfig{}, err
	}
	if c.Capabilities.MaxConnectedClusters == 0 {
		c.Capabilities.MaxConnectedClusters = MaxConnectedClusters255
	}
	if err := ValidateClusterID(c.ID, c.Capabilities.MaxConnectedClusters); err != nil {
		return ClusterConfig{}, &DecodeError{Key: key, Err: err}
	}
	return c, nil
}

// validProtocols are the L4 protocols a service port may carry.
var validProtocols = map[string]bool{"TCP": true, "UDP": true, "SCTP": true, "ANY": true}

func checkAddrKeys[V any](key, field string, m map[string]V) error {
	for s := range m {
		if _, err := parseIP(s); err != nil {
			return invalid(key, "%s: %v", field, err)
		}
	}
	return nil
}

func parseIP(s string) (netip.Addr, error) {
	a, err := netip.ParseAddr(s)
	if err != nil {
		return a, fmt.Errorf("%q is not an IP address", s)
	}
	if a.Zone() != "" {
		return a, fmt.Errorf("address %q has a zone", s)
	}
	return a, nil
}

func checkPorts(key, field string, m map[string]PortConfiguration) error {
	if err := checkAddrKeys(key, field, m); err != nil {
		return err
	}
	for addr, ports := range m {
		for name, p := range ports {
			if p == nil {
				return invalid(key, "%s %s port %q: null", field, addr, name)
			}
			if !validProtocols[p.Protocol] {
				return invalid(key, "%s %s port %q: protocol %q", field, addr, name, p.Protocol)
			}
			if p.Port == 0 {
				return invalid(key, "%s %s port %q: port 0", field, addr, name)
			}
		}
	}
	return nil
}

// DecodeClusterService decodes a service key (state or cache layout) of
// cluster. The value's cluster, namespace and name must match the key, its
// clusterID must be clusterID, and every frontend, backend, hostname and
// zone address must be an IP.
func DecodeClusterService(key string, value []byte, cluster string, clusterID uint32) (*ClusterService, error) {
	k, err := parseKeyOf(key, Services, cluster)
	if err != nil {
		return nil, err
	}
	var s ClusterService
	if err := unmarshal(key, value, &s); err != nil {
		return nil, err
	}
	switch {
	case s.Cluster != cluster:
		return nil, invalid(key, "value cluster %q, want %q", s.Cluster, cluster)
	case s.Namespace != k.Namespace || s.Name != k.Name:
		return nil, invalid(key, "value names %s/%s, key %s/%s", s.Namespace, s.Name, k.Namespace, k.Name)
	case s.ClusterID != clusterID:
		return nil, invalid(key, "value clusterID %d, want %d", s.ClusterID, clusterID)
	}
	if err := checkPorts(key, "frontend", s.Frontends); err != nil {
		return nil, err
	}
	if err := checkPorts(key, "backend", s.Backends); err != nil {
		return nil, err
	}
	if err := checkAddrKeys(key, "hostnames", s.Hostnames); err != nil {
		return nil, err
	}
	if err := checkAddrKeys(key, "zones", s.Zones); err != nil {
		return nil, err
	}
	return &s, nil
}

// ipAddr converts a decoded net.IP (16 bytes for IPv4) to the netip form of
// its family.
func ipAddr(ip net.IP) (netip.Addr, bool) {
	a, ok := netip.AddrFromSlice(ip)
	return a.Unmap(), ok
}

// DecodeIPIdentityPair decodes an ipcache key (state or cache layout) of
// cluster. The value's IP (and Mask) must be the key's address (prefix);
// the identity must be reserved or in the cluster's range. A remote entry
// carrying the host identity is returned as remote-node, as it is the
// remote cluster's host, not ours.
func DecodeIPIdentityPair(key string, value []byte, cluster string, clusterID, maxConnected uint32) (*IPIdentityPair, error) {
	k, err := parseKeyOf(key, IP, cluster)
	if err != nil {
		return nil, err
	}
	var p IPIdentityPair
	if err := unmarshal(key, value, &p); err != nil {
		return nil, err
	}
	addr, ok := ipAddr(p.IP)
	if !ok {
		return nil, invalid(key, "value has no valid IP")
	}
	if k.IsCIDR {
		if p.Mask == nil {
			return nil, invalid(key, "CIDR key but value has no mask")
		}
		ones, bits := p.Mask.Size()
		if bits != addr.BitLen() {
			return nil, invalid(key, "mask %s does not fit %s", p.Mask, addr)
		}
		if got := netip.PrefixFrom(addr, ones); got != k.Prefix {
			return nil, invalid(key, "value prefix %s, key %s", got, k.Prefix)
		}
	} else {
		if p.Mask != nil {
			return nil, invalid(key, "address key but value has a mask")
		}
		if addr != k.Prefix.Addr() {
			return nil, invalid(key, "value IP %s, key %s", addr, k.Prefix.Addr())
		}
	}
	if p.HostIP != nil {
		if _, ok := ipAddr(p.HostIP); !ok {
			return nil, invalid(key, "invalid HostIP")
		}
	}
	if p.ID == 0 {
		return nil, invalid(key, "identity 0")
	}
	if err := CheckClusterIdentity(p.ID, clusterID, maxConnected); err != nil {
		return nil, &DecodeError{Key: key, Err: err}
	}
	if p.ID == IdentityHost {
		p.ID = IdentityRemoteNode
	}
	return &p, nil
}

// DecodeNode decodes a node key (state or cache layout) of cluster. Name,
// Cluster and ClusterID must match; there must be at least one address and
// every address and allocation CIDR must be well formed.
func DecodeNode(key string, value []byte, cluster string, clusterID uint32) (*Node, error) {
	k, err := parseKeyOf(key, Nodes, cluster)
	if err != nil {
		return nil, err
	}
	var n Node
	if err := unmarshal(key, value, &n); err != nil {
		return nil, err
	}
	switch {
	case n.Name != k.Name:
		return nil, invalid(key, "value name %q, key %q", n.Name, k.Name)
	case n.Cluster != cluster:
		return nil, invalid(key, "value cluster %q, want %q", n.Cluster, cluster)
	case n.ClusterID != clusterID:
		return nil, invalid(key, "value ClusterID %d, want %d", n.ClusterID, clusterID)
	case len(n.IPAddresses) == 0:
		return nil, invalid(key, "node has no address")
	}
	for i, a := range n.IPAddresses {
		if _, ok := ipAddr(a.IP); !ok {
			return nil, invalid(key, "address %d (%s) is not an IP", i, a.Type)
		}
	}
	if err := checkCIDR(n.IPv4AllocCIDR, true); err != nil {
		return nil, invalid(key, "IPv4AllocCIDR: %v", err)
	}
	if err := checkCIDR(n.IPv6AllocCIDR, false); err != nil {
		return nil, invalid(key, "IPv6AllocCIDR: %v", err)
	}
	return &n, nil
}

// checkCIDR accepts nil or a canonical network of the given family.
func checkCIDR(n *net.IPNet, v4 bool) error {
	if n == nil {
		return nil
	}
	addr, ok := ipAddr(n.IP)
	if !ok {
		return errors.New("no valid IP")
	}
	if addr.Is4() != v4 {
		return fmt.Errorf("%s has the wrong family", addr)
	}
	ones, bits := n.Mask.Size()
	if bits != addr.BitLen() {
		return fmt.Errorf("mask %s does not fit %s", n.Mask, addr)
	}
	if p := netip.PrefixFrom(addr, ones); p.Masked() != p {
		return fmt.Errorf("%s is not a network address", p)
	}
	return nil
}

// Identity is a decoded identity key.
type Identity struct {
	ID     uint32
	Labels Labels
}

// DecodeIdentity decodes an identity key (state or cache layout) of
// cluster: the ID must be in the cluster's range (kvstore identities are
// never reserved), the value must be a well-formed label string, and it
// must carry io.cilium.k8s.policy.cluster=<cluster>.
func DecodeIdentity(key string, value []byte, cluster string, clusterID, maxConnected uint32) (Identity, error) {
	k, err := parseKeyOf(key, Identities, cluster)
	if err != nil {
		return Identity{}, err
	}
	if IsReservedIdentity(k.Identity) {
		return Identity{}, invalid(key, "reserved identity %d in the kvstore", k.Identity)
	}
	if err := CheckClusterIdentity(k.Identity, clusterID, maxConnected); err != nil {
		return Identity{}, &DecodeError{Key: key, Err: err}
	}
	labels, err := ParseLabels(string(value))
	if err != nil {
		return Identity{}, &DecodeError{Key: key, Err: err}
	}
	if c, ok := labels.Get(PolicyClusterLabel); !ok || c != cluster {
		return Identity{}, invalid(key, "label %s=%q, want %q", PolicyClusterLabel, c, cluster)
	}
	return Identity{ID: k.Identity, Labels: labels}, nil
}
