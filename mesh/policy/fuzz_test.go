package policy

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"

	networkingv1 "k8s.io/api/networking/v1"
	"sigs.k8s.io/yaml"

	"github.com/meshbed/meshbed/datapath/state"
)

func addSeeds(f *testing.F, kindNP bool) {
	files, _ := filepath.Glob("testdata/*.yaml")
	more, _ := filepath.Glob("testdata/invalid/*.yaml")
	for _, name := range append(files, more...) {
		data, err := os.ReadFile(name)
		if err != nil {
			f.Fatal(err)
		}
		if strings.Contains(string(data), "kind: NetworkPolicy") == kindNP {
			f.Add(data)
		}
	}
	for _, doc := range poolPolicies {
		if strings.Contains(doc, "kind: NetworkPolicy") == kindNP {
			f.Add([]byte(doc))
		}
	}
}

// FuzzDecodeCNP: decoding never panics; whatever decodes is valid,
// canonical, survives re-encoding unchanged and computes.
func FuzzDecodeCNP(f *testing.F) {
	addSeeds(f, false)
	f.Add([]byte(`{"apiVersion":"cilium.io/v2","kind":"CiliumNetworkPolicy","metadata":{"name":"j"},"specs":[{"endpointSelector":{"matchExpressions":[{"key":"any:a","operator":"NotIn","values":["x","x",""]}]},"enableDefaultDeny":{"ingress":true}}]}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		p, err := DecodeCNP(data)
		if err != nil {
			var de *DecodeError
			if !errors.As(err, &de) || err.Error() == "" {
				t.Fatalf("error %v (%T) is not a *DecodeError", err, err)
			}
			return
		}
		checkDecoded(t, p, SourceCiliumNetworkPolicy)
		enc, err := encodeCNP(p)
		if err != nil {
			t.Fatal(err)
		}
		again, err := DecodeCNP(enc)
		if err != nil {
			t.Fatalf("re-encoded policy does not decode: %v\n%s", err, enc)
		}
		if !reflect.DeepEqual(again.Ref, p.Ref) || !reflect.DeepEqual(again.Specs, p.Specs) {
			t.Fatalf("round trip changed the policy\nfirst  %+v\nsecond %+v\nvia %s", p, again, enc)
		}
		checkComputes(t, p)
	})
}

// FuzzDecodeNetworkPolicy: decoding never panics; whatever decodes is
// valid, the typed path (the API object, as an informer delivers it,
// through JSON) gives the same policy, and it computes.
func FuzzDecodeNetworkPolicy(f *testing.F) {
	addSeeds(f, true)
	f.Fuzz(func(t *testing.T, data []byte) {
		p, err := DecodeNetworkPolicyYAML(data)
		if err != nil {
			var de *DecodeError
			if !errors.As(err, &de) || err.Error() == "" {
				t.Fatalf("error %v (%T) is not a *DecodeError", err, err)
			}
			return
		}
		checkDecoded(t, p, SourceNetworkPolicy)
		var obj networkingv1.NetworkPolicy
		if err := yaml.Unmarshal(data, &obj); err != nil {
			t.Fatalf("strict decode succeeded, lenient failed: %v", err)
		}
		j, err := json.Marshal(&obj)
		if err != nil {
			t.Fatal(err)
		}
		var obj2 networkingv1.NetworkPolicy
		if err := json.Unmarshal(j, &obj2); err != nil {
			t.Fatal(err)
		}
		again, err := DecodeNetworkPolicy(&obj2)
		if err != nil {
			t.Fatalf("typed path fails: %v", err)
		}
		if !reflect.DeepEqual(again, p) {
			t.Fatalf("typed path differs\nyaml  %+v\ntyped %+v", p, again)
		}
		checkComputes(t, p)
	})
}

// checkDecoded holds for every decoded policy.
func checkDecoded(t *testing.T, p *Policy, src Source) {
	t.Helper()
	if err := p.Validate(); err != nil {
		t.Fatalf("decoded policy is invalid: %v\n%+v", err, p)
	}
	if p.Source != src || p.Name == "" || p.Namespace == "" {
		t.Fatalf("bad ref %+v", p.Ref)
	}
	canonical := func(s Selector) {
		if !reflect.DeepEqual(s, s.Canonical()) {
			t.Fatalf("selector %v is not canonical", s)
		}
	}
	for _, s := range p.Specs {
		canonical(s.Subject)
		if !s.Subject.HasKey(LabelNamespace) {
			t.Fatalf("subject %v is not confined to namespace %s", s.Subject, p.Namespace)
		}
		for _, rules := range [][]Rule{s.Ingress, s.Egress} {
			for _, r := range rules {
				for _, peer := range r.Peers {
					if peer.Selector != nil {
						canonical(*peer.Selector)
					}
				}
			}
		}
	}
}

// checkComputes puts the policy in force over the test mesh and checks the
// keys it yields, then removes it and checks nothing is left.
func checkComputes(t *testing.T, p *Policy) {
	t.Helper()
	r := newTestRepo(t, Config{}, meshIdentities())
	ids := []uint32{c1XWing, c1Rebel, c1DNS, c1DB, c1Web, c1Plain}
	for _, id := range ids {
		if _, err := r.Track(id); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := r.UpsertPolicy(p); err != nil {
		t.Fatalf("decoded policy refused: %v", err)
	}
	for _, id := range ids {
		ep, err := r.Compute(id)
		if err != nil {
			t.Fatal(err)
		}
		if ep == nil {
			continue
		}
		for _, k := range ep.Allow {
			if k.Port != 0 && k.Protocol != state.TCP && k.Protocol != state.UDP {
				t.Fatalf("key %s: a port needs TCP or UDP", formatKey(k))
			}
			if k.EndPort != 0 && k.EndPort <= k.Port {
				t.Fatalf("key %s: bad range", formatKey(k))
			}
		}
	}
	r.DeletePolicy(p.Ref)
	for _, id := range ids {
		if ep, _ := r.Compute(id); ep != nil {
			t.Fatalf("identity %d keeps %s after the policy is deleted", id, formatPolicy(ep))
		}
	}
	if c := r.CIDRIdentities(); len(c) != 0 {
		t.Fatalf("CIDR identities left: %v", c)
	}
}

// encodeCNP writes a Policy back as a CiliumNetworkPolicy, explicitly
// (namespaces, enforcement), so that decoding it gives the same Specs.
func encodeCNP(p *Policy) ([]byte, error) {
	specs := make([]any, 0, len(p.Specs))
	for _, s := range p.Specs {
		m := map[string]any{
			"endpointSelector":  encodeSelector(s.Subject),
			"enableDefaultDeny": map[string]any{"ingress": s.EnforceIngress, "egress": s.EnforceEgress},
		}
		if len(s.Ingress) > 0 {
			m["ingress"] = encodeRules(s.Ingress, "from")
		}
		if len(s.Egress) > 0 {
			m["egress"] = encodeRules(s.Egress, "to")
		}
		specs = append(specs, m)
	}
	return json.Marshal(map[string]any{
		"apiVersion": CNPAPIVersion,
		"kind":       CNPKind,
		"metadata":   map[string]any{"name": p.Name, "namespace": p.Namespace},
		"specs":      specs,
	})
}

func encodeSelector(s Selector) map[string]any {
	exprs := make([]any, 0, len(s.Requirements))
	for _, r := range s.Requirements {
		e := map[string]any{"key": r.Key, "operator": string(r.Operator)}
		if len(r.Values) > 0 {
			e["values"] = r.Values
		}
		exprs = append(exprs, e)
	}
	if len(exprs) == 0 {
		return map[string]any{}
	}
	return map[string]any{"matchExpressions": exprs}
}

func encodeRules(rules []Rule, prefix string) []any {
	out := make([]any, 0, len(rules))
	for _, r := range rules {
		m := map[string]any{}
		var eps, ents, cidrs []any
		for _, peer := range r.Peers {
			switch {
			case peer.Selector != nil:
				eps = append(eps, encodeSelector(*peer.Selector))
			case peer.CIDR != nil:
				c := map[string]any{"cidr": peer.CIDR.Prefix.String()}
				if len(peer.CIDR.Except) > 0 {
					var ex []string
					for _, x := range peer.CIDR.Except {
						ex = append(ex, x.String())
					}
					c["except"] = ex
				}
				cidrs = append(cidrs, c)
			default:
				ents = append(ents, string(peer.Entity))
			}
		}
		if eps != nil {
			m[prefix+"Endpoints"] = eps
		}
		if ents != nil {
			m[prefix+"Entities"] = ents
		}
		if cidrs != nil {
			m[prefix+"CIDRSet"] = cidrs
		}
		if len(r.Ports) > 0 {
			var ports []any
			for _, pt := range r.Ports {
				e := map[string]any{"port": strconv.Itoa(int(pt.Port)), "protocol": pt.Protocol.String()}
				if pt.EndPort != 0 {
					e["endPort"] = pt.EndPort
				}
				ports = append(ports, e)
			}
			pr := map[string]any{"ports": ports}
			if len(r.DNS) > 0 {
				var dns []any
				for _, d := range r.DNS {
					e := map[string]any{}
					if d.MatchName != "" {
						e["matchName"] = d.MatchName
					}
					if d.MatchPattern != "" {
						e["matchPattern"] = d.MatchPattern
					}
					dns = append(dns, e)
				}
				pr["rules"] = map[string]any{"dns": dns}
			}
			m["toPorts"] = []any{pr}
		}
		out = append(out, m)
	}
	return out
}
