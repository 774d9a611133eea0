package engine

import (
	"errors"
	"fmt"
	"net/netip"
	"sort"
	"strings"

	discoveryv1 "k8s.io/api/discovery/v1"

	"github.com/meshbed/meshbed/datapath/state"
	"github.com/meshbed/meshbed/mesh/apiserver"
	"github.com/meshbed/meshbed/mesh/service"
	"github.com/meshbed/meshbed/scenarios"
)

// truthSet is a cluster's Kubernetes state read straight from its API,
// bypassing etcd, kvstoremesh and the agents: what the mesh should have
// delivered.
type truthSet struct {
	local  []service.LocalService
	remote service.RemoteCluster
	podIPs []netip.Addr
}

// readTruth converts a cluster's services, slices and pods.
func readTruth(c scenarios.Cluster, o *ClusterObjects) *truthSet {
	bySvc := map[string][]*discoveryv1.EndpointSlice{}
	for i := range o.EndpointSlices {
		s := &o.EndpointSlices[i]
		key := s.Namespace + "/" + s.Labels[discoveryv1.LabelServiceName]
		bySvc[key] = append(bySvc[key], s)
	}
	t := &truthSet{}
	for i := range o.Services {
		svc := &o.Services[i]
		eps := bySvc[svc.Namespace+"/"+svc.Name]
		// Ports that cannot be converted are left out, as the agent does.
		ls, _ := service.FromKubernetes(svc, eps)
		t.local = append(t.local, ls)
		if v, ok := apiserver.ServiceValue(c.Name, uint32(c.ID), svc, eps); ok {
			t.remote.Services = append(t.remote.Services, &v)
		}
	}
	t.remote.Name, t.remote.ID, t.remote.Reachable = c.Name, uint32(c.ID), true
	for i := range o.Pods {
		t.podIPs = append(t.podIPs, apiserver.PodIPs(&o.Pods[i])...)
	}
	return t
}

// checkNothingLost compares every agent's desired state with the merge of
// the clusters' Kubernetes state as it is now: the same frontends with the
// same active backends, and an ipcache entry for every pod of every
// connected cluster. Together with checkDatapath (maps equal desired state,
// no stale backend) it shows that nothing was lost on the way and nothing
// stale survived.
func checkNothingLost(tp *scenarios.Topology, objs map[string]*ClusterObjects, nodes map[string][]NodeState) error {
	truths := map[string]*truthSet{}
	for _, c := range tp.Clusters {
		truths[c.Name] = readTruth(c, objs[c.Name])
	}
	mode := service.ModeWithdraw
	if tp.RemoteLoss == scenarios.RemoteLossFailStatic {
		mode = service.ModeFailStatic
	}
	var errs []error
	for _, c := range tp.Clusters {
		in := &service.Input{Options: service.Options{LocalClusterID: uint32(c.ID), Mode: mode}, Local: truths[c.Name].local}
		want := map[netip.Addr]bool{}
		for _, ip := range truths[c.Name].podIPs {
			want[ip] = true
		}
		for _, p := range peers(tp, c.Name) {
			in.Remote = append(in.Remote, truths[p].remote)
			for _, ip := range truths[p].podIPs {
				want[ip] = true
			}
		}
		expected := service.Merge(in).Services
		for _, n := range nodes[c.Name] {
			where := c.Name + "/" + n.Node
			if !n.Running {
				errs = append(errs, fmt.Errorf("%s: agent is not running", where))
				continue
			}
			desired := n.Desired
			if desired == nil {
				errs = append(errs, fmt.Errorf("%s: agent has programmed nothing", where))
				continue
			}
			errs = append(errs, compareServices(where, expected, desired.Services)...)
			have := map[netip.Addr]bool{}
			for _, e := range desired.IPCache {
				if e.Prefix.IsSingleIP() {
					have[e.Prefix.Addr()] = true
				}
			}
			var missing []string
			for ip := range want {
				if !have[ip] {
					missing = append(missing, ip.String())
				}
			}
			if len(missing) > 0 {
				sort.Strings(missing)
				errs = append(errs, fmt.Errorf("%s: ipcache lacks pods %s", where, strings.Join(missing, ", ")))
			}
		}
	}
	return errors.Join(errs...)
}

func activeBackends(s state.Service) string {
	var bs []string
	for _, b := range s.Backends {
		if b.State == state.BackendActive {
			bs = append(bs, backendKey(b))
		}
	}
	sort.Strings(bs)
	return strings.Join(bs, " ")
}

func compareServices(where string, expected, desired []state.Service) []error {
	want := map[state.Frontend]state.Service{}
	for _, s := range expected {
		want[s.Frontend] = s
	}
	got := map[state.Frontend]state.Service{}
	for _, s := range desired {
		got[s.Frontend] = s
	}
	var errs []error
	for fe, w := range want {
		g, ok := got[fe]
		switch {
		case !ok:
			errs = append(errs, fmt.Errorf("%s: service %s (%s) is missing", where, w.Name, fe))
		case activeBackends(g) != activeBackends(w):
			errs = append(errs, fmt.Errorf("%s: service %s (%s) has backends [%s], the clusters' state says [%s]",
				where, w.Name, fe, activeBackends(g), activeBackends(w)))
		}
	}
	for fe, g := range got {
		if _, ok := want[fe]; !ok {
			errs = append(errs, fmt.Errorf("%s: service %s (%s) is programmed but does not exist", where, g.Name, fe))
		}
	}
	return errs
}
