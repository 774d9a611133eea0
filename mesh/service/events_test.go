package service

import (
	"net/netip"
	"testing"

	"github.com/meshbed/meshbed/datapath/state"
	"github.com/meshbed/meshbed/mesh/event"
)

func TestEvents(t *testing.T) {
	fe := state.Frontend{IP: netip.MustParseAddr("10.0.0.1"), Port: 80, Protocol: state.TCP}
	withdrawn := Decision{Service: "default/rebel-base", Kind: DecisionClusterWithdrawn, Cluster: "cluster2", Backends: 2}
	fallback := Decision{Service: "default/rebel-base", Kind: DecisionAffinityFallback, Frontend: fe, Backends: 2}
	clusters := map[uint32]string{2: "cluster2"}
	svc := func(states ...state.BackendState) []state.Service {
		s := state.Service{Name: "default/rebel-base", Frontend: fe}
		for i, st := range states {
			s.Backends = append(s.Backends, state.Backend{IP: netip.AddrFrom4([4]byte{10, 20, 1, byte(i + 1)}), Port: 80, ClusterID: 2, State: st})
		}
		return []state.Service{s}
	}
	for _, tc := range []struct {
		name      string
		prev, cur []Decision
		services  []state.Service
		want      []event.Kind
	}{
		{"nothing changed", []Decision{withdrawn}, []Decision{withdrawn}, svc(state.BackendTerminating), nil},
		{"withdrawn", nil, []Decision{withdrawn}, svc(state.BackendTerminating), []event.Kind{event.BackendsWithdrawn}},
		{"restored with active backends", []Decision{withdrawn}, nil, svc(state.BackendActive, state.BackendActive), []event.Kind{event.BackendsRestored}},
		{"back without backends restores nothing", []Decision{withdrawn}, nil, svc(), nil},
		{"service gone restores nothing", []Decision{withdrawn}, nil, nil, nil},
		{"fallback", nil, []Decision{fallback}, svc(state.BackendActive), []event.Kind{event.AffinityFallback}},
		{"fallback on a second frontend is not a new one", []Decision{fallback}, []Decision{fallback, fallback}, svc(state.BackendActive), nil},
		{"affinity restored", []Decision{fallback}, nil, svc(state.BackendTerminating), []event.Kind{event.AffinityRestored}},
		{"affinity of a deleted service is not restored", []Decision{fallback}, nil, nil, nil},
		{"both at once", []Decision{fallback}, []Decision{withdrawn}, svc(state.BackendTerminating), []event.Kind{event.AffinityRestored, event.BackendsWithdrawn}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := Events(tc.prev, tc.cur, tc.services, clusters)
			if len(got) != len(tc.want) {
				t.Fatalf("got %v, want kinds %v", got, tc.want)
			}
			for i, e := range got {
				if e.Kind != tc.want[i] || e.Service != "default/rebel-base" {
					t.Errorf("event %d: %v, want %s of default/rebel-base", i, e, tc.want[i])
				}
				if (e.Kind == event.BackendsWithdrawn || e.Kind == event.BackendsRestored) && e.Remote != "cluster2" {
					t.Errorf("event %d: remote %q, want cluster2", i, e.Remote)
				}
			}
			if len(got) > 0 && got[0].Kind == event.BackendsRestored && got[0].Backends != 2 {
				t.Errorf("restored %d backends, want the 2 active ones", got[0].Backends)
			}
		})
	}
}
