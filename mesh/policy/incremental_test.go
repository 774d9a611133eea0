package policy

import (
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"net/netip"
	"reflect"
	"slices"
	"testing"

	"github.com/meshbed/meshbed/datapath/state"
)

// Policies the randomized test draws from; several share a name so that
// upserting one replaces another.
var poolPolicies = []string{
	cnp("dns", "  endpointSelector: {}\n  egress:\n  - toEndpoints:\n    - matchLabels: {io.kubernetes.pod.namespace: kube-system, k8s-app: kube-dns}\n    toPorts:\n    - ports: [{port: \"53\", protocol: UDP}]\n      rules:\n        dns: [{matchPattern: \"*\"}]\n"),
	cnp("dns", "  endpointSelector: {}\n  egress:\n  - toEndpoints:\n    - matchLabels: {io.kubernetes.pod.namespace: kube-system}\n    toPorts:\n    - ports: [{port: \"53\"}]\n"),
	cnp("cross", "  endpointSelector:\n    matchLabels: {app: a0}\n  egress:\n  - toEndpoints:\n    - matchLabels: {app: a1, io.cilium.k8s.policy.cluster: cluster2}\n  ingress:\n  - fromEndpoints:\n    - matchExpressions: [{key: tier, operator: NotIn, values: [t0]}]\n"),
	cnp("cross", "  endpointSelector:\n    matchExpressions: [{key: app, operator: In, values: [a0, a2]}]\n  ingress:\n  - fromEntities: [cluster]\n    toPorts:\n    - ports: [{port: \"80\", protocol: TCP}, {port: \"8000\", endPort: 8100}]\n"),
	cnp("world", "  endpointSelector:\n    matchLabels: {tier: t1}\n  egress:\n  - toEntities: [world]\n  - toCIDRSet:\n    - {cidr: 10.0.0.0/8, except: [10.1.0.0/16, 10.2.0.0/16]}\n"),
	cnp("world", "  endpointSelector:\n    matchLabels: {tier: t1}\n  egress:\n  - toCIDR: [0.0.0.0/0]\n  - toCIDR: [10.2.0.0/16, 192.168.1.1]\n"),
	cnp("self", "  endpointSelector:\n    matchExpressions: [{key: tier, operator: Exists}]\n  ingress:\n  - fromEndpoints: [{}]\n  - fromEndpoints:\n    - matchExpressions: [{key: io.kubernetes.pod.namespace, operator: Exists}, {key: io.cilium.k8s.policy.cluster, operator: NotIn, values: [cluster1]}]\n"),
	cnp("l4", "  endpointSelector:\n    matchLabels: {app: a1}\n  ingress:\n  - toPorts:\n    - ports: [{port: \"443\", protocol: TCP}]\n  egress:\n  - {}\n"),
	cnp("ns", "  endpointSelector: {}\n  ingress:\n  - fromEndpoints:\n    - matchLabels: {io.cilium.k8s.namespace.labels.team: red}\n"),
	np("np", "  podSelector:\n    matchLabels: {app: a2}\n  ingress:\n  - from:\n    - namespaceSelector:\n        matchLabels: {team: red}\n      podSelector:\n        matchLabels: {tier: t0}\n    - ipBlock: {cidr: 10.0.0.0/8, except: [10.1.0.0/16]}\n    ports: [{port: 80}, {protocol: UDP, port: 53}]\n"),
	np("np", "  podSelector: {}\n  policyTypes: [Ingress, Egress]\n  egress:\n  - to:\n    - namespaceSelector: {}\n"),
	np("np2", "  podSelector:\n    matchLabels: {tier: t0}\n  ingress:\n  - {}\n  egress:\n  - to:\n    - ipBlock: {cidr: 10.2.0.0/16}\n"),
}

// poolIdentity returns candidate identity i: 3 clusters, 3 namespaces,
// apps and tiers spread so that every policy matches some.
func poolIdentity(i int) Identity {
	cluster := i%3 + 1
	l := map[string]string{
		LabelCluster:   fmt.Sprintf("cluster%d", cluster),
		LabelNamespace: []string{"default", "kube-system", "prod"}[i/3%3],
		"app":          fmt.Sprintf("a%d", i%4),
	}
	if i%5 != 0 {
		l["tier"] = fmt.Sprintf("t%d", i%2)
	}
	if l[LabelNamespace] == "kube-system" && i%2 == 0 {
		l["k8s-app"] = "kube-dns"
	}
	return Identity{ID: uint32(cluster)<<16 | uint32(i+1), Labels: l}
}

// shadow is what a datapath holds after applying every Changes it got.
type shadow struct {
	in, eg bool
	keys   map[state.PolicyKey]bool
}

func shadowOf(p *state.EndpointPolicy) *shadow {
	s := &shadow{keys: map[state.PolicyKey]bool{}}
	if p != nil {
		s.in, s.eg = p.IngressEnforced, p.EgressEnforced
		for _, k := range p.Allow {
			s.keys[k] = true
		}
	}
	return s
}

func (s *shadow) policy(known bool) *state.EndpointPolicy {
	if known && !s.in && !s.eg && len(s.keys) == 0 {
		return nil
	}
	return allowing(s.in, s.eg, slices.Collect(maps.Keys(s.keys))...)
}

type applier struct {
	t       *testing.T
	eps     map[uint32]*shadow
	ipcache map[netip.Prefix]uint32
}

func (a *applier) apply(c Changes) {
	a.t.Helper()
	for _, e := range c.CIDRsAdded {
		if _, dup := a.ipcache[e.Prefix]; dup {
			a.t.Fatalf("CIDR %s added twice", e.Prefix)
		}
		a.ipcache[e.Prefix] = e.Identity
	}
	for _, ch := range c.Endpoints {
		s := a.eps[ch.Identity]
		if s == nil {
			a.t.Fatalf("change for untracked identity %d", ch.Identity)
		}
		s.in, s.eg = ch.IngressEnforced, ch.EgressEnforced
		for _, k := range ch.Removed {
			if !s.keys[k] {
				a.t.Fatalf("identity %d: removed key %s was not there", ch.Identity, formatKey(k))
			}
			delete(s.keys, k)
		}
		for _, k := range ch.Added {
			if s.keys[k] {
				a.t.Fatalf("identity %d: added key %s was already there", ch.Identity, formatKey(k))
			}
			s.keys[k] = true
		}
	}
	for _, e := range c.CIDRsRemoved {
		if a.ipcache[e.Prefix] != e.Identity {
			a.t.Fatalf("CIDR %s removed as %d, held as %d", e.Prefix, e.Identity, a.ipcache[e.Prefix])
		}
		delete(a.ipcache, e.Prefix)
	}
}

// portable rewrites CIDR identities as their prefixes: their numbers
// depend on the order prefixes were first used.
func portable(p *state.EndpointPolicy, cidrs []state.IPCacheEntry) []string {
	if p == nil {
		return nil
	}
	byID := map[uint32]netip.Prefix{}
	for _, e := range cidrs {
		byID[e.Identity] = e.Prefix
	}
	out := []string{fmt.Sprintf("enforced in=%v eg=%v", p.IngressEnforced, p.EgressEnforced)}
	for _, k := range p.Allow {
		s := formatKey(k)
		if pfx, ok := byID[k.Identity]; ok {
			k.Identity = 0
			s = formatKey(k) + " cidr=" + pfx.String()
		}
		out = append(out, s)
	}
	slices.Sort(out)
	return out
}

// TestIncrementalMatchesFromScratch drives random identity, policy and
// namespace changes and checks after each one that (1) applying the
// reported Changes to the previous state gives exactly the new state, and
// (2) that state equals what a repository built from scratch computes.
func TestIncrementalMatchesFromScratch(t *testing.T) {
	const nIdentities = 45
	decoded := make([]*Policy, len(poolPolicies))
	for i, doc := range poolPolicies {
		decoded[i] = mustDecode(t, doc)
	}
	for _, seed := range []uint64{1, 2, 3, 4} {
		t.Run(fmt.Sprintf("seed=%d", seed), func(t *testing.T) {
			rng := rand.New(rand.NewPCG(seed, seed))
			for _, allClusters := range []bool{false, true} {
				cfg := Config{ClusterName: "cluster1", AllClusters: allClusters, AllowLocalhost: allClusters}
				r := newTestRepo(t, cfg, nil)
				a := &applier{t: t, eps: map[uint32]*shadow{}, ipcache: map[netip.Prefix]uint32{}}
				identities := map[uint32]Identity{}
				policies := map[Ref]*Policy{}
				nsLabels := map[string]map[string]string{}
				// Track every local candidate, present or not.
				for i := 0; i < nIdentities; i++ {
					if id := poolIdentity(i); id.Labels[LabelCluster] == "cluster1" {
						p, err := r.Track(id.ID)
						if !errors.Is(err, ErrUnknownIdentity) {
							t.Fatalf("Track(%d) of an unknown identity: err = %v", id.ID, err)
						}
						a.eps[id.ID] = shadowOf(p)
					}
				}
				for step := 0; step < 250; step++ {
					var what string
					var c Changes
					switch op := rng.IntN(10); {
					case op < 4:
						id := poolIdentity(rng.IntN(nIdentities))
						what = fmt.Sprintf("upsert identity %d", id.ID)
						var err error
						if c, err = r.UpsertIdentity(id); err != nil {
							t.Fatal(err)
						}
						identities[id.ID] = id
					case op < 5:
						id := poolIdentity(rng.IntN(nIdentities)).ID
						what = fmt.Sprintf("delete identity %d", id)
						c = r.DeleteIdentity(id)
						delete(identities, id)
					case op < 8:
						p := decoded[rng.IntN(len(decoded))]
						what = "upsert " + p.Ref.String()
						var err error
						if c, err = r.UpsertPolicy(p); err != nil {
							t.Fatal(err)
						}
						policies[p.Ref] = p
					case op < 9:
						p := decoded[rng.IntN(len(decoded))]
						what = "delete " + p.Ref.String()
						c = r.DeletePolicy(p.Ref)
						delete(policies, p.Ref)
					default:
						ns := []string{"default", "kube-system", "prod"}[rng.IntN(3)]
						var l map[string]string
						if rng.IntN(2) == 0 {
							l = map[string]string{"team": "red"}
						}
						what = fmt.Sprintf("namespace %s labels %v", ns, l)
						c = r.SetNamespaceLabels(ns, l)
						nsLabels[ns] = l
					}
					a.apply(c)

					fresh := newTestRepo(t, cfg, nil)
					for _, p := range policies {
						if _, err := fresh.UpsertPolicy(p); err != nil {
							t.Fatal(err)
						}
					}
					for ns, l := range nsLabels {
						fresh.SetNamespaceLabels(ns, l)
					}
					for _, id := range identities {
						if _, err := fresh.UpsertIdentity(id); err != nil {
							t.Fatal(err)
						}
					}
					cidrs := r.CIDRIdentities()
					if !maps.Equal(a.ipcache, ipcacheMap(cidrs)) {
						t.Fatalf("step %d (%s): ipcache from changes %v, repository holds %v", step, what, a.ipcache, cidrs)
					}
					for id, s := range a.eps {
						_, known := identities[id]
						got, err := r.Compute(id)
						if known != (err == nil) {
							t.Fatalf("step %d (%s): Compute(%d) err = %v, identity known = %v", step, what, id, err, known)
						}
						if applied := s.policy(known); !samePolicy(applied, got) {
							t.Fatalf("step %d (%s): identity %d: changes applied give\n%s\nCompute gives\n%s", step, what, id, formatPolicy(applied), formatPolicy(got))
						}
						want, _ := fresh.Compute(id)
						if g, w := portable(got, cidrs), portable(want, fresh.CIDRIdentities()); !reflect.DeepEqual(g, w) {
							t.Fatalf("step %d (%s): identity %d: incremental\n%q\nfrom scratch\n%q", step, what, id, g, w)
						}
					}
				}
			}
		})
	}
}

func ipcacheMap(entries []state.IPCacheEntry) map[netip.Prefix]uint32 {
	m := map[netip.Prefix]uint32{}
	for _, e := range entries {
		m[e.Prefix] = e.Identity
	}
	return m
}

// One identity appearing touches only the endpoints whose rules select it,
// with exactly the keys for it.
func TestIdentityAppearsChangesOnlyAffectedKeys(t *testing.T) {
	r := newTestRepo(t, Config{}, meshIdentities())
	for _, doc := range []string{
		cnp("to-rebels", "  endpointSelector:\n    matchLabels: {name: x-wing}\n  egress:\n  - toEndpoints:\n    - matchLabels: {name: rebel-base, io.cilium.k8s.policy.cluster: cluster2}\n    toPorts:\n    - ports: [{port: \"80\", protocol: TCP}]\n"),
		cnp("web", "  endpointSelector:\n    matchLabels: {app: web}\n  ingress:\n  - fromEndpoints:\n    - matchLabels: {app: plain}\n"),
	} {
		if _, err := r.UpsertPolicy(mustDecode(t, doc)); err != nil {
			t.Fatal(err)
		}
	}
	for _, id := range []uint32{c1XWing, c1Web, c1Rebel} {
		if _, err := r.Track(id); err != nil {
			t.Fatal(err)
		}
	}
	const newRebel = 2<<16 | 77
	tests := []struct {
		name string
		do   func() (Changes, error)
		want Changes
	}{
		{
			name: "a new cluster2 rebel-base is allowed for x-wing only",
			do: func() (Changes, error) {
				return r.UpsertIdentity(podIdentity(newRebel, "cluster2", "default", "name", "rebel-base"))
			},
			want: Changes{Endpoints: []EndpointChange{{Identity: c1XWing, EgressEnforced: true, Added: []state.PolicyKey{eg(newRebel, state.TCP, 80)}}}},
		},
		{
			name: "re-adding it unchanged changes nothing",
			do: func() (Changes, error) {
				return r.UpsertIdentity(podIdentity(newRebel, "cluster2", "default", "name", "rebel-base"))
			},
		},
		{
			name: "an identity no rule selects changes nothing",
			do: func() (Changes, error) {
				return r.UpsertIdentity(podIdentity(2<<16|78, "cluster2", "default", "name", "tie-fighter"))
			},
		},
		{
			name: "it disappears",
			do:   func() (Changes, error) { return r.DeleteIdentity(newRebel), nil },
			want: Changes{Endpoints: []EndpointChange{{Identity: c1XWing, EgressEnforced: true, Removed: []state.PolicyKey{eg(newRebel, state.TCP, 80)}}}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := tt.do()
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("changes\n got %+v\nwant %+v", got, tt.want)
			}
		})
	}
}

// A bad new version is refused and the last good one stays in force.
func TestLastGoodPolicyStays(t *testing.T) {
	r := newTestRepo(t, Config{}, meshIdentities())
	good := mustDecode(t, cnp("p", rebelSubject+"  ingress:\n  - fromEndpoints:\n    - matchLabels: {name: x-wing}\n"))
	if _, err := r.UpsertPolicy(good); err != nil {
		t.Fatal(err)
	}
	want := allowing(true, false, in(c1XWing, state.ProtoAny, 0))

	badPrefix := *good
	badPrefix.Specs = []Spec{{Subject: good.Specs[0].Subject, EnforceEgress: true, Egress: []Rule{{
		Peers: []Peer{{CIDR: &CIDR{Prefix: netip.MustParsePrefix("10.0.0.1/8")}}}}}}}
	badOperator := *good
	badOperator.Specs = []Spec{{Subject: Selector{Requirements: []Requirement{{Key: "app", Operator: "Near"}}}}}
	badPeer := *good
	badPeer.Specs = []Spec{{Subject: good.Specs[0].Subject, Ingress: []Rule{{Peers: []Peer{{Entity: EntityWorld, CIDR: &CIDR{}}}}}}}
	for _, tt := range []struct {
		name string
		p    *Policy
	}{
		{"host bits in a prefix", &badPrefix},
		{"unknown operator", &badOperator},
		{"peer with two selectors", &badPeer},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c, err := r.UpsertPolicy(tt.p)
			if err == nil {
				t.Fatal("upsert succeeded")
			}
			if !c.Empty() {
				t.Errorf("refused upsert reported changes %+v", c)
			}
			got, _ := r.Compute(c1Rebel)
			if !samePolicy(got, want) {
				t.Fatalf("after refused upsert: %s, want the good version %s", formatPolicy(got), formatPolicy(want))
			}
			if p, _ := r.Policy(good.Ref); p != good {
				t.Fatal("the good version is no longer the one in force")
			}
		})
	}
}

func TestCIDRIdentities(t *testing.T) {
	r := newTestRepo(t, Config{}, meshIdentities())
	if _, err := r.Track(c1Rebel); err != nil {
		t.Fatal(err)
	}
	a := mustDecode(t, cnp("a", rebelSubject+"  egress:\n  - toCIDRSet:\n    - {cidr: 10.0.0.0/8, except: [10.1.0.0/16]}\n"))
	b := mustDecode(t, cnp("b", rebelSubject+"  egress:\n  - toCIDR: [10.1.0.0/16, 0.0.0.0/0]\n"))
	entry := func(p string, id uint32) state.IPCacheEntry {
		return state.IPCacheEntry{Prefix: netip.MustParsePrefix(p), Identity: id}
	}

	c, err := r.UpsertPolicy(a)
	if err != nil {
		t.Fatal(err)
	}
	if want := []state.IPCacheEntry{entry("10.0.0.0/8", cidrFirst), entry("10.1.0.0/16", cidrSecond)}; !reflect.DeepEqual(c.CIDRsAdded, want) {
		t.Fatalf("CIDRsAdded = %v, want %v", c.CIDRsAdded, want)
	}
	// b shares 10.1.0.0/16 (same identity) and allows what a excepts; /0
	// needs no identity.
	if c, err = r.UpsertPolicy(b); err != nil {
		t.Fatal(err)
	}
	if len(c.CIDRsAdded) != 0 {
		t.Fatalf("CIDRsAdded = %v, want none", c.CIDRsAdded)
	}
	got, _ := r.Compute(c1Rebel)
	want := allowing(false, true, eg(cidrFirst, state.ProtoAny, 0), eg(cidrSecond, state.ProtoAny, 0), eg(state.IdentityWorld, state.ProtoAny, 0))
	if !samePolicy(got, want) {
		t.Fatalf("got %s\nwant %s", formatPolicy(got), formatPolicy(want))
	}
	// Dropping a keeps 10.1.0.0/16 (b uses it) and frees 10.0.0.0/8.
	c = r.DeletePolicy(a.Ref)
	if want := []state.IPCacheEntry{entry("10.0.0.0/8", cidrFirst)}; !reflect.DeepEqual(c.CIDRsRemoved, want) || len(c.CIDRsAdded) != 0 {
		t.Fatalf("changes %+v, want 10.0.0.0/8 removed only", c)
	}
	// The freed number is reused first.
	cNew := mustDecode(t, cnp("c", rebelSubject+"  egress:\n  - toCIDR: [172.16.0.0/12]\n"))
	if c, err = r.UpsertPolicy(cNew); err != nil {
		t.Fatal(err)
	}
	if want := []state.IPCacheEntry{entry("172.16.0.0/12", cidrFirst)}; !reflect.DeepEqual(c.CIDRsAdded, want) {
		t.Fatalf("CIDRsAdded = %v, want %v", c.CIDRsAdded, want)
	}
	if got, want := r.CIDRIdentities(), []state.IPCacheEntry{entry("10.1.0.0/16", cidrSecond), entry("172.16.0.0/12", cidrFirst)}; !reflect.DeepEqual(got, want) {
		t.Fatalf("CIDRIdentities = %v, want %v", got, want)
	}
}

func TestNamespaceLabelsChange(t *testing.T) {
	r := newTestRepo(t, Config{}, meshIdentities())
	if _, err := r.Track(c1Rebel); err != nil {
		t.Fatal(err)
	}
	if _, err := r.UpsertPolicy(mustDecode(t, np("p", "  podSelector:\n    matchLabels: {name: rebel-base}\n  ingress:\n  - from:\n    - namespaceSelector:\n        matchLabels: {team: a}\n"))); err != nil {
		t.Fatal(err)
	}
	steps := []struct {
		ns     string
		labels map[string]string
		want   Changes
	}{
		{"other", map[string]string{"team": "a"}, Changes{Endpoints: []EndpointChange{{Identity: c1Rebel, IngressEnforced: true, Added: []state.PolicyKey{in(c1DB, state.ProtoAny, 0)}}}}},
		{"kube-system", map[string]string{"team": "b"}, Changes{}},
		{"other", nil, Changes{Endpoints: []EndpointChange{{Identity: c1Rebel, IngressEnforced: true, Removed: []state.PolicyKey{in(c1DB, state.ProtoAny, 0)}}}}},
	}
	for i, s := range steps {
		if got := r.SetNamespaceLabels(s.ns, s.labels); !reflect.DeepEqual(got, s.want) {
			t.Fatalf("step %d: namespace %s labels %v: changes %+v, want %+v", i, s.ns, s.labels, got, s.want)
		}
	}
}

func TestTrackCounts(t *testing.T) {
	r := newTestRepo(t, Config{}, meshIdentities())
	p := mustDecode(t, cnp("p", rebelSubject+"  ingress:\n  - {}\n"))
	for range 2 {
		if _, err := r.Track(c1Rebel); err != nil {
			t.Fatal(err)
		}
	}
	r.Untrack(c1Rebel)
	c, err := r.UpsertPolicy(p)
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Endpoints) != 1 || c.Endpoints[0].Identity != c1Rebel || !c.Endpoints[0].IngressEnforced {
		t.Fatalf("still tracked after one of two Untracks: changes %+v", c)
	}
	r.Untrack(c1Rebel)
	if c := r.DeletePolicy(p.Ref); !c.Empty() {
		t.Fatalf("untracked identity reported: %+v", c)
	}
}

func TestUpsertIdentityRejects(t *testing.T) {
	r := newTestRepo(t, Config{}, nil)
	for _, id := range []Identity{
		{ID: state.IdentityWorld},
		{ID: CIDRIdentityBase | 5},
		{ID: 1 << 16, Labels: map[string]string{"reserved:host": ""}},
		{ID: 1 << 16, Labels: map[string]string{"cidr:10.0.0.0/8": ""}},
	} {
		if _, err := r.UpsertIdentity(id); err == nil {
			t.Errorf("UpsertIdentity(%+v) succeeded", id)
		}
	}
	// Source prefixes on identity labels are stripped.
	if _, err := r.UpsertIdentity(Identity{ID: 1<<16 | 1, Labels: map[string]string{"k8s:app": "x", "k8s:" + LabelNamespace: "default", LabelCluster: "cluster1"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := r.UpsertPolicy(mustDecode(t, cnp("p", "  endpointSelector: {matchLabels: {app: x}}\n  ingress:\n  - {}\n"))); err != nil {
		t.Fatal(err)
	}
	if got, _ := r.Compute(1<<16 | 1); !samePolicy(got, allowing(true, false)) {
		t.Fatalf("got %s", formatPolicy(got))
	}
}

// The agent feeds identities from kvstore watchers and policies from
// informers on different goroutines while the datapath reads; run with
// -race.
func TestConcurrentUse(t *testing.T) {
	r := newTestRepo(t, Config{}, meshIdentities())
	p := mustDecode(t, cnp("p", "  endpointSelector: {}\n  egress:\n  - toEndpoints:\n    - matchLabels: {app: a1}\n  - toCIDR: [10.0.0.0/8]\n"))
	done := make(chan struct{})
	errs := make(chan error, 3)
	go func() {
		defer func() { done <- struct{}{} }()
		for i := range 200 {
			id := poolIdentity(i % 45)
			if _, err := r.UpsertIdentity(id); err != nil {
				errs <- err
				return
			}
			if i%3 == 0 {
				r.DeleteIdentity(id.ID)
			}
		}
	}()
	go func() {
		defer func() { done <- struct{}{} }()
		for i := range 100 {
			if i%2 == 0 {
				if _, err := r.UpsertPolicy(p); err != nil {
					errs <- err
					return
				}
			} else {
				r.DeletePolicy(p.Ref)
			}
			r.SetNamespaceLabels("default", map[string]string{"round": fmt.Sprint(i)})
		}
	}()
	go func() {
		defer func() { done <- struct{}{} }()
		for range 200 {
			// The first goroutine deletes pool identities, which may be
			// these: failing closed with ErrUnknownIdentity is then the
			// documented answer, not a race.
			if _, err := r.Track(c1Rebel); err != nil && !errors.Is(err, ErrUnknownIdentity) {
				errs <- err
				return
			}
			if _, err := r.Compute(c1XWing); err != nil && !errors.Is(err, ErrUnknownIdentity) {
				errs <- err
				return
			}
			r.CIDRIdentities()
			r.Untrack(c1Rebel)
		}
	}()
	for range 3 {
		<-done
	}
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}
