// Package servicetest holds the table of global-service merge cases that
// mesh/service's own test and the scenario engine's reference merge (its
// independent oracle) both run, so that the two are shown to agree case by
// case.
package servicetest

import (
	"fmt"
	"net/netip"
	"strings"

	"github.com/meshbed/meshbed/datapath/state"
	"github.com/meshbed/meshbed/mesh/service"
	"github.com/meshbed/meshbed/mesh/wire"
)

// LocalID is the local cluster's ID in every case.
const LocalID = 1

// GlobalAnn makes a service global.
var GlobalAnn = map[string]string{service.AnnotationGlobal: "true"}

// Ann builds annotations from key, value pairs.
func Ann(kv ...string) map[string]string {
	m := map[string]string{}
	for i := 0; i+1 < len(kv); i += 2 {
		m[kv[i]] = kv[i+1]
	}
	return m
}

// Local builds rebel-base with one ClusterIP and port http 80/TCP.
func Local(a map[string]string, backends ...service.LocalBackend) service.LocalService {
	return service.LocalService{
		Namespace: "default", Name: "rebel-base",
		ClusterIPs:  []netip.Addr{netip.MustParseAddr("10.96.0.10")},
		Ports:       []service.ServicePort{{Name: "http", Port: 80, Protocol: state.TCP}},
		Annotations: a,
		Backends:    backends,
	}
}

// Ready is a ready local backend on http 8080/TCP.
func Ready(ip string) service.LocalBackend {
	return service.LocalBackend{IP: netip.MustParseAddr(ip), Ports: []service.BackendPort{{Name: "http", Port: 8080, Protocol: state.TCP}}, Ready: true, Serving: true}
}

// Terminating is a terminating (still serving) local backend.
func Terminating(ip string) service.LocalBackend {
	b := Ready(ip)
	b.Ready, b.Terminating = false, true
	return b
}

// NotReady is a local backend that is neither ready nor terminating.
func NotReady(ip string) service.LocalBackend {
	b := Ready(ip)
	b.Ready, b.Serving = false, false
	return b
}

// Export builds the ClusterService cluster c (ID id) exports for rebel-base.
func Export(c string, id uint32, backends ...string) *wire.ClusterService {
	cs := &wire.ClusterService{
		Cluster: c, ClusterID: id, Namespace: "default", Name: "rebel-base", Shared: true,
		Frontends: map[string]wire.PortConfiguration{"10.200.0.1": {"http": {Protocol: "TCP", Port: 80}}},
		Backends:  map[string]wire.PortConfiguration{},
	}
	for _, b := range backends {
		cs.Backends[b] = wire.PortConfiguration{"http": {Protocol: "TCP", Port: 8080}}
	}
	return cs
}

// Remote is a remote cluster and what it exports.
func Remote(name string, id uint32, reachable bool, svcs ...*wire.ClusterService) service.RemoteCluster {
	return service.RemoteCluster{Name: name, ID: id, Reachable: reachable, Services: svcs}
}

// Render prints services compactly, one line per frontend:
// "ns/name fe -> ip:port@clusterID{A|T} ..." (A active, T terminating), in
// the order given.
func Render(svcs []state.Service) []string {
	var out []string
	for _, s := range svcs {
		var bs []string
		for _, b := range s.Backends {
			st := "A"
			if b.State == state.BackendTerminating {
				st = "T"
			}
			bs = append(bs, fmt.Sprintf("%s:%d@%d%s", b.IP, b.Port, b.ClusterID, st))
		}
		out = append(out, fmt.Sprintf("%s %s -> %s", s.Name, s.Frontend, strings.Join(bs, " ")))
	}
	return out
}

// RenderDecisions prints decisions as "Kind [cluster] [frontend] count".
func RenderDecisions(ds []service.Decision) []string {
	var out []string
	for _, d := range ds {
		s := string(d.Kind)
		if d.Cluster != "" {
			s += " " + d.Cluster
		}
		if d.Frontend.IP.IsValid() {
			s += " " + d.Frontend.String()
		}
		out = append(out, fmt.Sprintf("%s %d", s, d.Backends))
	}
	return out
}

// FE begins the rendering of rebel-base's frontend.
const FE = "default/rebel-base 10.96.0.10:80/TCP -> "

// MergeCase is one merge input and what service.Merge makes of it for
// cluster LocalID.
type MergeCase struct {
	Name   string
	Mode   service.Mode
	Local  []service.LocalService
	Remote []service.RemoteCluster
	// Want is Render of the merged services.
	Want []string
	// Decisions is RenderDecisions of the merge's decisions.
	Decisions []string
	// Warning, when set, is what the one warning of the merge wraps.
	Warning error
}

// MergeCases returns the table, freshly built (callers may modify it).
func MergeCases() []MergeCase {
	return []MergeCase{
		{
			Name:      "not global takes no remote backends",
			Local:     []service.LocalService{Local(nil, Ready("10.1.0.1"))},
			Remote:    []service.RemoteCluster{Remote("c2", 2, true, Export("c2", 2, "10.2.0.1"))},
			Want:      []string{FE + "10.1.0.1:8080@1A"},
			Decisions: []string{"NotGlobal 1"},
		},
		{
			Name:   "global none unions all clusters",
			Local:  []service.LocalService{Local(GlobalAnn, Ready("10.1.0.1"))},
			Remote: []service.RemoteCluster{Remote("c2", 2, true, Export("c2", 2, "10.2.0.1", "10.2.0.2")), Remote("c3", 3, true, Export("c3", 3, "10.3.0.1"))},
			Want:   []string{FE + "10.1.0.1:8080@1A 10.2.0.1:8080@2A 10.2.0.2:8080@2A 10.3.0.1:8080@3A"},
		},
		{
			Name:   "global with no local backends uses remote",
			Local:  []service.LocalService{Local(GlobalAnn)},
			Remote: []service.RemoteCluster{Remote("c2", 2, true, Export("c2", 2, "10.2.0.1"))},
			Want:   []string{FE + "10.2.0.1:8080@2A"},
		},
		{
			Name:  "remote port matched by name, unknown names and other protocols ignored",
			Local: []service.LocalService{Local(GlobalAnn)},
			Remote: []service.RemoteCluster{Remote("c2", 2, true, func() *wire.ClusterService {
				cs := Export("c2", 2)
				cs.Backends["10.2.0.1"] = wire.PortConfiguration{"http": {Protocol: "TCP", Port: 9090}, "metrics": {Protocol: "TCP", Port: 80}}
				cs.Backends["10.2.0.2"] = wire.PortConfiguration{"http": {Protocol: "UDP", Port: 8080}}
				cs.Backends["10.2.0.3"] = wire.PortConfiguration{"web": {Protocol: "TCP", Port: 80}}
				return cs
			}())},
			Want:      []string{FE + "10.2.0.1:9090@2A"},
			Decisions: []string{"PortsIgnored c2 3"},
		},
		{
			Name:  "remote frontends ignored, service only remote gets no frontend",
			Local: []service.LocalService{Local(GlobalAnn)},
			Remote: []service.RemoteCluster{Remote("c2", 2, true, Export("c2", 2, "10.2.0.1"), func() *wire.ClusterService {
				cs := Export("c2", 2, "10.2.0.9")
				cs.Name = "only-remote"
				return cs
			}())},
			Want: []string{FE + "10.2.0.1:8080@2A"},
		},
		{
			Name:      "remote shared=false ignored",
			Local:     []service.LocalService{Local(GlobalAnn, Ready("10.1.0.1"))},
			Remote:    []service.RemoteCluster{Remote("c2", 2, true, func() *wire.ClusterService { cs := Export("c2", 2, "10.2.0.1"); cs.Shared = false; return cs }())},
			Want:      []string{FE + "10.1.0.1:8080@1A"},
			Decisions: []string{"NotShared c2 1"},
		},
		{
			Name:   "local shared=false still imports",
			Local:  []service.LocalService{Local(Ann(service.AnnotationGlobal, "true", service.AnnotationShared, "false"), Ready("10.1.0.1"))},
			Remote: []service.RemoteCluster{Remote("c2", 2, true, Export("c2", 2, "10.2.0.1"))},
			Want:   []string{FE + "10.1.0.1:8080@1A 10.2.0.1:8080@2A"},
		},
		{
			Name:   "affinity local with active local backend: remote drain only",
			Local:  []service.LocalService{Local(Ann(service.AnnotationGlobal, "true", service.AnnotationAffinity, "local"), Ready("10.1.0.1"))},
			Remote: []service.RemoteCluster{Remote("c2", 2, true, Export("c2", 2, "10.2.0.1"))},
			Want:   []string{FE + "10.1.0.1:8080@1A 10.2.0.1:8080@2T"},
		},
		{
			Name:      "affinity local without local backends falls back to remote",
			Local:     []service.LocalService{Local(Ann(service.AnnotationGlobal, "true", service.AnnotationAffinity, "Local"), NotReady("10.1.0.1"))},
			Remote:    []service.RemoteCluster{Remote("c2", 2, true, Export("c2", 2, "10.2.0.1"))},
			Want:      []string{FE + "10.2.0.1:8080@2A"},
			Decisions: []string{"AffinityFallback 10.96.0.10:80/TCP 1"},
		},
		{
			Name:      "affinity local with only terminating local backends falls back, local keeps draining",
			Local:     []service.LocalService{Local(Ann(service.AnnotationGlobal, "true", service.AnnotationAffinity, "local"), Terminating("10.1.0.1"))},
			Remote:    []service.RemoteCluster{Remote("c2", 2, true, Export("c2", 2, "10.2.0.1"))},
			Want:      []string{FE + "10.1.0.1:8080@1T 10.2.0.1:8080@2A"},
			Decisions: []string{"AffinityFallback 10.96.0.10:80/TCP 1"},
		},
		{
			Name:   "affinity remote with active remote: local drain only",
			Local:  []service.LocalService{Local(Ann(service.AnnotationGlobal, "true", service.AnnotationAffinity, "remote"), Ready("10.1.0.1"), Terminating("10.1.0.2"))},
			Remote: []service.RemoteCluster{Remote("c2", 2, true, Export("c2", 2, "10.2.0.1"))},
			Want:   []string{FE + "10.1.0.1:8080@1T 10.1.0.2:8080@1T 10.2.0.1:8080@2A"},
		},
		{
			Name:      "affinity remote without remote backends falls back to local",
			Local:     []service.LocalService{Local(Ann(service.AnnotationGlobal, "true", service.AnnotationAffinity, "remote"), Ready("10.1.0.1"))},
			Remote:    []service.RemoteCluster{Remote("c2", 2, true, Export("c2", 2))},
			Want:      []string{FE + "10.1.0.1:8080@1A"},
			Decisions: []string{"AffinityFallback 10.96.0.10:80/TCP 1"},
		},
		{
			Name:      "affinity remote with remote withdrawn falls back to local",
			Local:     []service.LocalService{Local(Ann(service.AnnotationGlobal, "true", service.AnnotationAffinity, "remote"), Ready("10.1.0.1"))},
			Remote:    []service.RemoteCluster{Remote("c2", 2, false, Export("c2", 2, "10.2.0.1"))},
			Want:      []string{FE + "10.1.0.1:8080@1A 10.2.0.1:8080@2T"},
			Decisions: []string{"AffinityFallback 10.96.0.10:80/TCP 1", "ClusterWithdrawn c2 1"},
		},
		{
			Name:    "unknown affinity is none with a warning",
			Local:   []service.LocalService{Local(Ann(service.AnnotationGlobal, "true", service.AnnotationAffinity, "nearest"), Ready("10.1.0.1"))},
			Remote:  []service.RemoteCluster{Remote("c2", 2, true, Export("c2", 2, "10.2.0.1"))},
			Want:    []string{FE + "10.1.0.1:8080@1A 10.2.0.1:8080@2A"},
			Warning: service.ErrUnknownAffinity,
		},
		{
			Name:      "withdraw: unreachable cluster drains, reachable ones serve",
			Local:     []service.LocalService{Local(GlobalAnn)},
			Remote:    []service.RemoteCluster{Remote("c2", 2, false, Export("c2", 2, "10.2.0.1")), Remote("c3", 3, true, Export("c3", 3, "10.3.0.1"))},
			Want:      []string{FE + "10.2.0.1:8080@2T 10.3.0.1:8080@3A"},
			Decisions: []string{"ClusterWithdrawn c2 1"},
		},
		{
			Name:      "fail-static keeps unreachable cluster",
			Mode:      service.ModeFailStatic,
			Local:     []service.LocalService{Local(GlobalAnn)},
			Remote:    []service.RemoteCluster{Remote("c2", 2, false, Export("c2", 2, "10.2.0.1")), Remote("c3", 3, true, Export("c3", 3, "10.3.0.1"))},
			Want:      []string{FE + "10.2.0.1:8080@2A 10.3.0.1:8080@3A"},
			Decisions: []string{"ClusterFailStatic c2 1"},
		},
		{
			Name:   "legacy annotations, case-insensitive true",
			Local:  []service.LocalService{Local(Ann(service.AnnotationGlobalLegacy, "TRUE", service.AnnotationAffinityLegacy, "local"), Ready("10.1.0.1"))},
			Remote: []service.RemoteCluster{Remote("c2", 2, true, Export("c2", 2, "10.2.0.1"))},
			Want:   []string{FE + "10.1.0.1:8080@1A 10.2.0.1:8080@2T"},
		},
		{
			Name:      "global annotation not true",
			Local:     []service.LocalService{Local(Ann(service.AnnotationGlobal, "yes"), Ready("10.1.0.1"))},
			Remote:    []service.RemoteCluster{Remote("c2", 2, true, Export("c2", 2, "10.2.0.1"))},
			Want:      []string{FE + "10.1.0.1:8080@1A"},
			Decisions: []string{"NotGlobal 1"},
		},
		{
			Name:  "not ready local backend excluded, terminating drains",
			Local: []service.LocalService{Local(nil, NotReady("10.1.0.1"), Terminating("10.1.0.2"), Ready("10.1.0.3"))},
			Want:  []string{FE + "10.1.0.2:8080@1T 10.1.0.3:8080@1A"},
		},
		{
			Name: "dual stack: each frontend gets its family",
			Local: []service.LocalService{func() service.LocalService {
				s := Local(GlobalAnn, Ready("10.1.0.1"), Ready("fd00:1::1"))
				s.ClusterIPs = append(s.ClusterIPs, netip.MustParseAddr("fd00:96::10"))
				return s
			}()},
			Remote: []service.RemoteCluster{Remote("c2", 2, true, Export("c2", 2, "10.2.0.1", "fd00:2::1"))},
			Want: []string{
				FE + "10.1.0.1:8080@1A 10.2.0.1:8080@2A",
				"default/rebel-base [fd00:96::10]:80/TCP -> fd00:1::1:8080@1A fd00:2::1:8080@2A",
			},
		},
		{
			Name:   "headless service has no frontend",
			Local:  []service.LocalService{func() service.LocalService { s := Local(GlobalAnn, Ready("10.1.0.1")); s.ClusterIPs = nil; return s }()},
			Remote: []service.RemoteCluster{Remote("c2", 2, true, Export("c2", 2, "10.2.0.1"))},
		},
		{
			Name:    "import contradicting its cluster rejected",
			Local:   []service.LocalService{Local(GlobalAnn, Ready("10.1.0.1"))},
			Remote:  []service.RemoteCluster{Remote("c2", 2, true, Export("c3", 3, "10.2.0.1"))},
			Want:    []string{FE + "10.1.0.1:8080@1A"},
			Warning: service.ErrInvalidImport,
		},
		{
			Name:    "import claiming the local cluster ID rejected",
			Local:   []service.LocalService{Local(GlobalAnn, Ready("10.1.0.1"))},
			Remote:  []service.RemoteCluster{Remote("c1b", LocalID, true, Export("c1b", LocalID, "10.2.0.1"))},
			Want:    []string{FE + "10.1.0.1:8080@1A"},
			Warning: service.ErrInvalidImport,
		},
		{
			Name:   "duplicate addresses: active wins, then local",
			Local:  []service.LocalService{Local(GlobalAnn, Terminating("10.1.0.1"), Ready("10.1.0.1"), Ready("10.9.0.1"))},
			Remote: []service.RemoteCluster{Remote("c2", 2, true, Export("c2", 2, "10.9.0.1"))},
			Want:   []string{FE + "10.1.0.1:8080@1A 10.9.0.1:8080@1A"},
		},
		{
			Name: "multiple ports matched independently",
			Local: []service.LocalService{func() service.LocalService {
				s := Local(Ann(service.AnnotationGlobal, "true", service.AnnotationAffinity, "local"), Ready("10.1.0.1"))
				s.Ports = append(s.Ports, service.ServicePort{Name: "dns", Port: 53, Protocol: state.UDP})
				return s
			}()},
			Remote: []service.RemoteCluster{Remote("c2", 2, true, func() *wire.ClusterService {
				cs := Export("c2", 2)
				cs.Backends["10.2.0.1"] = wire.PortConfiguration{"http": {Protocol: "TCP", Port: 8080}, "dns": {Protocol: "UDP", Port: 5353}}
				return cs
			}())},
			Want: []string{
				"default/rebel-base 10.96.0.10:53/UDP -> 10.2.0.1:5353@2A",
				FE + "10.1.0.1:8080@1A 10.2.0.1:8080@2T",
			},
			Decisions: []string{"AffinityFallback 10.96.0.10:53/UDP 1"},
		},
	}
}
