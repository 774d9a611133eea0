package sim

import (
	"fmt"
	"slices"
	"strings"

	"github.com/meshbed/meshbed/mesh/flow"
)

// FlowObservers returns the flow observers of the running agents of the
// named cluster and node (every cluster, every node when empty; a node
// name alone picks that node in every cluster that has it). A cluster or
// node that does not exist is an error; agents that are stopped have no
// observer and are left out.
func (m *Mesh) FlowObservers(cluster, node string) ([]*flow.Observer, error) {
	clusters := m.Clusters()
	if cluster != "" {
		c, ok := m.Cluster(cluster)
		if !ok {
			names := make([]string, 0, len(clusters))
			for _, c := range clusters {
				names = append(names, c.Name())
			}
			return nil, fmt.Errorf("no cluster %q in the mesh (clusters: %s)", cluster, strings.Join(names, ", "))
		}
		clusters = []*Cluster{c}
	}
	var out []*flow.Observer
	found := false
	for _, c := range clusters {
		for _, n := range c.Nodes() {
			if node != "" && n.Name() != node {
				continue
			}
			found = true
			if a := n.Agent(); a != nil && a.Flows() != nil {
				out = append(out, a.Flows())
			}
		}
	}
	if node != "" && !found {
		var names []string
		for _, c := range clusters {
			for _, n := range c.Nodes() {
				if !slices.Contains(names, n.Name()) {
					names = append(names, n.Name())
				}
			}
		}
		where := "any cluster"
		if cluster != "" {
			where = "cluster " + cluster
		}
		return nil, fmt.Errorf("no node %q in %s (nodes: %s)", node, where, strings.Join(names, ", "))
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%w: every selected agent is stopped", flow.ErrNoObserver)
	}
	return out, nil
}
