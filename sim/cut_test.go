package sim

import (
	"net/netip"
	"slices"
	"testing"
)

// TestCutTargets checks which prefixes a sender blackholes towards another
// group, per plane: data cuts node and pod traffic only, control cuts only
// the etcd connections between clusters (to a remote apiserver, and an
// apiserver's replies to remote clients), both cuts the union; nothing of
// the control plane is ever cut within a cluster.
func TestCutTargets(t *testing.T) {
	c1 := &Cluster{spec: ClusterSpec{Name: "cluster1", ID: 1}}
	c2 := &Cluster{spec: ClusterSpec{Name: "cluster2", ID: 2}}
	nodeHost := func(c *Cluster, name, ip, pods string) host {
		n := &Node{name: name, cluster: c, ip: netip.MustParseAddr(ip), podCIDR: netip.MustParsePrefix(pods)}
		return host{cluster: c, node: n, addr: n.ip}
	}
	api := func(c *Cluster, ip string) host {
		return host{cluster: c, addr: netip.MustParseAddr(ip), apiserver: true}
	}
	var (
		api1 = api(c1, "172.20.1.1")
		n11  = nodeHost(c1, "node-1", "172.20.1.2", "10.10.1.0/24")
		n12  = nodeHost(c1, "node-2", "172.20.1.3", "10.10.2.0/24")
		api2 = api(c2, "172.20.2.1")
		n21  = nodeHost(c2, "node-1", "172.20.2.2", "10.20.1.0/24")
		n22  = nodeHost(c2, "node-2", "172.20.2.3", "10.20.2.0/24")
		// A whole cluster as Mesh.hosts resolves it: apiserver first.
		cluster2 = []host{api2, n21, n22}
	)
	p := netip.MustParsePrefix
	tests := []struct {
		name  string
		from  host
		to    []host
		plane Plane
		want  []string
	}{
		// A node of cluster1 towards all of cluster2.
		{"node to cluster, data", n11, cluster2, PlaneData,
			[]string{"172.20.2.2/32", "10.20.1.0/24", "172.20.2.3/32", "10.20.2.0/24"}},
		{"node to cluster, control", n11, cluster2, PlaneControl,
			[]string{"172.20.2.1/32"}},
		{"node to cluster, both", n11, cluster2, PlaneBoth,
			[]string{"172.20.2.1/32", "172.20.2.2/32", "10.20.1.0/24", "172.20.2.3/32", "10.20.2.0/24"}},

		// The apiserver of cluster1 towards all of cluster2: kvstoremesh's
		// connection to the remote etcd, and replies to remote agents.
		{"apiserver to cluster, data", api1, cluster2, PlaneData, nil},
		{"apiserver to cluster, control", api1, cluster2, PlaneControl,
			[]string{"172.20.2.1/32", "172.20.2.2/32", "172.20.2.3/32"}},
		{"apiserver to cluster, both", api1, cluster2, PlaneBoth,
			[]string{"172.20.2.1/32", "172.20.2.2/32", "172.20.2.3/32"}},

		// Node-level members: a single node as the other group.
		{"node to node, data", n11, []host{n22}, PlaneData, []string{"172.20.2.3/32", "10.20.2.0/24"}},
		{"node to node, control", n11, []host{n22}, PlaneControl, nil},
		{"apiserver to node, control", api1, []host{n21}, PlaneControl, []string{"172.20.2.2/32"}},
		{"apiserver to node, data", api1, []host{n21}, PlaneData, nil},
		{"node to apiserver, data", n21, []host{api1}, PlaneData, nil},

		// Within one cluster (a node cut off from the rest of its own
		// cluster): its data plane is cut, but agents keep their local
		// apiserver and the apiserver its local agents.
		{"same cluster, node to rest, both", n11, []host{api1, n12}, PlaneBoth,
			[]string{"172.20.1.3/32", "10.10.2.0/24"}},
		{"same cluster, node to rest, control", n11, []host{api1, n12}, PlaneControl, nil},
		{"same cluster, apiserver to node, both", api1, []host{n11}, PlaneBoth, nil},
		{"same cluster, apiserver to node, control", api1, []host{n11}, PlaneControl, nil},
		{"same cluster, node to node, data", n12, []host{n11}, PlaneData, []string{"172.20.1.2/32", "10.10.1.0/24"}},

		{"nobody to cut", n11, nil, PlaneBoth, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var want []netip.Prefix
			for _, s := range tt.want {
				want = append(want, p(s))
			}
			got := cutTargets(tt.from, tt.to, tt.plane)
			if !slices.Equal(got, want) {
				t.Errorf("cutTargets(%s) = %v, want %v", tt.plane, got, want)
			}
		})
	}
}
