package policy

import (
	"errors"
	"strings"
	"testing"

	"github.com/meshbed/meshbed/datapath/state"
)

// rebelSubject is the endpointSelector most cases use: the local
// rebel-base pods of the default namespace.
const rebelSubject = "  endpointSelector:\n    matchLabels:\n      name: rebel-base\n"

func TestCompute(t *testing.T) {
	const (
		any = state.ProtoAny
		tcp = state.TCP
		udp = state.UDP
	)
	allLocal := []uint32{c1XWing, c1Rebel, c1DNS, c1DB, c1Web, c1Plain}
	defaultNS := []uint32{c1XWing, c1Rebel, c1Web, c1Plain}
	tests := []struct {
		name     string
		cfg      Config
		nsLabels map[string]map[string]string
		extra    []Identity
		policies []string
		subject  uint32
		want     *state.EndpointPolicy
	}{
		// Label selectors.
		{
			name:     "matchLabels selects local peers only by default",
			policies: []string{cnp("p", rebelSubject+"  ingress:\n  - fromEndpoints:\n    - matchLabels: {name: x-wing}\n")},
			want:     allowing(true, false, in(c1XWing, any, 0)),
		},
		{
			name:     "all-clusters option selects remote peers too",
			cfg:      Config{AllClusters: true},
			policies: []string{cnp("p", rebelSubject+"  ingress:\n  - fromEndpoints:\n    - matchLabels: {name: x-wing}\n")},
			want:     allowing(true, false, in(c1XWing, any, 0), in(c2XWing, any, 0)),
		},
		{
			name:     "cluster label selects a remote cluster",
			policies: []string{cnp("p", rebelSubject+"  ingress:\n  - fromEndpoints:\n    - matchLabels: {name: x-wing, io.cilium.k8s.policy.cluster: cluster2}\n")},
			want:     allowing(true, false, in(c2XWing, any, 0)),
		},
		{
			name:     "cluster label narrows under the all-clusters option",
			cfg:      Config{AllClusters: true},
			policies: []string{cnp("p", rebelSubject+"  ingress:\n  - fromEndpoints:\n    - matchLabels: {name: x-wing, k8s:io.cilium.k8s.policy.cluster: cluster1}\n")},
			want:     allowing(true, false, in(c1XWing, any, 0)),
		},
		{
			name:     "cluster expression selects several clusters",
			policies: []string{cnp("p", rebelSubject+"  ingress:\n  - fromEndpoints:\n    - matchLabels: {name: x-wing}\n      matchExpressions:\n      - {key: io.cilium.k8s.policy.cluster, operator: In, values: [cluster1, cluster2]}\n")},
			want:     allowing(true, false, in(c1XWing, any, 0), in(c2XWing, any, 0)),
		},
		{
			name:     "In",
			policies: []string{cnp("p", rebelSubject+"  ingress:\n  - fromEndpoints:\n    - matchExpressions:\n      - {key: tier, operator: In, values: [frontend, backend]}\n")},
			want:     allowing(true, false, in(c1Web, any, 0)),
		},
		{
			name:     "NotIn holds for a missing key",
			policies: []string{cnp("p", rebelSubject+"  ingress:\n  - fromEndpoints:\n    - matchExpressions:\n      - {key: tier, operator: NotIn, values: [frontend]}\n")},
			want:     allowing(true, false, peers(state.Ingress, c1XWing, c1Rebel, c1Plain)...),
		},
		{
			name:     "Exists",
			policies: []string{cnp("p", rebelSubject+"  ingress:\n  - fromEndpoints:\n    - matchExpressions:\n      - {key: tier, operator: Exists}\n")},
			want:     allowing(true, false, in(c1Web, any, 0)),
		},
		{
			name:     "DoesNotExist",
			policies: []string{cnp("p", rebelSubject+"  ingress:\n  - fromEndpoints:\n    - matchExpressions:\n      - {key: tier, operator: DoesNotExist}\n")},
			want:     allowing(true, false, peers(state.Ingress, c1XWing, c1Rebel, c1Plain)...),
		},
		{
			name:     "matchLabels and matchExpressions are ANDed",
			policies: []string{cnp("p", rebelSubject+"  ingress:\n  - fromEndpoints:\n    - matchLabels: {app: web}\n      matchExpressions:\n      - {key: tier, operator: NotIn, values: [frontend]}\n")},
			want:     allowing(true, false),
		},
		// Namespace defaulting.
		{
			name:     "empty peer selector means the policy's namespace",
			policies: []string{cnp("p", rebelSubject+"  ingress:\n  - fromEndpoints:\n    - {}\n")},
			want:     allowing(true, false, peers(state.Ingress, defaultNS...)...),
		},
		{
			name:     "explicit namespace",
			policies: []string{cnp("p", rebelSubject+"  ingress:\n  - fromEndpoints:\n    - matchLabels: {io.kubernetes.pod.namespace: other}\n")},
			want:     allowing(true, false, in(c1DB, any, 0)),
		},
		{
			name:     "namespace in an expression",
			policies: []string{cnp("p", rebelSubject+"  ingress:\n  - fromEndpoints:\n    - matchExpressions:\n      - {key: k8s:io.kubernetes.pod.namespace, operator: In, values: [other, kube-system]}\n")},
			want:     allowing(true, false, in(c1DNS, any, 0), in(c1DB, any, 0)),
		},
		{
			name:     "source prefixes are stripped",
			policies: []string{cnp("p", rebelSubject+"  egress:\n  - toEndpoints:\n    - matchLabels: {k8s:io.kubernetes.pod.namespace: kube-system, any:k8s-app: kube-dns}\n")},
			want:     allowing(false, true, eg(c1DNS, any, 0)),
		},
		{
			name:     "namespace label keys skip namespace defaulting",
			nsLabels: map[string]map[string]string{"other": {"team": "a"}},
			policies: []string{cnp("p", rebelSubject+"  ingress:\n  - fromEndpoints:\n    - matchLabels: {io.cilium.k8s.namespace.labels.team: a}\n")},
			want:     allowing(true, false, in(c1DB, any, 0)),
		},
		{
			name:     "remote namespace labels come from the identity",
			extra:    []Identity{podIdentity(2<<16|9, "cluster2", "ops", "app", "probe", LabelNamespaceLabelsPrefix+"team", "a")},
			policies: []string{cnp("p", rebelSubject+"  ingress:\n  - fromEndpoints:\n    - matchLabels: {io.cilium.k8s.namespace.labels.team: a, io.cilium.k8s.policy.cluster: cluster2}\n")},
			want:     allowing(true, false, in(2<<16|9, any, 0)),
		},
		{
			name:     "reserved label selector",
			policies: []string{cnp("p", rebelSubject+"  ingress:\n  - fromEndpoints:\n    - matchLabels: {reserved:host: \"\"}\n")},
			want:     allowing(true, false, in(state.IdentityHost, any, 0)),
		},
		{
			name:     "a policy does not select pods of another namespace",
			policies: []string{cnp("p", "  endpointSelector: {}\n  ingress:\n  - {}\n")},
			subject:  c1DB,
			want:     nil,
		},
		{
			name:     "endpointSelector namespace is forced to the policy's",
			policies: []string{cnp("p", "  endpointSelector:\n    matchLabels: {io.kubernetes.pod.namespace: other}\n  ingress:\n  - {}\n")},
			subject:  c1DB,
			want:     nil,
		},
		{
			name:     "not selected",
			policies: []string{cnp("p", "  endpointSelector:\n    matchLabels: {name: x-wing}\n  ingress:\n  - {}\n")},
			want:     nil,
		},
		// Entities.
		{
			name:     "entity world",
			policies: []string{cnp("p", rebelSubject+"  egress:\n  - toEntities: [world]\n")},
			want:     allowing(false, true, eg(state.IdentityWorld, any, 0)),
		},
		{
			name:     "entities host and remote-node",
			policies: []string{cnp("p", rebelSubject+"  ingress:\n  - fromEntities: [host, remote-node]\n")},
			want:     allowing(true, false, in(state.IdentityHost, any, 0), in(state.IdentityRemoteNode, any, 0)),
		},
		{
			name:     "entities mapping to other reserved identities",
			policies: []string{cnp("p", rebelSubject+"  egress:\n  - toEntities: [kube-apiserver, init, health, unmanaged]\n")},
			want: allowing(false, true, peers(state.Egress, state.IdentityKubeAPIServer, state.IdentityInit,
				state.IdentityHealth, state.IdentityUnmanaged)...),
		},
		{
			name:     "entity cluster is the local cluster and the reserved in-cluster identities",
			cfg:      Config{AllClusters: true},
			policies: []string{cnp("p", rebelSubject+"  ingress:\n  - fromEntities: [cluster]\n")},
			want: allowing(true, false, append(peers(state.Ingress, allLocal...), peers(state.Ingress, state.IdentityHost,
				state.IdentityUnmanaged, state.IdentityHealth, state.IdentityInit, state.IdentityRemoteNode, state.IdentityKubeAPIServer)...)...),
		},
		{
			name:     "entity all is the wildcard",
			policies: []string{cnp("p", rebelSubject+"  ingress:\n  - fromEntities: [all]\n    fromEndpoints:\n    - matchLabels: {name: x-wing}\n")},
			want:     allowing(true, false, in(0, any, 0)),
		},
		// Ports.
		{
			name:     "TCP port",
			policies: []string{cnp("p", rebelSubject+"  ingress:\n  - fromEndpoints:\n    - matchLabels: {name: x-wing}\n    toPorts:\n    - ports:\n      - {port: \"80\", protocol: TCP}\n")},
			want:     allowing(true, false, in(c1XWing, tcp, 80)),
		},
		{
			name:     "protocol defaults to ANY, which is TCP and UDP for a port",
			policies: []string{cnp("p", rebelSubject+"  ingress:\n  - fromEndpoints:\n    - matchLabels: {name: x-wing}\n    toPorts:\n    - ports:\n      - {port: \"53\"}\n")},
			want:     allowing(true, false, in(c1XWing, tcp, 53), in(c1XWing, udp, 53)),
		},
		{
			name:     "port 0 is every port of the protocol",
			policies: []string{cnp("p", rebelSubject+"  ingress:\n  - fromEndpoints:\n    - matchLabels: {name: x-wing}\n    toPorts:\n    - ports:\n      - {port: \"0\", protocol: UDP}\n")},
			want:     allowing(true, false, in(c1XWing, udp, 0)),
		},
		{
			name:     "port range",
			policies: []string{cnp("p", rebelSubject+"  ingress:\n  - fromEndpoints:\n    - matchLabels: {name: x-wing}\n    toPorts:\n    - ports:\n      - {port: \"8080\", endPort: 8090, protocol: TCP}\n")},
			want:     allowing(true, false, ranged(in(c1XWing, tcp, 8080), 8090)),
		},
		{
			name:     "ports without peers allow any peer",
			policies: []string{cnp("p", rebelSubject+"  egress:\n  - toPorts:\n    - ports:\n      - {port: \"443\", protocol: TCP}\n")},
			want:     allowing(false, true, eg(0, tcp, 443)),
		},
		// Enforcement and union.
		{
			name:     "an empty rule denies by default",
			policies: []string{cnp("p", rebelSubject+"  ingress:\n  - {}\n")},
			want:     allowing(true, false),
		},
		{
			name:     "allow-localhost adds the host to enforced ingress",
			cfg:      Config{AllowLocalhost: true},
			policies: []string{cnp("p", rebelSubject+"  ingress:\n  - {}\n  egress:\n  - {}\n")},
			want:     allowing(true, true, in(state.IdentityHost, any, 0)),
		},
		{
			name:     "allow-localhost leaves egress-only policies alone",
			cfg:      Config{AllowLocalhost: true},
			policies: []string{cnp("p", rebelSubject+"  egress:\n  - {}\n")},
			want:     allowing(false, true),
		},
		{
			name:     "enableDefaultDeny false allows without enforcing",
			policies: []string{cnp("p", rebelSubject+"  enableDefaultDeny: {ingress: false}\n  ingress:\n  - fromEndpoints:\n    - matchLabels: {name: x-wing}\n")},
			want:     allowing(false, false, in(c1XWing, any, 0)),
		},
		{
			name:     "enableDefaultDeny true without rules denies",
			policies: []string{cnp("p", rebelSubject+"  enableDefaultDeny: {egress: true}\n")},
			want:     allowing(false, true),
		},
		{
			name: "rules and policies are additive",
			policies: []string{
				cnp("a", rebelSubject+"  ingress:\n  - fromEndpoints:\n    - matchLabels: {name: x-wing}\n    toPorts:\n    - ports: [{port: \"80\", protocol: TCP}]\n  - fromEndpoints:\n    - matchLabels: {app: web}\n"),
				cnp("b", rebelSubject+"  ingress:\n  - fromEndpoints:\n    - matchLabels: {name: x-wing}\n    toPorts:\n    - ports: [{port: \"443\", protocol: TCP}]\n"),
				cnp("c", "  endpointSelector: {}\n  egress:\n  - toEntities: [world]\n"),
			},
			want: allowing(true, true, in(c1XWing, tcp, 80), in(c1XWing, tcp, 443), in(c1Web, any, 0), eg(state.IdentityWorld, any, 0)),
		},
		// CIDRs.
		{
			name:     "toCIDR gets a CIDR identity",
			policies: []string{cnp("p", rebelSubject+"  egress:\n  - toCIDR: [10.0.0.0/8]\n")},
			want:     allowing(false, true, eg(cidrFirst, any, 0)),
		},
		{
			name:     "except prefixes get their own identity, not allowed",
			policies: []string{cnp("p", rebelSubject+"  egress:\n  - toCIDRSet:\n    - cidr: 10.0.0.0/8\n      except: [10.1.0.0/16]\n")},
			want:     allowing(false, true, eg(cidrFirst, any, 0)),
		},
		{
			name:     "a single address is a host prefix",
			policies: []string{cnp("p", rebelSubject+"  ingress:\n  - fromCIDR: [192.0.2.1]\n")},
			want:     allowing(true, false, in(cidrFirst, any, 0)),
		},
		{
			name: "0.0.0.0/0 is world and every IPv4 CIDR identity",
			policies: []string{
				cnp("a", rebelSubject+"  egress:\n  - toCIDR: [0.0.0.0/0]\n"),
				cnp("b", "  endpointSelector:\n    matchLabels: {name: x-wing}\n  egress:\n  - toCIDR: [192.168.0.0/16, 2001:db8::/32]\n"),
			},
			want: allowing(false, true, eg(state.IdentityWorld, any, 0), eg(cidrFirst, any, 0)),
		},
		{
			name: "0.0.0.0/0 except a prefix",
			policies: []string{
				cnp("a", rebelSubject+"  egress:\n  - toCIDRSet:\n    - {cidr: 0.0.0.0/0, except: [10.0.0.0/8]}\n"),
				cnp("b", "  endpointSelector:\n    matchLabels: {name: x-wing}\n  egress:\n  - toCIDR: [10.1.0.0/16, 192.168.0.0/16]\n"),
			},
			// 10.0.0.0/8 is cidrFirst; 10.1.0.0/16 and 192.168.0.0/16
			// follow.
			want: allowing(false, true, eg(state.IdentityWorld, any, 0), eg(CIDRIdentityBase|3, any, 0)),
		},
		{
			name: "entity world selects CIDR identities",
			policies: []string{
				cnp("a", rebelSubject+"  egress:\n  - toEntities: [world]\n"),
				cnp("b", "  endpointSelector:\n    matchLabels: {name: x-wing}\n  egress:\n  - toCIDR: [10.0.0.0/8]\n"),
			},
			want: allowing(false, true, eg(state.IdentityWorld, any, 0), eg(cidrFirst, any, 0)),
		},
		// NetworkPolicy.
		{
			name:     "NetworkPolicy podSelector peer, protocol defaults to TCP",
			policies: []string{np("p", "  podSelector:\n    matchLabels: {name: rebel-base}\n  ingress:\n  - from:\n    - podSelector:\n        matchLabels: {name: x-wing}\n    ports:\n    - port: 80\n")},
			want:     allowing(true, false, in(c1XWing, tcp, 80)),
		},
		{
			name:     "NetworkPolicy namespaceSelector by namespace label",
			nsLabels: map[string]map[string]string{"other": {"team": "a"}, "kube-system": {"team": "b"}},
			policies: []string{np("p", "  podSelector:\n    matchLabels: {name: rebel-base}\n  ingress:\n  - from:\n    - namespaceSelector:\n        matchLabels: {team: a}\n")},
			want:     allowing(true, false, in(c1DB, any, 0)),
		},
		{
			name:     "NetworkPolicy namespaceSelector by metadata name",
			policies: []string{np("p", "  podSelector:\n    matchLabels: {name: rebel-base}\n  egress:\n  - to:\n    - namespaceSelector:\n        matchLabels: {kubernetes.io/metadata.name: kube-system}\n  policyTypes: [Egress]\n")},
			want:     allowing(false, true, eg(c1DNS, any, 0)),
		},
		{
			name:     "NetworkPolicy namespaceSelector and podSelector",
			cfg:      Config{AllClusters: true},
			policies: []string{np("p", "  podSelector:\n    matchLabels: {name: rebel-base}\n  ingress:\n  - from:\n    - namespaceSelector: {}\n      podSelector:\n        matchExpressions:\n        - {key: app, operator: In, values: [x-wing, db]}\n")},
			want:     allowing(true, false, in(c1XWing, any, 0), in(c1DB, any, 0)),
		},
		{
			name:     "NetworkPolicy empty namespaceSelector is every local pod",
			policies: []string{np("p", "  podSelector:\n    matchLabels: {name: rebel-base}\n  ingress:\n  - from:\n    - namespaceSelector: {}\n")},
			want:     allowing(true, false, peers(state.Ingress, allLocal...)...),
		},
		{
			name:     "NetworkPolicy peers stay local under the all-clusters option",
			cfg:      Config{AllClusters: true},
			policies: []string{np("p", "  podSelector:\n    matchLabels: {name: rebel-base}\n  ingress:\n  - from:\n    - podSelector:\n        matchLabels: {name: x-wing}\n")},
			want:     allowing(true, false, in(c1XWing, any, 0)),
		},
		{
			name:     "NetworkPolicy ipBlock with except and an egress port range",
			policies: []string{np("p", "  podSelector:\n    matchLabels: {name: rebel-base}\n  egress:\n  - to:\n    - ipBlock: {cidr: 10.0.0.0/8, except: [10.1.0.0/16]}\n    ports:\n    - {protocol: UDP, port: 5000, endPort: 5010}\n")},
			// policyTypes defaults to Ingress (no rules: deny) and Egress.
			want: allowing(true, true, ranged(eg(cidrFirst, udp, 5000), 5010)),
		},
		{
			name:     "NetworkPolicy policyTypes Egress only",
			policies: []string{np("p", "  podSelector:\n    matchLabels: {name: rebel-base}\n  policyTypes: [Egress]\n  egress:\n  - to:\n    - podSelector: {}\n")},
			want:     allowing(false, true, peers(state.Egress, defaultNS...)...),
		},
		{
			name:     "NetworkPolicy rule without peers allows every peer",
			policies: []string{np("p", "  podSelector: {}\n  ingress:\n  - {}\n")},
			want:     allowing(true, false, in(0, any, 0)),
		},
		{
			name:     "NetworkPolicy Ingress without rules denies",
			policies: []string{np("p", "  podSelector: {}\n  policyTypes: [Ingress]\n")},
			want:     allowing(true, false),
		},
		{
			name:     "NetworkPolicy port without number is every port of the protocol",
			policies: []string{np("p", "  podSelector: {}\n  ingress:\n  - ports:\n    - protocol: UDP\n")},
			want:     allowing(true, false, in(0, udp, 0)),
		},
		{
			name: "NetworkPolicy and CiliumNetworkPolicy add up",
			policies: []string{
				np("p", "  podSelector:\n    matchLabels: {name: rebel-base}\n  ingress:\n  - from:\n    - podSelector:\n        matchLabels: {app: web}\n"),
				cnp("p", rebelSubject+"  ingress:\n  - fromEndpoints:\n    - matchLabels: {name: x-wing}\n"),
			},
			want: allowing(true, false, in(c1XWing, any, 0), in(c1Web, any, 0)),
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := newTestRepo(t, tt.cfg, append(meshIdentities(), tt.extra...))
			for ns, l := range tt.nsLabels {
				r.SetNamespaceLabels(ns, l)
			}
			for _, doc := range tt.policies {
				if _, err := r.UpsertPolicy(mustDecode(t, doc)); err != nil {
					t.Fatal(err)
				}
			}
			subject := tt.subject
			if subject == 0 {
				subject = c1Rebel
			}
			got, err := r.Compute(subject)
			if err != nil {
				t.Fatal(err)
			}
			if !samePolicy(got, tt.want) {
				t.Fatalf("Compute(%d):\n got %s\nwant %s", subject, formatPolicy(got), formatPolicy(tt.want))
			}
			// A tracked endpoint's materialized policy is the same.
			tracked, err := r.Track(subject)
			if err != nil {
				t.Fatal(err)
			}
			if !samePolicy(tracked, tt.want) {
				t.Fatalf("Track(%d):\n got %s\nwant %s", subject, formatPolicy(tracked), formatPolicy(tt.want))
			}
		})
	}
}

// The seed tutorial's policies, applied in cluster1.
func TestTutorialPolicies(t *testing.T) {
	dns := mustDecodeFile(t, "allow-dns.yaml")
	cross := mustDecodeFile(t, "allow-cross-cluster.yaml")
	if len(dns.Warnings) != 1 || !strings.Contains(dns.Warnings[0], "DNS names are not filtered") {
		t.Errorf("allow-dns warnings = %q, want one saying DNS names are not filtered", dns.Warnings)
	}
	dnsKeys := []state.PolicyKey{eg(c1DNS, state.UDP, 53), eg(c1DNS, state.TCP, 53)}
	tests := []struct {
		name    string
		cfg     Config
		subject uint32
		want    *state.EndpointPolicy
	}{
		// Not cluster1's rebel-base, nor cluster2's kube-dns.
		{"x-wing reaches cluster2 rebel-base and local kube-dns only", Config{}, c1XWing,
			allowing(false, true, append(dnsKeys, eg(c2Rebel, state.ProtoAny, 0))...)},
		{"rebel-base may only resolve names", Config{}, c1Rebel, allowing(false, true, dnsKeys...)},
		{"kube-system is not selected by a default-namespace policy", Config{}, c1DNS, nil},
		{"all-clusters option: kube-dns of every cluster", Config{AllClusters: true}, c1Rebel,
			allowing(false, true, append(dnsKeys, eg(c2DNS, state.UDP, 53), eg(c2DNS, state.TCP, 53))...)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := newTestRepo(t, tt.cfg, meshIdentities())
			for _, p := range []*Policy{dns, cross} {
				if _, err := r.UpsertPolicy(p); err != nil {
					t.Fatal(err)
				}
			}
			got, err := r.Compute(tt.subject)
			if err != nil {
				t.Fatal(err)
			}
			if !samePolicy(got, tt.want) {
				t.Fatalf("got %s\nwant %s", formatPolicy(got), formatPolicy(tt.want))
			}
		})
	}
	// In cluster2 the cross-cluster policy selects nothing (its subject is
	// cluster1's x-wing) and allow-dns allows cluster2's own kube-dns.
	t.Run("applied in cluster2", func(t *testing.T) {
		r := newTestRepo(t, Config{ClusterName: "cluster2"}, meshIdentities())
		for _, p := range []*Policy{dns, cross} {
			if _, err := r.UpsertPolicy(p); err != nil {
				t.Fatal(err)
			}
		}
		got, err := r.Compute(c2XWing)
		if err != nil {
			t.Fatal(err)
		}
		want := allowing(false, true, eg(c2DNS, state.UDP, 53), eg(c2DNS, state.TCP, 53))
		if !samePolicy(got, want) {
			t.Fatalf("got %s\nwant %s", formatPolicy(got), formatPolicy(want))
		}
	})
}

func TestComputeUnknownIdentityFailsClosed(t *testing.T) {
	r := newTestRepo(t, Config{}, meshIdentities())
	got, err := r.Compute(1<<16 | 999)
	if !errors.Is(err, ErrUnknownIdentity) {
		t.Fatalf("err = %v, want ErrUnknownIdentity", err)
	}
	if want := allowing(true, true); !samePolicy(got, want) {
		t.Fatalf("got %s, want deny-all", formatPolicy(got))
	}
}
