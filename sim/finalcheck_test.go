package sim

import (
	"context"
	"fmt"

	"github.com/meshbed/meshbed/scenarios"
	"github.com/meshbed/meshbed/scenarios/engine"
)

// finalCheck runs the scenario engine's final check on a mesh built by a
// test, as a scenario run would at its end.
func finalCheck(ctx context.Context, m *Mesh) error {
	return engine.FinalCheck(ctx, meshReader{m}, topologyOf(m.Spec()))
}

// topologyOf is the scenario topology of a spec.
func topologyOf(s Spec) *scenarios.Topology {
	tp := &scenarios.Topology{KVStoreMesh: s.KVStoreMesh, RemoteLoss: scenarios.RemoteLossWithdraw}
	if s.FailStatic {
		tp.RemoteLoss = scenarios.RemoteLossFailStatic
	}
	for i, c := range s.Clusters {
		tp.Clusters = append(tp.Clusters, scenarios.Cluster{Name: c.Name, ID: int(c.ID), Nodes: c.Nodes, PodCIDR: c.PodCIDR, ServiceCIDR: c.ServiceCIDR})
		for _, o := range s.Clusters[:i] {
			if s.connected(o.Name, c.Name) {
				tp.Connections = append(tp.Connections, [2]string{o.Name, c.Name})
			}
		}
	}
	return tp
}

// meshReader reads a mesh as the engine's final check does (sim/target
// does the same for scenario runs; it cannot be imported from here).
type meshReader struct{ m *Mesh }

func (r meshReader) cluster(name string) (*Cluster, error) {
	c, ok := r.m.Cluster(name)
	if !ok {
		return nil, fmt.Errorf("no cluster %q", name)
	}
	return c, nil
}

func (r meshReader) KVGet(ctx context.Context, cluster, key string) ([]byte, bool, error) {
	c, err := r.cluster(cluster)
	if err != nil {
		return nil, false, err
	}
	return c.KVStoreGet(ctx, key)
}

func (r meshReader) KVList(ctx context.Context, cluster, prefix string) (map[string][]byte, error) {
	c, err := r.cluster(cluster)
	if err != nil {
		return nil, err
	}
	return c.KVStoreScan(ctx, prefix)
}

func (r meshReader) Objects(ctx context.Context, cluster string) (*engine.ClusterObjects, error) {
	c, err := r.cluster(cluster)
	if err != nil {
		return nil, err
	}
	svcs, slices, pods, err := c.Objects(ctx)
	return &engine.ClusterObjects{Services: svcs, EndpointSlices: slices, Pods: pods}, err
}

func (r meshReader) Nodes(_ context.Context, cluster string) ([]engine.NodeState, error) {
	c, err := r.cluster(cluster)
	if err != nil {
		return nil, err
	}
	var out []engine.NodeState
	for _, n := range c.Nodes() {
		s, err := n.ReadState()
		if err != nil {
			return nil, err
		}
		out = append(out, engine.NodeState{Node: n.Name(), Running: s.Running, Desired: s.Desired, Services: s.Services, IPCache: s.IPCache})
	}
	return out, nil
}
