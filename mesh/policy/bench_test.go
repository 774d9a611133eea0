package policy

import (
	"fmt"
	"testing"
)

const (
	benchClusters   = 16
	benchIdentities = 2000
	benchPolicies   = 100
	benchApps       = 25
	benchNamespaces = 8
)

func benchIdentity(cluster, i int) Identity {
	return podIdentity(uint32(cluster)<<16|uint32(i+1), fmt.Sprintf("cluster%d", cluster), fmt.Sprintf("ns-%d", i%benchNamespaces),
		"app", fmt.Sprintf("app-%d", i%benchApps), "tier", fmt.Sprintf("t%d", i%3))
}

// benchPolicy mixes what real policies do: same-namespace peers, a
// namespace, another cluster, entities, CIDRs and NetworkPolicies.
func benchPolicy(i int) string {
	ns := fmt.Sprintf("ns-%d", i%benchNamespaces)
	app := func(d int) string { return fmt.Sprintf("app-%d", (i+d)%benchApps) }
	if i%5 == 4 {
		return fmt.Sprintf("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: np-%d, namespace: %s}\nspec:\n"+
			"  podSelector: {matchLabels: {app: %s}}\n  ingress:\n  - from:\n    - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: ns-%d}}\n"+
			"      podSelector: {matchExpressions: [{key: tier, operator: In, values: [t0, t1]}]}\n    ports: [{port: 8080}]\n",
			i, ns, app(0), (i+1)%benchNamespaces)
	}
	egress := fmt.Sprintf("  - toEndpoints:\n    - matchLabels: {io.kubernetes.pod.namespace: ns-%d}\n  - toEntities: [world, kube-apiserver]\n", (i+3)%benchNamespaces)
	if i%10 == 0 {
		egress += fmt.Sprintf("  - toCIDRSet:\n    - {cidr: 10.%d.0.0/16, except: [10.%d.1.0/24]}\n", i, i)
	}
	return fmt.Sprintf("apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: cnp-%d, namespace: %s}\nspec:\n"+
		"  endpointSelector: {matchLabels: {app: %s}}\n  ingress:\n  - fromEndpoints:\n    - matchLabels: {app: %s}\n"+
		"  - fromEndpoints:\n    - matchLabels: {app: %s, io.cilium.k8s.policy.cluster: cluster%d}\n    toPorts:\n    - ports: [{port: \"80\", protocol: TCP}, {port: \"53\"}]\n"+
		"  egress:\n%s",
		i, ns, app(0), app(1), app(2), i%benchClusters+1, egress)
}

// benchRepo builds the mesh: 2,000 identities over 16 clusters, 100
// policies, and every local identity (125) an endpoint of this node.
func benchRepo(b *testing.B, cfg Config) *Repository {
	b.Helper()
	cfg.ClusterName = "cluster1"
	r := newTestRepo(b, cfg, nil)
	for i := range benchIdentities {
		if _, err := r.UpsertIdentity(benchIdentity(i%benchClusters+1, i/benchClusters)); err != nil {
			b.Fatal(err)
		}
	}
	for i := range benchPolicies {
		if _, err := r.UpsertPolicy(mustDecode(b, benchPolicy(i))); err != nil {
			b.Fatal(err)
		}
	}
	keys := 0
	for i := range benchIdentities / benchClusters {
		p, err := r.Track(benchIdentity(1, i).ID)
		if err != nil {
			b.Fatal(err)
		}
		if p != nil {
			keys += len(p.Allow)
		}
	}
	b.Logf("%d tracked endpoint identities, %d policy map entries in total", benchIdentities/benchClusters, keys)
	return r
}

// BenchmarkIdentityAppears measures the work when one identity appears in
// that mesh: the time, and the datapath map entries to write (only the
// affected ones), per new identity.
//
//   - remote-any: identities of cluster 7 with labels cycling through the
//     mix; most are selected by no rule (peer selectors default to the local
//     cluster).
//   - remote-selected: an identity of cluster 7 that policy 6's cluster7
//     rule selects.
//   - local: identities of the local cluster with labels cycling; they are
//     peers of namespace-wide rules.
//   - all-clusters: remote-any with Config.AllClusters, where namespace-wide
//     and app selectors match remote identities too.
func BenchmarkIdentityAppears(b *testing.B) {
	local := benchRepo(b, Config{})
	all := benchRepo(b, Config{AllClusters: true})
	for _, tc := range []struct {
		name string
		r    *Repository
		id   func(n int) Identity
	}{
		{"remote-any", local, func(n int) Identity { return benchIdentity(7, benchIdentities+n) }},
		{"remote-selected", local, func(n int) Identity {
			return podIdentity(7<<16|uint32(benchIdentities+n), "cluster7", "ns-6", "app", "app-8", "tier", "t0")
		}},
		{"local", local, func(n int) Identity { return benchIdentity(1, benchIdentities+n) }},
		{"all-clusters", all, func(n int) Identity { return benchIdentity(7, benchIdentities+n) }},
	} {
		b.Run(tc.name, func(b *testing.B) {
			n, updates, endpoints := 0, 0, 0
			for b.Loop() {
				id := tc.id(n)
				c, err := tc.r.UpsertIdentity(id)
				if err != nil {
					b.Fatal(err)
				}
				updates += c.MapUpdates()
				endpoints += len(c.Endpoints)
				n++
				b.StopTimer()
				tc.r.DeleteIdentity(id.ID)
				b.StartTimer()
			}
			b.ReportMetric(float64(b.Elapsed().Microseconds())/1000/float64(n), "ms/op")
			b.ReportMetric(float64(updates)/float64(n), "map-updates/op")
			b.ReportMetric(float64(endpoints)/float64(n), "endpoints/op")
		})
	}
}

// BenchmarkPolicyUpsert measures replacing one policy in the same mesh by
// a version whose egress goes to another namespace.
func BenchmarkPolicyUpsert(b *testing.B) {
	r := benchRepo(b, Config{})
	v1 := mustDecode(b, benchPolicy(0))
	v2 := mustDecode(b, benchPolicy(0))
	v2.Specs[0].Egress[0].Peers[0].Selector = sel(req(LabelNamespace, OpIn, "ns-5"))
	n, updates := 0, 0
	for b.Loop() {
		p := v1
		if n%2 == 0 {
			p = v2
		}
		c, err := r.UpsertPolicy(p)
		if err != nil {
			b.Fatal(err)
		}
		updates += c.MapUpdates()
		n++
	}
	b.ReportMetric(float64(b.Elapsed().Microseconds())/1000/float64(n), "ms/op")
	b.ReportMetric(float64(updates)/float64(n), "map-updates/op")
}
