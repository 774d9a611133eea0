package service

import (
	"net/netip"
	"sort"

	"github.com/meshbed/meshbed/datapath/state"
	"github.com/meshbed/meshbed/mesh/event"
)

// Events compares the decisions of two successive merges on one node and
// returns the decision events that tell what changed (time, cluster and
// node are left for the caller's event.Scope):
//
//   - BackendsWithdrawn when a cluster's backends of a service are
//     withdrawn (a ClusterWithdrawn decision appears), BackendsRestored
//     when they are in use again: the decision is gone and the service has
//     active backends of that cluster (a cluster that was removed, or whose
//     backends are gone, restores nothing);
//   - AffinityFallback when a service falls back from its preferred side
//     (the first of its frontends to do so), AffinityRestored when none of
//     its frontends falls back any more and the service still exists.
//
// services are the services of the current merge, clusters maps the
// remote clusters' IDs to their names. The events are sorted by service,
// then kind, then cluster.
func Events(prev, cur []Decision, services []state.Service, clusters map[uint32]string) []event.Event {
	type key struct{ svc, cluster string }
	withdrawn := func(ds []Decision) map[key]Decision {
		m := map[key]Decision{}
		for _, d := range ds {
			if d.Kind == DecisionClusterWithdrawn {
				m[key{d.Service, d.Cluster}] = d
			}
		}
		return m
	}
	fallback := func(ds []Decision) map[string]Decision {
		m := map[string]Decision{}
		for _, d := range ds {
			if d.Kind == DecisionAffinityFallback {
				if prev, ok := m[d.Service]; ok {
					d.Backends = max(d.Backends, prev.Backends)
				}
				m[d.Service] = d
			}
		}
		return m
	}
	exists := make(map[string]bool, len(services))
	type backend struct {
		ip   netip.Addr
		port uint16
	}
	active := map[key]map[backend]bool{}
	for _, s := range services {
		exists[s.Name] = true
		for _, b := range s.Backends {
			name, remote := clusters[b.ClusterID]
			if !remote || b.State != state.BackendActive {
				continue
			}
			k := key{s.Name, name}
			if active[k] == nil {
				active[k] = map[backend]bool{}
			}
			active[k][backend{b.IP, b.Port}] = true
		}
	}
	var out []event.Event
	pw, cw := withdrawn(prev), withdrawn(cur)
	for k, d := range cw {
		if _, ok := pw[k]; !ok {
			out = append(out, event.Event{Kind: event.BackendsWithdrawn, Remote: k.cluster, Service: k.svc,
				Backends: d.Backends, Message: d.Detail})
		}
	}
	for k := range pw {
		if _, ok := cw[k]; !ok && len(active[k]) > 0 {
			out = append(out, event.Event{Kind: event.BackendsRestored, Remote: k.cluster, Service: k.svc,
				Backends: len(active[k]), Message: "cluster reachable again; its backends take new connections"})
		}
	}
	pf, cf := fallback(prev), fallback(cur)
	for svc, d := range cf {
		if _, ok := pf[svc]; !ok {
			out = append(out, event.Event{Kind: event.AffinityFallback, Service: svc, Backends: d.Backends, Message: d.Detail})
		}
	}
	for svc := range pf {
		if _, ok := cf[svc]; !ok && exists[svc] {
			out = append(out, event.Event{Kind: event.AffinityRestored, Service: svc,
				Message: "the preferred side has active backends again and takes new connections"})
		}
	}
	sort.Slice(out, func(i, j int) bool {
		a, b := out[i], out[j]
		if a.Service != b.Service {
			return a.Service < b.Service
		}
		if a.Kind != b.Kind {
			return a.Kind < b.Kind
		}
		return a.Remote < b.Remote
	})
	return out
}
