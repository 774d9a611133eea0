// Package service merges global services across the clusters of the mesh.
//
// It is pure, deterministic logic without IO: the agent hands it the local
// cluster's services (converted from Kubernetes Services and EndpointSlices,
// see FromKubernetes) and, per remote cluster, the wire.ClusterService values
// that cluster exports together with whether it is currently reachable. Merge
// returns the node's desired load-balancing state ([]state.Service, one entry
// per local ClusterIP × port) plus decision records and warnings the agent can
// log or turn into events.
//
// The rules (docs/architecture.md, "Semantics"):
//
//   - Only local frontends exist. Remote frontends (ClusterIPs of other
//     clusters) are ignored; a service that does not exist locally gets no
//     frontend here.
//   - A global service's backends are the union, per namespace/name, of the
//     local backends and every remote cluster's exported backends, matched to
//     the local frontend by port name. A remote backend port whose name the
//     local service does not have, or whose protocol differs, is ignored, and
//     so is a backend of the other IP family than the frontend.
//   - A local service that is not global never takes remote backends.
//     shared=false on the local service does not stop it from importing (it
//     only stops the mesh-apiserver from exporting it); a remote ClusterService
//     that arrives with shared=false is ignored.
//   - Affinity local: remote backends take new connections only when the
//     frontend has no active local backend; remote: the mirror image; none:
//     all together. Terminating backends never count as active.
//
// Backend states. Every backend in the output is either Active (eligible for
// new connections) or Terminating (kept so that established connections keep
// working, never chosen for new ones). A backend is Terminating when
//
//   - it is a local endpoint whose EndpointSlice condition says terminating
//     (serving or not): it drains, whatever the affinity;
//   - it belongs to an unreachable remote cluster and the mode is
//     ModeWithdraw: it is withdrawn from load balancing but flows already
//     going to it are not cut, in line with keeping that cluster's identities
//     and ipcache entries (docs/architecture.md, "Semantics", partition);
//   - affinity excludes it (e.g. remote backends of an affinity-local service
//     while local backends are active): connections opened during a fallback
//     survive the return of the preferred side.
//
// Backends that do not exist (not ready and not terminating, unmatched ports,
// non-shared or non-global services) are simply absent. A terminating local
// backend does not satisfy affinity local: with only terminating local
// backends the service falls back to remote backends, and the terminating
// local ones keep draining alongside.
//
// A backend address that appears more than once for the same frontend
// (duplicate EndpointSlices during a migration, or two clusters claiming one
// address) is emitted once: an Active copy wins over a Terminating one, then
// the local cluster, then the lower cluster ID.
package service

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"

	"github.com/meshbed/meshbed/datapath/state"
)

// Annotation keys that make a service global and steer the merge. The
// legacy io.cilium/* aliases are honoured when the service.cilium.io/* key is
// absent.
const (
	AnnotationGlobal         = "service.cilium.io/global"
	AnnotationShared         = "service.cilium.io/shared"
	AnnotationAffinity       = "service.cilium.io/affinity"
	AnnotationGlobalLegacy   = "io.cilium/global-service"
	AnnotationSharedLegacy   = "io.cilium/shared-service"
	AnnotationAffinityLegacy = "io.cilium/service-affinity"
)

// Affinity says which cluster's backends a global service prefers.
type Affinity string

// Affinity values as written in the annotation (compared case-insensitively).
const (
	AffinityNone   Affinity = "none"
	AffinityLocal  Affinity = "local"
	AffinityRemote Affinity = "remote"
)

// ErrUnknownAffinity is wrapped by the warning Merge and ParseAnnotations
// report for an affinity annotation that is none of local, remote, none. The
// service is merged with affinity none; the caller should surface the warning
// to the service's owner (log, event) and carry on.
var ErrUnknownAffinity = errors.New("unknown service affinity")

// Policy is what a service's annotations ask of the mesh.
type Policy struct {
	// Global services take backends from every cluster that shares them.
	Global bool
	// Shared global services are exported to other clusters (default true
	// when global). Not used by the merge itself; the mesh-apiserver reads it.
	Shared bool
	// Affinity is meaningful only for global services.
	Affinity Affinity
}

// ParseAnnotations reads the mesh annotations of a service. The returned
// policy is always usable; the error (wrapping ErrUnknownAffinity) only
// reports an affinity value that was replaced by none.
func ParseAnnotations(annotations map[string]string) (Policy, error) {
	p := Policy{Affinity: AffinityNone}
	if v, ok := lookup(annotations, AnnotationGlobal, AnnotationGlobalLegacy); ok {
		p.Global = strings.EqualFold(v, "true")
	}
	if !p.Global {
		return p, nil
	}
	p.Shared = true
	if v, ok := lookup(annotations, AnnotationShared, AnnotationSharedLegacy); ok {
		p.Shared = strings.EqualFold(v, "true")
	}
	v, ok := lookup(annotations, AnnotationAffinity, AnnotationAffinityLegacy)
	if !ok {
		return p, nil
	}
	switch a := Affinity(strings.ToLower(strings.TrimSpace(v))); a {
	case AffinityLocal, AffinityRemote, AffinityNone:
		p.Affinity = a
	case "":
		// An empty annotation is the same as none, not a mistake worth a warning.
	default:
		return p, fmt.Errorf("%w %q (want local, remote or none; using none)", ErrUnknownAffinity, v)
	}
	return p, nil
}

// lookup returns the value of the first key present.
func lookup(m map[string]string, keys ...string) (string, bool) {
	for _, k := range keys {
		if v, ok := m[k]; ok {
			return v, true
		}
	}
	return "", false
}

// ServicePort is one port of a local Service.
type ServicePort struct {
	// Name is the port name ("" for the single unnamed port of a service);
	// it is what local and remote backends are matched on.
	Name     string
	Port     uint16
	Protocol state.Protocol
}

// BackendPort is a port of a backend as its EndpointSlice lists it: the
// service port name and the resolved target port. (The Service's targetPort
// is not needed: EndpointSlices carry it resolved, per port name.)
type BackendPort struct {
	Name     string
	Port     uint16
	Protocol state.Protocol
}

// LocalBackend is one endpoint address of a local EndpointSlice.
type LocalBackend struct {
	IP    netip.Addr
	Ports []BackendPort
	// Conditions as in discovery/v1 with nil resolved: Ready (nil = true),
	// Serving (nil = Ready), Terminating (nil = false).
	Ready       bool
	Serving     bool
	Terminating bool
}

// LocalService is a Service of the local cluster and its local backends.
type LocalService struct {
	Namespace string
	Name      string
	// ClusterIPs are the frontends; empty for headless services, which the
	// merge skips.
	ClusterIPs  []netip.Addr
	Ports       []ServicePort
	Annotations map[string]string
	Backends    []LocalBackend
}

// NamespacedName is the service's namespace/name, the merge key.
func (s *LocalService) NamespacedName() string { return s.Namespace + "/" + s.Name }
