package sim

import (
	"fmt"
	"sort"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/meshbed/meshbed/mesh/event"
)

// component names one running component of the mesh.
type component struct{ cluster, node, name string }

// registry gives a component that is starting a fresh Prometheus registry
// (a restarted component registers its metrics anew) and the recorder of
// its events, counted in that registry.
func (m *Mesh) registry(cluster, node, name string) (*prometheus.Registry, event.Recorder, error) {
	reg := prometheus.NewRegistry()
	rec, err := event.Counted(m.recorder(cluster, node, name), reg)
	if err != nil {
		return nil, nil, err
	}
	m.mu.Lock()
	m.registries[component{cluster, node, name}] = reg
	m.mu.Unlock()
	return reg, rec, nil
}

// registerDatapath gives a node's datapath (which outlives its agents) a
// registry of its own, component "datapath".
func (m *Mesh) registerDatapath(cluster, node string, c prometheus.Collector) error {
	reg := prometheus.NewRegistry()
	if err := reg.Register(c); err != nil {
		return err
	}
	m.mu.Lock()
	m.registries[component{cluster, node, "datapath"}] = reg
	m.mu.Unlock()
	return nil
}

// Gather implements prometheus.Gatherer over every component's registry:
// each series gets the labels cluster, node (empty for the apiserver and
// kvstoremesh) and component, so that many components of one process do
// not collide. A stopped component's last values stay until it restarts.
func (m *Mesh) Gather() ([]*dto.MetricFamily, error) {
	m.mu.Lock()
	comps := make([]component, 0, len(m.registries))
	regs := make(map[component]*prometheus.Registry, len(m.registries))
	for c, r := range m.registries {
		comps = append(comps, c)
		regs[c] = r
	}
	m.mu.Unlock()
	sort.Slice(comps, func(i, j int) bool {
		a, b := comps[i], comps[j]
		if a.cluster != b.cluster {
			return a.cluster < b.cluster
		}
		if a.node != b.node {
			return a.node < b.node
		}
		return a.name < b.name
	})
	byName := map[string]*dto.MetricFamily{}
	for _, c := range comps {
		fams, err := regs[c].Gather()
		if err != nil {
			return nil, fmt.Errorf("metrics of %s %s/%s: %w", c.name, c.cluster, c.node, err)
		}
		extra := []*dto.LabelPair{label("cluster", c.cluster), label("component", c.name), label("node", c.node)}
		for _, f := range fams {
			all, ok := byName[f.GetName()]
			if !ok {
				all = &dto.MetricFamily{Name: f.Name, Help: f.Help, Type: f.Type}
				byName[f.GetName()] = all
			} else if all.GetType() != f.GetType() {
				return nil, fmt.Errorf("metric %s is a %s in one component and a %s in another", f.GetName(), all.GetType(), f.GetType())
			}
			for _, mt := range f.Metric {
				mt.Label = append(mt.Label, extra...)
				sort.Slice(mt.Label, func(i, j int) bool { return mt.Label[i].GetName() < mt.Label[j].GetName() })
				all.Metric = append(all.Metric, mt)
			}
		}
	}
	out := make([]*dto.MetricFamily, 0, len(byName))
	for _, f := range byName {
		out = append(out, f)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].GetName() < out[j].GetName() })
	return out, nil
}

func label(name, value string) *dto.LabelPair { return &dto.LabelPair{Name: &name, Value: &value} }
