package engine

import (
	"net/netip"
	"strings"

	"github.com/meshbed/meshbed/datapath/state"
)

// The reference merge is the final check's oracle: what every agent's
// desired services must be, computed from the clusters' Kubernetes state
// by a deliberately simple reading of DESIGN.md §4, independently of
// mesh/service (which the agents run), so that a merge bug cannot pass the
// check by being made twice. TestReferenceMergeAgrees runs it on
// mesh/service's table of merge cases.

// refCluster is one cluster as the reference merge sees it.
type refCluster struct {
	Name string
	ID   uint32
	// Reachable is false for a remote cluster the agent has lost.
	Reachable bool
	Services  []refService
}

// refService is a Service with its endpoints.
type refService struct {
	Namespace, Name string
	Annotations     map[string]string
	ClusterIPs      []netip.Addr
	Ports           []refPort
	Endpoints       []refEndpoint
}

type refPort struct {
	Name     string
	Port     uint16
	Protocol state.Protocol
}

// refEndpoint carries the EndpointSlice conditions as Kubernetes resolves
// them (serving defaults to ready).
type refEndpoint struct {
	IP                          netip.Addr
	Ports                       []refPort
	Ready, Serving, Terminating bool
}

// annotation reads a mesh annotation, its legacy io.cilium/* alias when the
// service.cilium.io/* key is absent.
func annotation(a map[string]string, key, legacy string) (string, bool) {
	if v, ok := a[key]; ok {
		return v, true
	}
	v, ok := a[legacy]
	return v, ok
}

func isGlobal(a map[string]string) bool {
	v, _ := annotation(a, "service.cilium.io/global", "io.cilium/global-service")
	return strings.EqualFold(v, "true")
}

// isShared: a global service is shared unless it says otherwise.
func isShared(a map[string]string) bool {
	v, ok := annotation(a, "service.cilium.io/shared", "io.cilium/shared-service")
	return isGlobal(a) && (!ok || strings.EqualFold(v, "true"))
}

// affinity is local, remote or none (anything else).
func affinity(a map[string]string) string {
	v, _ := annotation(a, "service.cilium.io/affinity", "io.cilium/service-affinity")
	return strings.ToLower(strings.TrimSpace(v))
}

// referenceMerge returns the services an agent of local must program, one
// per ClusterIP and port of each local service, with every backend Active
// or Terminating. remotes are the clusters connected to local.
func referenceMerge(local refCluster, remotes []refCluster, failStatic bool) []state.Service {
	var out []state.Service
	for _, s := range local.Services {
		for _, ip := range s.ClusterIPs {
			for _, p := range s.Ports {
				fe := state.Frontend{IP: ip, Port: p.Port, Protocol: p.Protocol}
				if p.Port == 0 || hasFrontend(out, s, fe) {
					continue
				}
				out = append(out, state.Service{Name: s.Namespace + "/" + s.Name, Frontend: fe,
					Backends: referenceBackends(local, remotes, failStatic, s, fe, p.Name)})
			}
		}
	}
	return out
}

func hasFrontend(svcs []state.Service, s refService, fe state.Frontend) bool {
	for _, o := range svcs {
		if o.Name == s.Namespace+"/"+s.Name && o.Frontend == fe {
			return true
		}
	}
	return false
}

// referenceBackends is one frontend's backends.
func referenceBackends(local refCluster, remotes []refCluster, failStatic bool, s refService, fe state.Frontend, port string) []state.Backend {
	type cand struct {
		b             state.Backend
		local, active bool
	}
	var cands []cand
	add := func(e refEndpoint, id uint32, isLocal, active bool) {
		for _, ep := range e.Ports {
			if ep.Name == port && ep.Protocol == fe.Protocol && ep.Port != 0 && e.IP.Is4() == fe.IP.Is4() {
				cands = append(cands, cand{state.Backend{IP: e.IP, Port: ep.Port, Protocol: ep.Protocol, ClusterID: id}, isLocal, active})
			}
		}
	}
	// Local endpoints: ready ones take connections, terminating ones drain,
	// the others do not exist.
	for _, e := range s.Endpoints {
		if e.Ready && !e.Terminating || e.Terminating {
			add(e, local.ID, true, e.Ready && !e.Terminating)
		}
	}
	// A global service also takes the endpoints that can serve (ready, or
	// serving while terminating) of the same namespace/name wherever it is
	// global and shared; a lost cluster's backends only drain, unless
	// fail-static.
	if isGlobal(s.Annotations) {
		for _, rc := range remotes {
			for _, rs := range rc.Services {
				if rs.Namespace != s.Namespace || rs.Name != s.Name || !isShared(rs.Annotations) {
					continue
				}
				for _, e := range rs.Endpoints {
					if e.Ready && !e.Terminating || e.Serving {
						add(e, rc.ID, false, rc.Reachable || failStatic)
					}
				}
			}
		}
	}
	// Affinity: the preferred side, while it has an active backend, takes
	// every new connection; the other side drains.
	var activeSide [2]bool // [remote, local]
	for _, c := range cands {
		activeSide[b2i(c.local)] = activeSide[b2i(c.local)] || c.active
	}
	useSide := [2]bool{true, true}
	switch affinity(s.Annotations) {
	case "local":
		useSide[0] = !activeSide[1]
	case "remote":
		useSide[1] = !activeSide[0]
	}
	// One backend per address and port: an active one, else a local one,
	// else the lowest cluster ID.
	var out []state.Backend
	for _, c := range cands {
		c.b.State = state.BackendTerminating
		if c.active && useSide[b2i(c.local)] {
			c.b.State = state.BackendActive
		}
		i := indexBackend(out, c.b)
		switch {
		case i < 0:
			out = append(out, c.b)
		case better(c.b, c.local, out[i], local.ID):
			out[i] = c.b
		}
	}
	return out
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}

func indexBackend(bs []state.Backend, b state.Backend) int {
	for i, o := range bs {
		if o.IP == b.IP && o.Port == b.Port && o.Protocol == b.Protocol {
			return i
		}
	}
	return -1
}

// better reports whether b (local or not) should replace o.
func better(b state.Backend, local bool, o state.Backend, localID uint32) bool {
	if b.State != o.State {
		return b.State == state.BackendActive
	}
	if oLocal := o.ClusterID == localID; local != oLocal {
		return local
	}
	return b.ClusterID < o.ClusterID
}
