package policy

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/meshbed/meshbed/datapath/state"
	"github.com/meshbed/meshbed/internal/testenv"
)

// TestDecodeInvalid decodes every testdata/invalid/*.yaml and compares the
// error, and whether it is ErrUnsupported, with the .err golden file next to
// it (go test -update rewrites them).
func TestDecodeInvalid(t *testing.T) {
	files, err := filepath.Glob("testdata/invalid/*.yaml")
	if err != nil || len(files) == 0 {
		t.Fatalf("no fixtures: %v", err)
	}
	for _, f := range files {
		name := strings.TrimSuffix(filepath.Base(f), ".yaml")
		t.Run(name, func(t *testing.T) {
			data, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			p, err := decodeAny(data)
			if err == nil {
				t.Fatalf("decoded without error: %+v", p)
			}
			var de *DecodeError
			if !errors.As(err, &de) {
				t.Fatalf("error %v is not a *DecodeError", err)
			}
			got := err.Error() + "\nunsupported: " + boolString(errors.Is(err, ErrUnsupported)) + "\n"
			testenv.Golden(t, strings.TrimSuffix(f, ".yaml")+".err", []byte(got))
		})
	}
}

func boolString(b bool) string {
	if b {
		return "true"
	}
	return "false"
}

func sel(reqs ...Requirement) *Selector {
	s := Selector{Requirements: reqs}.Canonical()
	return &s
}

func req(key string, op Operator, vals ...string) Requirement {
	return Requirement{Key: key, Operator: op, Values: vals}
}

func TestDecodeCNP(t *testing.T) {
	nsDefault := req(LabelNamespace, OpIn, "default")
	tests := []struct {
		name string
		doc  string
		want *Policy
	}{
		{
			name: "allow-dns from the tutorial",
			doc:  readFile(t, "testdata/allow-dns.yaml"),
			want: &Policy{
				Ref: Ref{Source: SourceCiliumNetworkPolicy, Namespace: "default", Name: "allow-dns"},
				Specs: []Spec{{
					Subject:       *sel(nsDefault),
					EnforceEgress: true,
					Egress: []Rule{{
						Peers: []Peer{{Selector: sel(req(LabelNamespace, OpIn, "kube-system"), req("k8s-app", OpIn, "kube-dns"))}},
						Ports: []Port{{Protocol: state.UDP, Port: 53}, {Protocol: state.TCP, Port: 53}},
						DNS:   []DNSMatch{{MatchPattern: "*"}},
					}},
				}},
				Warnings: []string{"spec.egress[0].toPorts[0].rules.dns: DNS names are not filtered: meshbed enforces this rule at L4, allowing its ports to the selected peers for any name"},
			},
		},
		{
			name: "allow-cross-cluster from the tutorial",
			doc:  readFile(t, "testdata/allow-cross-cluster.yaml"),
			want: &Policy{
				Ref: Ref{Source: SourceCiliumNetworkPolicy, Namespace: "default", Name: "allow-cross-cluster"},
				Specs: []Spec{{
					Subject:       *sel(nsDefault, req("name", OpIn, "x-wing"), req(LabelCluster, OpIn, "cluster1")),
					EnforceEgress: true,
					Egress: []Rule{{
						Peers: []Peer{{Selector: sel(nsDefault, req("name", OpIn, "rebel-base"), req(LabelCluster, OpIn, "cluster2"))}},
					}},
				}},
			},
		},
		{
			name: "JSON, spec and specs, L4-only rule, endPort, host bits",
			doc: `{"apiVersion":"cilium.io/v2","kind":"CiliumNetworkPolicy",
			  "metadata":{"name":"j","namespace":"prod","labels":{"a":"b"},"uid":"1234","resourceVersion":"7"},
			  "spec":{"endpointSelector":{"matchLabels":{"app":"a"}},"ingress":[{"toPorts":[{"ports":[{"port":"8000","endPort":8010}]}]}]},
			  "specs":[{"endpointSelector":{},"egress":[{"toCIDR":["10.1.2.3/8"]}],"description":"d","labels":[{"key":"k"}]}],
			  "status":{"whatever":true}}`,
			want: &Policy{
				Ref: Ref{Source: SourceCiliumNetworkPolicy, Namespace: "prod", Name: "j"},
				Specs: []Spec{
					{
						Subject:        *sel(req(LabelNamespace, OpIn, "prod"), req("app", OpIn, "a")),
						EnforceIngress: true,
						Ingress:        []Rule{{Peers: []Peer{{Entity: EntityAll}}, Ports: []Port{{Protocol: state.ProtoAny, Port: 8000, EndPort: 8010}}}},
					},
					{
						Subject:       *sel(req(LabelNamespace, OpIn, "prod")),
						EnforceEgress: true,
						Egress:        []Rule{{Peers: []Peer{{CIDR: &CIDR{Prefix: netip.MustParsePrefix("10.0.0.0/8")}}}}},
					},
				},
				Warnings: []string{"specs[0].egress[0].toCIDR[0]: 10.1.2.3/8 has host bits set; using 10.0.0.0/8"},
			},
		},
		{
			name: "a foreign namespace in the endpointSelector is dropped",
			doc:  cnp("p", "  endpointSelector:\n    matchLabels: {k8s:io.kubernetes.pod.namespace: other, app: a}\n"),
			want: &Policy{
				Ref:      Ref{Source: SourceCiliumNetworkPolicy, Namespace: "default", Name: "p"},
				Specs:    []Spec{{Subject: *sel(nsDefault, req("app", OpIn, "a"))}},
				Warnings: []string{`spec.endpointSelector: namespace "other" in matchLabels dropped: an endpointSelector applies to the policy's namespace "default" only`},
			},
		},
		{
			name: "peers of an init policy and reserved selectors get no namespace",
			doc:  cnp("p", "  endpointSelector:\n    matchLabels: {reserved:init: \"\"}\n  egress:\n  - toEndpoints:\n    - {}\n  - toEndpoints:\n    - matchLabels: {\"reserved:host\": \"\"}\n"),
			want: &Policy{
				Ref: Ref{Source: SourceCiliumNetworkPolicy, Namespace: "default", Name: "p"},
				Specs: []Spec{{
					Subject:       *sel(nsDefault, req("reserved:init", OpIn, "")),
					EnforceEgress: true,
					Egress: []Rule{
						{Peers: []Peer{{Selector: sel()}}},
						{Peers: []Peer{{Selector: sel(req("reserved:host", OpIn, ""))}}},
					},
				}},
			},
		},
		{
			name: "no namespace means default; entities and CIDR sets",
			doc: "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata:\n  name: p\nspec:\n  endpointSelector: {}\n" +
				"  ingress:\n  - fromEntities: [host, remote-node]\n    fromCIDRSet:\n    - {cidr: \"2001:db8::/32\", except: [\"2001:db8:1::/48\"]}\n",
			want: &Policy{
				Ref: Ref{Source: SourceCiliumNetworkPolicy, Namespace: "default", Name: "p"},
				Specs: []Spec{{
					Subject:        *sel(nsDefault),
					EnforceIngress: true,
					Ingress: []Rule{{Peers: []Peer{
						{Entity: EntityHost}, {Entity: EntityRemoteNode},
						{CIDR: &CIDR{Prefix: netip.MustParsePrefix("2001:db8::/32"), Except: []netip.Prefix{netip.MustParsePrefix("2001:db8:1::/48")}}},
					}}},
				}},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := DecodeCNP([]byte(tt.doc))
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("got  %+v\nwant %+v", got, tt.want)
			}
		})
	}
}

// A dynamic informer hands out unstructured objects: int64 numbers, no
// json.Number.
func TestDecodeCNPObject(t *testing.T) {
	obj := map[string]any{
		"apiVersion": "cilium.io/v2",
		"kind":       "CiliumNetworkPolicy",
		"metadata":   map[string]any{"name": "u", "namespace": "default"},
		"spec": map[string]any{
			"endpointSelector": map[string]any{},
			"egress": []any{map[string]any{
				"toPorts": []any{map[string]any{"ports": []any{map[string]any{"port": "80", "endPort": int64(81), "protocol": "TCP"}}}},
			}},
		},
	}
	p, err := DecodeCNPObject(obj)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := p.Specs[0].Egress[0].Ports, []Port{{Protocol: state.TCP, Port: 80, EndPort: 81}}; !reflect.DeepEqual(got, want) {
		t.Fatalf("ports = %+v, want %+v", got, want)
	}
}

func TestDecodeNetworkPolicy(t *testing.T) {
	doc := np("web", "  podSelector:\n    matchLabels: {app: web}\n  ingress:\n  - from:\n    - namespaceSelector:\n        matchLabels: {team: a}\n      podSelector:\n        matchLabels: {role: client}\n    - podSelector: {}\n    - ipBlock: {cidr: 192.0.2.0/24, except: [192.0.2.128/25]}\n    ports:\n    - port: 80\n    - {protocol: UDP, port: 5000, endPort: 5005}\n  egress:\n  - ports:\n    - protocol: UDP\n")
	got, err := DecodeNetworkPolicyYAML([]byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	want := &Policy{
		Ref: Ref{Source: SourceNetworkPolicy, Namespace: "default", Name: "web"},
		Specs: []Spec{{
			Subject:        *sel(req(LabelNamespace, OpIn, "default"), req("app", OpIn, "web")),
			EnforceIngress: true,
			EnforceEgress:  true,
			Ingress: []Rule{{
				Peers: []Peer{
					{Selector: sel(req("role", OpIn, "client"), req(LabelNamespaceLabelsPrefix+"team", OpIn, "a"), req(LabelNamespace, OpExists))},
					{Selector: sel(req(LabelNamespace, OpIn, "default"))},
					{CIDR: &CIDR{Prefix: netip.MustParsePrefix("192.0.2.0/24"), Except: []netip.Prefix{netip.MustParsePrefix("192.0.2.128/25")}}},
				},
				Ports: []Port{{Protocol: state.TCP, Port: 80}, {Protocol: state.UDP, Port: 5000, EndPort: 5005}},
			}},
			Egress: []Rule{{Peers: []Peer{{Entity: EntityAll}}, Ports: []Port{{Protocol: state.UDP}}}},
		}},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got  %+v\nwant %+v", got, want)
	}
}

func readFile(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
