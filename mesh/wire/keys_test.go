package wire

import (
	"net/netip"
	"strings"
	"testing"
)

func TestKeyBuilders(t *testing.T) {
	tests := []struct {
		name, got, want string
	}{
		{"cluster-config", ClusterConfigKey("cluster1"), "cilium/cluster-config/cluster1"},
		{"synced", SyncedKey("cluster1", ServicesPrefix), "cilium/synced/cluster1/cilium/state/services/v1"},
		{"synced trailing slash", SyncedKey("cluster1", ServicesPrefix+"/"), "cilium/synced/cluster1/cilium/state/services/v1"},
		{"node", NodeKey("cluster1", "cluster1-worker"), "cilium/state/nodes/v1/cluster1/cluster1-worker"},
		{"service", ServiceKey("cluster1", "default", "rebel-base"), "cilium/state/services/v1/cluster1/default/rebel-base"},
		{"ip", IPKey("10.10.1.7"), "cilium/state/ip/v1/default/10.10.1.7"},
		{"identity", IdentityKey(65793), "cilium/state/identities/v1/id/65793"},
		{"state prefix", StatePrefix(Nodes), NodesPrefix},
		{"cache prefix", CachePrefix(IP), CacheIPPrefix},
		{"canary state", CanaryKey(Identities, "c2", false), "cilium/synced/c2/cilium/state/identities/v1"},
		{"canary cache", CanaryKey(Nodes, "c2", true), "cilium/synced/c2/cilium/cache/nodes/v1"},
		{"prefix nodes", ClusterPrefix(Nodes, "c2", false), "cilium/state/nodes/v1/c2/"},
		{"prefix services cached", ClusterPrefix(Services, "c2", true), "cilium/cache/services/v1/c2/"},
		{"prefix ip", ClusterPrefix(IP, "c2", false), "cilium/state/ip/v1/default/"},
		{"prefix ip cached", ClusterPrefix(IP, "c2", true), "cilium/cache/ip/v1/c2/"},
		{"prefix identities", ClusterPrefix(Identities, "c2", false), "cilium/state/identities/v1/id/"},
		{"prefix identities cached", ClusterPrefix(Identities, "c2", true), "cilium/cache/identities/v1/c2/id/"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.got != tt.want {
				t.Errorf("got %q, want %q", tt.got, tt.want)
			}
		})
	}
}

func TestCacheKey(t *testing.T) {
	tests := []struct {
		cluster, key, want string
		wantErr            bool
	}{
		{"c2", NodeKey("c2", "n1"), "cilium/cache/nodes/v1/c2/n1", false},
		{"c2", ServiceKey("c2", "ns", "svc"), "cilium/cache/services/v1/c2/ns/svc", false},
		{"c2", IPKey("10.0.0.1"), "cilium/cache/ip/v1/c2/10.0.0.1", false},
		{"c2", IPKey("10.0.0.0/24"), "cilium/cache/ip/v1/c2/10.0.0.0/24", false},
		{"c2", IPKey("fd00::1"), "cilium/cache/ip/v1/c2/fd00::1", false},
		{"c2", IdentityKey(131073), "cilium/cache/identities/v1/c2/id/131073", false},
		{"c2", NodeKey("c3", "n1"), "", true},
		{"c2", "cilium/cache/nodes/v1/c2/n1", "", true},
		{"c2", "cilium/state/other/v1/c2/x", "", true},
	}
	for _, tt := range tests {
		t.Run(tt.key, func(t *testing.T) {
			got, err := CacheKey(tt.cluster, tt.key)
			if (err != nil) != tt.wantErr {
				t.Fatalf("err = %v, wantErr %v", err, tt.wantErr)
			}
			if got != tt.want {
				t.Errorf("got %q, want %q", got, tt.want)
			}
			if err == nil {
				// The cache key must parse back to the same object.
				orig, _ := ParseKey(tt.key)
				back, err := ParseKey(got)
				if err != nil {
					t.Fatalf("cache key does not parse: %v", err)
				}
				if !back.Cached || back.Cluster != tt.cluster || back.Name != orig.Name ||
					back.Namespace != orig.Namespace || back.Prefix != orig.Prefix || back.Identity != orig.Identity {
					t.Errorf("cache key parses to %+v, source to %+v", back, orig)
				}
			}
		})
	}
}

func TestParseKey(t *testing.T) {
	tests := []struct {
		key     string
		want    Key
		wantErr bool
	}{
		{key: "cilium/state/nodes/v1/c1/n1", want: Key{Resource: Nodes, Cluster: "c1", Name: "n1"}},
		{key: "cilium/cache/nodes/v1/c1/n1", want: Key{Resource: Nodes, Cached: true, Cluster: "c1", Name: "n1"}},
		{key: "cilium/state/services/v1/c1/ns/a", want: Key{Resource: Services, Cluster: "c1", Namespace: "ns", Name: "a"}},
		{key: "cilium/state/ip/v1/default/10.1.2.3", want: Key{Resource: IP, Prefix: netip.MustParsePrefix("10.1.2.3/32")}},
		{key: "cilium/state/ip/v1/default/10.1.0.0/16", want: Key{Resource: IP, Prefix: netip.MustParsePrefix("10.1.0.0/16"), IsCIDR: true}},
		{key: "cilium/cache/ip/v1/c1/fd00::1", want: Key{Resource: IP, Cached: true, Cluster: "c1", Prefix: netip.MustParsePrefix("fd00::1/128")}},
		{key: "cilium/state/identities/v1/id/65537", want: Key{Resource: Identities, Identity: 65537}},
		{key: "cilium/cache/identities/v1/c1/id/65537", want: Key{Resource: Identities, Cached: true, Cluster: "c1", Identity: 65537}},
		{key: "cilium/state/nodes/v1/c1", wantErr: true},
		{key: "cilium/state/nodes/v1/c1/n1/x", wantErr: true},
		{key: "cilium/state/nodes/v1/C1/n1", wantErr: true},
		{key: "cilium/state/nodes/v2/c1/n1", wantErr: true},
		{key: "cilium/state/services/v1/c1/ns", wantErr: true},
		{key: "cilium/state/services/v1/c1//a", wantErr: true},
		{key: "cilium/state/ip/v1/c1/10.1.2.3", wantErr: true},
		{key: "cilium/state/ip/v1/default/10.1.2.300", wantErr: true},
		{key: "cilium/state/ip/v1/default/010.1.2.3", wantErr: true},
		{key: "cilium/state/ip/v1/default/10.1.2.3/16", wantErr: true},
		{key: "cilium/state/ip/v1/default/::ffff:10.1.2.3", wantErr: true},
		{key: "cilium/state/ip/v1/default/fe80::1%eth0", wantErr: true},
		{key: "cilium/state/identities/v1/id/0", wantErr: true},
		{key: "cilium/state/identities/v1/id/016", wantErr: true},
		{key: "cilium/state/identities/v1/id/16777216", wantErr: true},
		{key: "cilium/state/identities/v1/id/-1", wantErr: true},
		{key: "cilium/state/identities/v1/65537", wantErr: true},
		{key: "cilium/cluster-config/c1", wantErr: true},
		{key: "", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.key, func(t *testing.T) {
			got, err := ParseKey(tt.key)
			if (err != nil) != tt.wantErr {
				t.Fatalf("err = %v, wantErr %v", err, tt.wantErr)
			}
			if err != nil {
				if !strings.Contains(err.Error(), tt.key) {
					t.Errorf("error %q does not name the key", err)
				}
				return
			}
			if got != tt.want {
				t.Errorf("got %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestValidateClusterName(t *testing.T) {
	tests := []struct {
		name string
		ok   bool
	}{
		{"cluster1", true},
		{"a", true},
		{"a-b-9", true},
		{strings.Repeat("a", 32), true},
		{strings.Repeat("a", 33), false},
		{"", false},
		{"-a", false},
		{"a-", false},
		{"Cluster1", false},
		{"a_b", false},
		{"a.b", false},
		{"a/b", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := ValidateClusterName(tt.name); (err == nil) != tt.ok {
				t.Errorf("ValidateClusterName(%q) = %v, want ok=%v", tt.name, err, tt.ok)
			}
		})
	}
}

func TestValidateClusterID(t *testing.T) {
	tests := []struct {
		id, max uint32
		ok      bool
	}{
		{1, 255, true},
		{255, 255, true},
		{256, 255, false},
		{0, 255, false},
		{256, 511, true},
		{511, 511, true},
		{512, 511, false},
		{1, 100, false},
	}
	for _, tt := range tests {
		t.Run("", func(t *testing.T) {
			if err := ValidateClusterID(tt.id, tt.max); (err == nil) != tt.ok {
				t.Errorf("ValidateClusterID(%d, %d) = %v, want ok=%v", tt.id, tt.max, err, tt.ok)
			}
		})
	}
}

func TestClusterIdentityRange(t *testing.T) {
	tests := []struct {
		id, max, lo, hi uint32
		wantErr         bool
	}{
		{1, 255, 65536, 131071, false},
		{2, 255, 131072, 196607, false},
		{255, 255, 255 << 16, 1<<24 - 1, false},
		{1, 511, 32768, 65535, false},
		{511, 511, 511 << 15, 1<<24 - 1, false},
		{0, 255, 0, 0, true},
		{256, 255, 0, 0, true},
		{1, 1023, 0, 0, true},
	}
	for _, tt := range tests {
		t.Run("", func(t *testing.T) {
			lo, hi, err := ClusterIdentityRange(tt.id, tt.max)
			if (err != nil) != tt.wantErr {
				t.Fatalf("err = %v, wantErr %v", err, tt.wantErr)
			}
			if lo != tt.lo || hi != tt.hi {
				t.Errorf("range = [%d, %d], want [%d, %d]", lo, hi, tt.lo, tt.hi)
			}
			if err == nil {
				for _, id := range []uint32{lo, hi} {
					if c, _ := IdentityClusterID(id, tt.max); c != tt.id {
						t.Errorf("IdentityClusterID(%d) = %d, want %d", id, c, tt.id)
					}
				}
			}
		})
	}
}

func TestCheckClusterIdentity(t *testing.T) {
	tests := []struct {
		id, cluster, max uint32
		ok               bool
	}{
		{131073, 2, 255, true}, // the docs/wire.md example
		{131073, 1, 255, false},
		{IdentityHost, 2, 255, true},
		{IdentityKubeAPIServer, 9, 511, true},
		{0, 1, 255, false},
		{256, 1, 255, false},
		{65535, 1, 511, true},
		{65536, 1, 511, false},
	}
	for _, tt := range tests {
		t.Run("", func(t *testing.T) {
			if err := CheckClusterIdentity(tt.id, tt.cluster, tt.max); (err == nil) != tt.ok {
				t.Errorf("CheckClusterIdentity(%d, %d, %d) = %v, want ok=%v", tt.id, tt.cluster, tt.max, err, tt.ok)
			}
		})
	}
}

func FuzzParseKey(f *testing.F) {
	for _, k := range []string{
		NodeKey("c1", "n"), ServiceKey("c1", "a", "b"), IPKey("10.0.0.1"), IPKey("fd00::/64"),
		IdentityKey(65537), "cilium/cache/identities/v1/c1/id/65537", "cilium/cache/ip/v1/c1/1.2.3.4",
	} {
		f.Add(k)
	}
	f.Fuzz(func(t *testing.T, key string) {
		k, err := ParseKey(key)
		if err != nil {
			return
		}
		// A parsed key rebuilds to exactly itself: there is one spelling per
		// object, so two keys never alias the same entry.
		var rebuilt string
		switch k.Resource {
		case Nodes:
			rebuilt = ClusterPrefix(Nodes, k.Cluster, k.Cached) + k.Name
		case Services:
			rebuilt = ClusterPrefix(Services, k.Cluster, k.Cached) + k.Namespace + "/" + k.Name
		case IP:
			s := k.Prefix.Addr().String()
			if k.IsCIDR {
				s = k.Prefix.String()
			}
			rebuilt = ClusterPrefix(IP, k.Cluster, k.Cached) + s
		case Identities:
			rebuilt = strings.TrimSuffix(ClusterPrefix(Identities, k.Cluster, k.Cached), "/") + "/" + itoa(k.Identity)
		default:
			t.Fatalf("unknown resource %q accepted", k.Resource)
		}
		if rebuilt != key {
			t.Fatalf("ParseKey(%q) = %+v, rebuilds to %q", key, k, rebuilt)
		}
	})
}
