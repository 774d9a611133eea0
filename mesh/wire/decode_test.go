package wire

import (
	"encoding/json"
	"errors"
	"net/netip"
	"strings"
	"testing"
)

const (
	testCluster   = "cluster1"
	testClusterID = 1
)

// Values as Cilium writes them (docs/wire.md).
const (
	validConfig  = `{"id":1,"capabilities":{"syncedCanaries":true,"cached":false,"maxConnectedClusters":255}}`
	validService = `{"cluster":"cluster1","namespace":"default","name":"rebel-base",
 "frontends":{"10.11.0.42":{"http":{"Protocol":"TCP","Port":80}}},
 "backends":{"10.10.1.7":{"http":{"Protocol":"TCP","Port":80}}},
 "labels":{},"selector":{"name":"rebel-base"},
 "includeExternal":true,"shared":true,"clusterID":1}`
	validPair = `{"IP":"10.10.1.7","HostIP":"172.18.0.3","ID":65793,"Key":0,
 "K8sNamespace":"default","K8sPodName":"rebel-base-6d4f8-abcde",
 "NamedPorts":[{"Name":"http","Port":80,"Protocol":"TCP"}]}`
	validNode = `{"Name":"cluster1-worker","Cluster":"cluster1","ClusterID":1,"Source":"custom-resource",
 "IPAddresses":[{"Type":"InternalIP","IP":"172.18.0.3"}],
 "IPv4AllocCIDR":{"IP":"10.10.1.0","Mask":"////AA=="},
 "EncryptionKey":0,"Labels":{},"Annotations":{}}`
	validIdentity = "k8s:app=rebel-base;k8s:io.cilium.k8s.policy.cluster=cluster1;k8s:io.kubernetes.pod.namespace=default;"
)

// edit returns validJSON with field set to v (nil deletes it).
func edit(t testing.TB, validJSON string, field string, v any) string {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal([]byte(validJSON), &m); err != nil {
		t.Fatal(err)
	}
	if v == nil {
		delete(m, field)
	} else {
		m[field] = v
	}
	b, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// checkErr asserts the outcome and that a rejection names the key.
func checkErr(t *testing.T, key string, err error, wantErr bool) {
	t.Helper()
	if (err != nil) != wantErr {
		t.Fatalf("err = %v, wantErr %v", err, wantErr)
	}
	if err != nil {
		var de *DecodeError
		if !errors.As(err, &de) || de.Key != key || !strings.Contains(err.Error(), key) {
			t.Errorf("error %q is not a DecodeError naming %q", err, key)
		}
	}
}

func TestDecodeClusterConfig(t *testing.T) {
	key := ClusterConfigKey(testCluster)
	tests := []struct {
		name, key, value string
		wantErr          bool
		wantMax          uint32
	}{
		{"valid", key, validConfig, false, 255},
		{"511", key, `{"id":300,"capabilities":{"maxConnectedClusters":511}}`, false, 511},
		{"max omitted means 255", key, `{"id":3,"capabilities":{}}`, false, 255},
		{"id 0", key, `{"id":0}`, true, 0},
		{"id above 255", key, `{"id":300,"capabilities":{"maxConnectedClusters":255}}`, true, 0},
		{"bad max", key, `{"id":1,"capabilities":{"maxConnectedClusters":100}}`, true, 0},
		{"wrong key", ClusterConfigKey("cluster2"), validConfig, true, 0},
		{"null", key, `null`, true, 0},
		{"empty", key, ``, true, 0},
		{"truncated", key, validConfig[:20], true, 0},
		{"trailing garbage", key, validConfig + "x", true, 0},
		{"wrong type", key, `{"id":"1"}`, true, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := DecodeClusterConfig(tt.key, []byte(tt.value), testCluster)
			checkErr(t, tt.key, err, tt.wantErr)
			if err == nil && c.Capabilities.MaxConnectedClusters != tt.wantMax {
				t.Errorf("maxConnectedClusters = %d, want %d", c.Capabilities.MaxConnectedClusters, tt.wantMax)
			}
		})
	}
}

func TestDecodeClusterService(t *testing.T) {
	key := ServiceKey(testCluster, "default", "rebel-base")
	cacheKey := "cilium/cache/services/v1/cluster1/default/rebel-base"
	tests := []struct {
		name, key, value string
		wantErr          bool
	}{
		{"valid", key, validService, false},
		{"valid from cache", cacheKey, validService, false},
		{"headless", key, edit(t, validService, "frontends", map[string]any{}), false},
		{"ipv6 backend", key, edit(t, validService, "backends", map[string]any{"fd00::7": map[string]any{"http": map[string]any{"Protocol": "TCP", "Port": 80}}}), false},
		{"wrong cluster in value", key, edit(t, validService, "cluster", "cluster2"), true},
		{"wrong cluster in key", ServiceKey("cluster2", "default", "rebel-base"), edit(t, validService, "cluster", "cluster2"), true},
		{"wrong namespace", key, edit(t, validService, "namespace", "kube-system"), true},
		{"wrong name", key, edit(t, validService, "name", "x"), true},
		{"wrong clusterID", key, edit(t, validService, "clusterID", 2), true},
		{"bad backend IP", key, edit(t, validService, "backends", map[string]any{"10.10.1.300": map[string]any{}}), true},
		{"bad frontend IP", key, edit(t, validService, "frontends", map[string]any{"x": map[string]any{}}), true},
		{"bad hostname IP", key, edit(t, validService, "hostnames", map[string]any{"x": "h"}), true},
		{"bad zone IP", key, edit(t, validService, "zones", map[string]any{"x": map[string]any{}}), true},
		{"null port", key, edit(t, validService, "backends", map[string]any{"10.0.0.1": map[string]any{"http": nil}}), true},
		{"bad protocol", key, edit(t, validService, "backends", map[string]any{"10.0.0.1": map[string]any{"http": map[string]any{"Protocol": "ICMP", "Port": 80}}}), true},
		{"port 0", key, edit(t, validService, "backends", map[string]any{"10.0.0.1": map[string]any{"http": map[string]any{"Protocol": "TCP", "Port": 0}}}), true},
		{"port overflow", key, edit(t, validService, "backends", map[string]any{"10.0.0.1": map[string]any{"http": map[string]any{"Protocol": "TCP", "Port": 70000}}}), true},
		{"not a service key", NodeKey(testCluster, "x"), validService, true},
		{"malformed", key, `{"cluster":`, true},
		{"null", key, `null`, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := DecodeClusterService(tt.key, []byte(tt.value), testCluster, testClusterID)
			checkErr(t, tt.key, err, tt.wantErr)
			if err == nil && (s.Name != "rebel-base" || s.Cluster != testCluster) {
				t.Errorf("decoded %+v", s)
			}
		})
	}
}

func TestDecodeIPIdentityPair(t *testing.T) {
	key := IPKey("10.10.1.7")
	tests := []struct {
		name, key, value string
		clusterID        uint32
		maxConnected     uint32
		wantErr          bool
		wantID           uint32
	}{
		{"valid", key, validPair, 1, 255, false, 65793},
		{"valid from cache", "cilium/cache/ip/v1/cluster1/10.10.1.7", validPair, 1, 255, false, 65793},
		{"cache key of another cluster", "cilium/cache/ip/v1/cluster2/10.10.1.7", validPair, 1, 255, true, 0},
		{"host becomes remote-node", key, edit(t, validPair, "ID", 1), 1, 255, false, IdentityRemoteNode},
		{"world stays", key, edit(t, validPair, "ID", 2), 1, 255, false, IdentityWorld},
		{"identity 0", key, edit(t, validPair, "ID", 0), 1, 255, true, 0},
		{"identity of another cluster", key, edit(t, validPair, "ID", 131073), 1, 255, true, 0},
		{"identity of cluster 2", key, edit(t, validPair, "ID", 131073), 2, 255, false, 131073},
		{"identity above range with 511", key, validPair, 1, 511, true, 0},
		{"IP differs from key", IPKey("10.10.1.8"), validPair, 1, 255, true, 0},
		{"bad IP", key, edit(t, validPair, "IP", "10.10.1.700"), 1, 255, true, 0},
		{"no IP", key, edit(t, validPair, "IP", nil), 1, 255, true, 0},
		{"bad host IP", key, edit(t, validPair, "HostIP", "host"), 1, 255, true, 0},
		{"mask on address key", key, edit(t, validPair, "Mask", "////AA=="), 1, 255, true, 0},
		{"cidr key", IPKey("10.10.1.0/24"), edit(t, edit(t, validPair, "IP", "10.10.1.0"), "Mask", "////AA=="), 1, 255, false, 65793},
		{"cidr key without mask", IPKey("10.10.1.0/24"), edit(t, validPair, "IP", "10.10.1.0"), 1, 255, true, 0},
		{"cidr key, other mask", IPKey("10.10.1.0/24"), edit(t, edit(t, validPair, "IP", "10.10.1.0"), "Mask", "//8AAA=="), 1, 255, true, 0},
		{"ipv6", IPKey("fd00::7"), edit(t, validPair, "IP", "fd00::7"), 1, 255, false, 65793},
		{"ipv4 value for ipv6 key", IPKey("::ffff:10.10.1.7"), validPair, 1, 255, true, 0},
		{"malformed", key, `{"IP":"10.10.1.7",`, 1, 255, true, 0},
		{"wrong resource", NodeKey(testCluster, "x"), validPair, 1, 255, true, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := DecodeIPIdentityPair(tt.key, []byte(tt.value), testCluster, tt.clusterID, tt.maxConnected)
			checkErr(t, tt.key, err, tt.wantErr)
			if err == nil && p.ID != tt.wantID {
				t.Errorf("ID = %d, want %d", p.ID, tt.wantID)
			}
		})
	}
}

func TestDecodeNode(t *testing.T) {
	key := NodeKey(testCluster, "cluster1-worker")
	tests := []struct {
		name, key, value string
		wantErr          bool
	}{
		{"valid", key, validNode, false},
		{"valid from cache", "cilium/cache/nodes/v1/cluster1/cluster1-worker", validNode, false},
		{"no cidr", key, edit(t, validNode, "IPv4AllocCIDR", nil), false},
		{"ipv6 cidr", key, edit(t, validNode, "IPv6AllocCIDR", map[string]any{"IP": "fd00:10::", "Mask": "//////////8AAAAAAAAAAA=="}), false},
		{"wrong name", key, edit(t, validNode, "Name", "other"), true},
		{"wrong cluster", key, edit(t, validNode, "Cluster", "cluster2"), true},
		{"wrong cluster id", key, edit(t, validNode, "ClusterID", 2), true},
		{"no addresses", key, edit(t, validNode, "IPAddresses", []any{}), true},
		{"null address", key, edit(t, validNode, "IPAddresses", []any{map[string]any{"Type": "InternalIP"}}), true},
		{"bad address", key, edit(t, validNode, "IPAddresses", []any{map[string]any{"Type": "InternalIP", "IP": "x"}}), true},
		{"cidr host bits", key, edit(t, validNode, "IPv4AllocCIDR", map[string]any{"IP": "10.10.1.1", "Mask": "////AA=="}), true},
		{"cidr non-contiguous mask", key, edit(t, validNode, "IPv4AllocCIDR", map[string]any{"IP": "10.10.1.0", "Mask": "/wD/AA=="}), true},
		{"cidr wrong family", key, edit(t, validNode, "IPv4AllocCIDR", map[string]any{"IP": "fd00::", "Mask": "////AA=="}), true},
		{"cidr v4 in v6 field", key, edit(t, validNode, "IPv6AllocCIDR", map[string]any{"IP": "10.10.1.0", "Mask": "////AA=="}), true},
		{"cidr without IP", key, edit(t, validNode, "IPv4AllocCIDR", map[string]any{"Mask": "////AA=="}), true},
		{"malformed", key, `[]`, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			n, err := DecodeNode(tt.key, []byte(tt.value), testCluster, testClusterID)
			checkErr(t, tt.key, err, tt.wantErr)
			if err == nil && n.Name != "cluster1-worker" {
				t.Errorf("decoded %+v", n)
			}
		})
	}
}

func TestDecodeIdentity(t *testing.T) {
	key := IdentityKey(65793)
	tests := []struct {
		name, key, value string
		clusterID        uint32
		wantErr          bool
	}{
		{"valid", key, validIdentity, 1, false},
		{"valid from cache", "cilium/cache/identities/v1/cluster1/id/65793", validIdentity, 1, false},
		{"out of range", IdentityKey(131073), validIdentity, 1, true},
		{"reserved", IdentityKey(IdentityHost), validIdentity, 1, true},
		{"missing cluster label", key, "k8s:app=x;", 1, true},
		{"other cluster label", key, "k8s:io.cilium.k8s.policy.cluster=cluster2;", 1, true},
		{"unsorted", key, "k8s:io.cilium.k8s.policy.cluster=cluster1;k8s:app=x;", 1, true},
		{"not terminated", key, "k8s:io.cilium.k8s.policy.cluster=cluster1", 1, true},
		{"json", key, `{"labels":{}}`, 1, true},
		{"cache key of another cluster", "cilium/cache/identities/v1/cluster2/id/65793", validIdentity, 1, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id, err := DecodeIdentity(tt.key, []byte(tt.value), testCluster, tt.clusterID, 255)
			checkErr(t, tt.key, err, tt.wantErr)
			if err == nil && (id.ID != 65793 || id.Labels.String() != tt.value) {
				t.Errorf("decoded %+v", id)
			}
		})
	}
}

// The fuzz targets check, on every accepted input, the invariants a
// consumer relies on: the value agrees with its key and its cluster.

func FuzzDecodeClusterConfig(f *testing.F) {
	f.Add(ClusterConfigKey(testCluster), []byte(validConfig))
	f.Add(ClusterConfigKey(testCluster), []byte(`{"id":300,"capabilities":{"maxConnectedClusters":511}}`))
	f.Fuzz(func(t *testing.T, key string, value []byte) {
		c, err := DecodeClusterConfig(key, value, testCluster)
		if err != nil {
			return
		}
		if key != ClusterConfigKey(testCluster) {
			t.Fatalf("accepted key %q", key)
		}
		if err := ValidateClusterID(c.ID, c.Capabilities.MaxConnectedClusters); err != nil {
			t.Fatalf("accepted invalid config %+v: %v", c, err)
		}
	})
}

func FuzzDecodeClusterService(f *testing.F) {
	f.Add(ServiceKey(testCluster, "default", "rebel-base"), []byte(validService))
	f.Add("cilium/cache/services/v1/cluster1/default/rebel-base", []byte(validService))
	f.Fuzz(func(t *testing.T, key string, value []byte) {
		s, err := DecodeClusterService(key, value, testCluster, testClusterID)
		if err != nil {
			return
		}
		k, err := ParseKey(key)
		if err != nil {
			t.Fatalf("accepted unparsable key %q", key)
		}
		if k.Resource != Services || k.Cluster != testCluster || s.Cluster != testCluster ||
			s.Namespace != k.Namespace || s.Name != k.Name || s.ClusterID != testClusterID {
			t.Fatalf("accepted %q = %+v", key, s)
		}
		for _, m := range []map[string]PortConfiguration{s.Frontends, s.Backends} {
			for a, ports := range m {
				if _, err := netip.ParseAddr(a); err != nil {
					t.Fatalf("accepted address %q", a)
				}
				for _, p := range ports {
					if p == nil || p.Port == 0 {
						t.Fatalf("accepted port %+v", p)
					}
				}
			}
		}
	})
}

func FuzzDecodeIPIdentityPair(f *testing.F) {
	f.Add(IPKey("10.10.1.7"), []byte(validPair), uint16(1), true)
	f.Add("cilium/cache/ip/v1/cluster1/10.10.1.0/24", []byte(`{"IP":"10.10.1.0","Mask":"////AA==","ID":1}`), uint16(1), false)
	f.Fuzz(func(t *testing.T, key string, value []byte, clusterID uint16, use511 bool) {
		maxConnected := uint32(MaxConnectedClusters255)
		if use511 {
			maxConnected = MaxConnectedClusters511
		}
		p, err := DecodeIPIdentityPair(key, value, testCluster, uint32(clusterID), maxConnected)
		if err != nil {
			return
		}
		k, err := ParseKey(key)
		if err != nil || k.Resource != IP || (k.Cached && k.Cluster != testCluster) {
			t.Fatalf("accepted key %q", key)
		}
		addr, _ := netip.AddrFromSlice(p.IP)
		if addr.Unmap() != k.Prefix.Addr() {
			t.Fatalf("accepted %q with IP %s", key, p.IP)
		}
		if p.ID == IdentityHost {
			t.Fatalf("host identity not mapped to remote-node")
		}
		if err := CheckClusterIdentity(p.ID, uint32(clusterID), maxConnected); err != nil {
			t.Fatalf("accepted identity %d: %v", p.ID, err)
		}
	})
}

func FuzzDecodeNode(f *testing.F) {
	f.Add(NodeKey(testCluster, "cluster1-worker"), []byte(validNode))
	f.Fuzz(func(t *testing.T, key string, value []byte) {
		n, err := DecodeNode(key, value, testCluster, testClusterID)
		if err != nil {
			return
		}
		k, err := ParseKey(key)
		if err != nil || k.Resource != Nodes || k.Cluster != testCluster {
			t.Fatalf("accepted key %q", key)
		}
		if n.Name != k.Name || n.Cluster != testCluster || n.ClusterID != testClusterID || len(n.IPAddresses) == 0 {
			t.Fatalf("accepted %q = %+v", key, n)
		}
		for _, a := range n.IPAddresses {
			if _, ok := netip.AddrFromSlice(a.IP); !ok {
				t.Fatalf("accepted address %v", a)
			}
		}
	})
}

func FuzzDecodeIdentity(f *testing.F) {
	f.Add(IdentityKey(65793), []byte(validIdentity))
	f.Add("cilium/cache/identities/v1/cluster1/id/65537", []byte(validIdentity))
	f.Fuzz(func(t *testing.T, key string, value []byte) {
		id, err := DecodeIdentity(key, value, testCluster, testClusterID, MaxConnectedClusters255)
		if err != nil {
			return
		}
		k, err := ParseKey(key)
		if err != nil || k.Resource != Identities || k.Identity != id.ID {
			t.Fatalf("accepted key %q as %d", key, id.ID)
		}
		if IsReservedIdentity(id.ID) || CheckClusterIdentity(id.ID, testClusterID, MaxConnectedClusters255) != nil {
			t.Fatalf("accepted identity %d", id.ID)
		}
		if c, _ := id.Labels.Get(PolicyClusterLabel); c != testCluster {
			t.Fatalf("accepted labels %q", value)
		}
		if id.Labels.String() != string(value) {
			t.Fatalf("labels %q re-encode to %q", value, id.Labels.String())
		}
	})
}
