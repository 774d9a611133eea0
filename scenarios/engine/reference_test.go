package engine

import (
	"cmp"
	"errors"
	"net/netip"
	"slices"
	"testing"

	"github.com/meshbed/meshbed/datapath/state"
	"github.com/meshbed/meshbed/mesh/service"
	"github.com/meshbed/meshbed/mesh/service/servicetest"
	"github.com/meshbed/meshbed/mesh/wire"
)

// TestReferenceMergeAgrees feeds mesh/service's table of merge cases to
// both the agent's merge and the final check's reference merge: they must
// give the same services, backends and backend states, and both the table's
// answer.
func TestReferenceMergeAgrees(t *testing.T) {
	for _, tc := range servicetest.MergeCases() {
		t.Run(tc.Name, func(t *testing.T) {
			if errors.Is(tc.Warning, service.ErrInvalidImport) {
				t.Skip("the oracle reads each cluster's own API: an export cannot contradict the cluster it comes from")
			}
			agent := servicetest.Render(service.Merge(&service.Input{
				Options: service.Options{LocalClusterID: servicetest.LocalID, Mode: tc.Mode},
				Local:   tc.Local, Remote: tc.Remote,
			}).Services)
			local, remotes := refInput(tc)
			ref := servicetest.Render(sortServices(referenceMerge(local, remotes, tc.Mode == service.ModeFailStatic)))
			if !slices.Equal(ref, agent) {
				t.Errorf("reference merge and agent merge disagree:\n reference %q\n agent     %q", ref, agent)
			}
			if !slices.Equal(ref, tc.Want) {
				t.Errorf("reference merge:\n got  %q\n want %q", ref, tc.Want)
			}
		})
	}
}

// refInput is a merge case as the reference merge reads it: the local
// services as they are, each remote export as a global service whose
// exported backends are ready.
func refInput(tc servicetest.MergeCase) (refCluster, []refCluster) {
	local := refCluster{Name: "local", ID: servicetest.LocalID, Reachable: true}
	for _, ls := range tc.Local {
		rs := refService{Namespace: ls.Namespace, Name: ls.Name, Annotations: ls.Annotations, ClusterIPs: ls.ClusterIPs}
		for _, p := range ls.Ports {
			rs.Ports = append(rs.Ports, refPort{p.Name, p.Port, p.Protocol})
		}
		for _, b := range ls.Backends {
			e := refEndpoint{IP: b.IP, Ready: b.Ready, Serving: b.Serving, Terminating: b.Terminating}
			for _, p := range b.Ports {
				e.Ports = append(e.Ports, refPort{p.Name, p.Port, p.Protocol})
			}
			rs.Endpoints = append(rs.Endpoints, e)
		}
		local.Services = append(local.Services, rs)
	}
	var remotes []refCluster
	for _, rc := range tc.Remote {
		r := refCluster{Name: rc.Name, ID: rc.ID, Reachable: rc.Reachable}
		for _, cs := range rc.Services {
			r.Services = append(r.Services, refExport(cs))
		}
		remotes = append(remotes, r)
	}
	return local, remotes
}

func refExport(cs *wire.ClusterService) refService {
	shared := "false"
	if cs.Shared {
		shared = "true"
	}
	rs := refService{Namespace: cs.Namespace, Name: cs.Name,
		Annotations: map[string]string{"service.cilium.io/global": "true", "service.cilium.io/shared": shared}}
	for addr, ports := range cs.Backends {
		ip, err := netip.ParseAddr(addr)
		if err != nil {
			continue
		}
		e := refEndpoint{IP: ip, Ready: true, Serving: true}
		for name, pc := range ports {
			if pc == nil {
				continue
			}
			if proto, err := state.ParseProtocol(pc.Protocol); err == nil && proto != state.ProtoAny {
				e.Ports = append(e.Ports, refPort{name, pc.Port, proto})
			}
		}
		rs.Endpoints = append(rs.Endpoints, e)
	}
	return rs
}

// sortServices orders services and backends as service.Merge does.
func sortServices(svcs []state.Service) []state.Service {
	fe := func(a, b state.Frontend) int {
		return cmp.Or(a.IP.Compare(b.IP), cmp.Compare(a.Port, b.Port), cmp.Compare(a.Protocol, b.Protocol))
	}
	for _, s := range svcs {
		slices.SortFunc(s.Backends, func(a, b state.Backend) int {
			return cmp.Or(a.IP.Compare(b.IP), cmp.Compare(a.Port, b.Port), cmp.Compare(a.Protocol, b.Protocol))
		})
	}
	slices.SortFunc(svcs, func(a, b state.Service) int { return cmp.Or(cmp.Compare(a.Name, b.Name), fe(a.Frontend, b.Frontend)) })
	return svcs
}
