package policy

import (
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/meshbed/meshbed/datapath/state"
)

// Identities of the test mesh: cluster1 is local (cluster ID 1), cluster2
// remote (cluster ID 2).
const (
	c1XWing    uint32 = 1<<16 | 1 // default, name=x-wing
	c1Rebel    uint32 = 1<<16 | 2 // default, name=rebel-base
	c1DNS      uint32 = 1<<16 | 3 // kube-system, k8s-app=kube-dns
	c1DB       uint32 = 1<<16 | 4 // other, app=db tier=backend
	c1Web      uint32 = 1<<16 | 5 // default, app=web tier=frontend
	c1Plain    uint32 = 1<<16 | 6 // default, app=plain
	c2Rebel    uint32 = 2<<16 | 1 // default, name=rebel-base
	c2DNS      uint32 = 2<<16 | 2 // kube-system, k8s-app=kube-dns
	c2XWing    uint32 = 2<<16 | 3 // default, name=x-wing
	cidrFirst         = CIDRIdentityBase | 1
	cidrSecond        = CIDRIdentityBase | 2
)

func podIdentity(id uint32, cluster, ns string, kv ...string) Identity {
	l := map[string]string{LabelCluster: cluster, LabelNamespace: ns}
	for i := 0; i+1 < len(kv); i += 2 {
		l[kv[i]] = kv[i+1]
	}
	return Identity{ID: id, Labels: l}
}

func meshIdentities() []Identity {
	return []Identity{
		podIdentity(c1XWing, "cluster1", "default", "name", "x-wing", "app", "x-wing"),
		podIdentity(c1Rebel, "cluster1", "default", "name", "rebel-base", "app", "rebel-base"),
		podIdentity(c1DNS, "cluster1", "kube-system", "k8s-app", "kube-dns"),
		podIdentity(c1DB, "cluster1", "other", "app", "db", "tier", "backend"),
		podIdentity(c1Web, "cluster1", "default", "app", "web", "tier", "frontend"),
		podIdentity(c1Plain, "cluster1", "default", "app", "plain"),
		podIdentity(c2Rebel, "cluster2", "default", "name", "rebel-base", "app", "rebel-base"),
		podIdentity(c2DNS, "cluster2", "kube-system", "k8s-app", "kube-dns"),
		podIdentity(c2XWing, "cluster2", "default", "name", "x-wing", "app", "x-wing"),
	}
}

func newTestRepo(t testing.TB, cfg Config, ids []Identity) *Repository {
	t.Helper()
	if cfg.ClusterName == "" {
		cfg.ClusterName = "cluster1"
	}
	r, err := NewRepository(cfg)
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range ids {
		if _, err := r.UpsertIdentity(id); err != nil {
			t.Fatal(err)
		}
	}
	return r
}

// decodeAny decodes a CiliumNetworkPolicy or a NetworkPolicy by its kind.
func decodeAny(data []byte) (*Policy, error) {
	if strings.Contains(string(data), "kind: NetworkPolicy") {
		return DecodeNetworkPolicyYAML(data)
	}
	return DecodeCNP(data)
}

func mustDecode(t testing.TB, doc string) *Policy {
	t.Helper()
	p, err := decodeAny([]byte(doc))
	if err != nil {
		t.Fatalf("decode: %v\n%s", err, doc)
	}
	return p
}

func mustDecodeFile(t testing.TB, name string) *Policy {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return mustDecode(t, string(data))
}

// cnp wraps a spec (YAML, indented by two spaces) into a policy object.
func cnp(name, spec string) string {
	return fmt.Sprintf("apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata:\n  name: %s\n  namespace: default\nspec:\n%s", name, spec)
}

func np(name, spec string) string {
	return fmt.Sprintf("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: %s\n  namespace: default\nspec:\n%s", name, spec)
}

func in(id uint32, proto state.Protocol, port uint16) state.PolicyKey {
	return state.PolicyKey{Direction: state.Ingress, Identity: id, Protocol: proto, Port: port}
}

func eg(id uint32, proto state.Protocol, port uint16) state.PolicyKey {
	return state.PolicyKey{Direction: state.Egress, Identity: id, Protocol: proto, Port: port}
}

func ranged(k state.PolicyKey, end uint16) state.PolicyKey {
	k.EndPort = end
	return k
}

func allowing(ingress, egress bool, keys ...state.PolicyKey) *state.EndpointPolicy {
	p := &state.EndpointPolicy{IngressEnforced: ingress, EgressEnforced: egress}
	if len(keys) > 0 {
		p.Allow = slices.Clone(keys)
		slices.SortFunc(p.Allow, ComparePolicyKeys)
		p.Allow = slices.Compact(p.Allow)
	}
	return p
}

// peers builds the keys allowing each id in one direction on any port.
func peers(dir state.Direction, ids ...uint32) []state.PolicyKey {
	var out []state.PolicyKey
	for _, id := range ids {
		out = append(out, state.PolicyKey{Direction: dir, Identity: id})
	}
	return out
}

func samePolicy(got, want *state.EndpointPolicy) bool {
	return reflect.DeepEqual(got, want)
}

func formatPolicy(p *state.EndpointPolicy) string {
	if p == nil {
		return "<nil: not selected>"
	}
	var b strings.Builder
	fmt.Fprintf(&b, "ingress enforced=%v egress enforced=%v", p.IngressEnforced, p.EgressEnforced)
	for _, k := range p.Allow {
		b.WriteString("\n  " + formatKey(k))
	}
	return b.String()
}

func formatKey(k state.PolicyKey) string {
	s := fmt.Sprintf("%s id=%d %s", k.Direction, k.Identity, k.Protocol)
	if k.Port != 0 {
		s += fmt.Sprintf(" port=%d", k.Port)
	}
	if k.EndPort != 0 {
		s += fmt.Sprintf("-%d", k.EndPort)
	}
	return s
}
