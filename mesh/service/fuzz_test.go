package service

import (
	"encoding/json"
	"errors"
	"net/netip"
	"slices"
	"testing"

	"github.com/meshbed/meshbed/datapath/state"
	"github.com/meshbed/meshbed/mesh/wire"
)

// FuzzParseAnnotations: user-written annotations never panic, and the
// returned policy is always one the merge can use.
func FuzzParseAnnotations(f *testing.F) {
	f.Add("true", "false", "local")
	f.Add("TRUE", "", "Remote")
	f.Add("yes", "true", "\x00")
	f.Fuzz(func(t *testing.T, global, shared, affinity string) {
		p, err := ParseAnnotations(map[string]string{AnnotationGlobal: global, AnnotationShared: shared, AnnotationAffinity: affinity})
		switch p.Affinity {
		case AffinityNone, AffinityLocal, AffinityRemote:
		default:
			t.Fatalf("affinity %q", p.Affinity)
		}
		if err != nil && !errors.Is(err, ErrUnknownAffinity) {
			t.Fatalf("unexpected error %v", err)
		}
		if !p.Global && (p.Shared || p.Affinity != AffinityNone) {
			t.Fatalf("non-global policy %+v", p)
		}
	})
}

// FuzzMergeRemote feeds an arbitrary remote ClusterService (as JSON, the way
// it arrives) into the merge: it must not panic, must not invent frontends,
// must keep backends sorted and unique, and must only use remote ports whose
// name and protocol the local service has.
func FuzzMergeRemote(f *testing.F) {
	seed, _ := json.Marshal(export("c2", 2, "10.2.0.1", "fd00::1"))
	f.Add(seed, "local")
	f.Add([]byte(`{"cluster":"c2","clusterID":2,"namespace":"default","name":"rebel-base","shared":true,"backends":{"::ffff:10.2.0.1":{"http":{"Protocol":"TCP","Port":80}},"x":{"http":null},"10.2.0.2":{"":{"Protocol":"SCTP","Port":1}}}}`), "remote")
	f.Fuzz(func(t *testing.T, value []byte, affinity string) {
		var cs wire.ClusterService
		if json.Unmarshal(value, &cs) != nil {
			return
		}
		svc := local(map[string]string{AnnotationGlobal: "true", AnnotationAffinity: affinity}, ready("10.1.0.1"))
		svc.Ports = append(svc.Ports, ServicePort{Name: "", Port: 53, Protocol: state.UDP})
		res := Merge(&Input{
			Options: Options{LocalClusterID: localID},
			Local:   []LocalService{svc},
			Remote:  []RemoteCluster{remote("c2", 2, true, &cs)},
		})
		if len(res.Services) != 2 {
			t.Fatalf("got %d frontends, want 2", len(res.Services))
		}
		for _, s := range res.Services {
			if !slices.Contains(svc.ClusterIPs, s.Frontend.IP) {
				t.Fatalf("invented frontend %s", s.Frontend)
			}
			for i, b := range s.Backends {
				if i > 0 && compareAddrPort(s.Backends[i-1], b) >= 0 {
					t.Fatalf("backends not sorted/unique: %v", s.Backends)
				}
				if b.Protocol != s.Frontend.Protocol || b.IP.Is4() != s.Frontend.IP.Is4() || b.Port == 0 {
					t.Fatalf("backend %s does not fit frontend %s", b, s.Frontend)
				}
				if b.ClusterID != localID && b.ClusterID != 2 {
					t.Fatalf("backend %s from unknown cluster", b)
				}
				if b.ClusterID == localID && b.IP != netip.MustParseAddr("10.1.0.1") {
					t.Fatalf("backend %s attributed to the local cluster", b)
				}
			}
		}
	})
}
