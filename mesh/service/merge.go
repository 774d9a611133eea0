package service

import (
	"cmp"
	"errors"
	"fmt"
	"net/netip"
	"slices"

	"github.com/meshbed/meshbed/datapath/state"
	"github.com/meshbed/meshbed/mesh/wire"
)

// Mode is what the agent does with the backends of a remote cluster it can
// no longer reach.
type Mode uint8

const (
	// ModeWithdraw takes an unreachable cluster's backends out of load
	// balancing (they stay as Terminating so established flows survive).
	ModeWithdraw Mode = iota
	// ModeFailStatic keeps using them, as Cilium does.
	ModeFailStatic
)

func (m Mode) String() string {
	if m == ModeFailStatic {
		return "fail-static"
	}
	return "withdraw"
}

// ErrInvalidImport is wrapped by the warning for a remote ClusterService that
// contradicts the cluster it was read from (name, ID, namespace/name) or
// claims the local cluster's ID. The value is ignored. Such values should
// have been rejected by mesh/wire's decoders already; seeing this means a
// caller bypassed them.
var ErrInvalidImport = errors.New("invalid imported service")

// ErrDuplicateFrontend is wrapped by the warning for a local service that
// lists the same ClusterIP, port and protocol twice; only the first is used.
var ErrDuplicateFrontend = errors.New("duplicate frontend")

// Options apply to every service of a merge.
type Options struct {
	// LocalClusterID is written into local backends and must differ from
	// every remote cluster's ID.
	LocalClusterID uint32
	Mode           Mode
}

// Import is one remote cluster's export of one service.
type Import struct {
	// Cluster and ClusterID name the cluster the value was read from; they
	// are trusted, the value is not.
	Cluster   string
	ClusterID uint32
	// Reachable is false while the connection to the cluster is lost.
	Reachable bool
	Service   *wire.ClusterService
}

// RemoteCluster is everything one remote cluster exports.
type RemoteCluster struct {
	Name      string
	ID        uint32
	Reachable bool
	Services  []*wire.ClusterService
}

// Input is the whole merge input of a node.
type Input struct {
	Options
	Local  []LocalService
	Remote []RemoteCluster
}

// DecisionKind says why a backend set looks the way it does.
type DecisionKind string

const (
	// DecisionAffinityFallback: the preferred side (local or remote) of a
	// service with affinity has no active backend for this frontend, so the
	// other side takes new connections.
	DecisionAffinityFallback DecisionKind = "AffinityFallback"
	// DecisionClusterWithdrawn: the cluster is unreachable; its backends of
	// this service take no new connections (ModeWithdraw).
	DecisionClusterWithdrawn DecisionKind = "ClusterWithdrawn"
	// DecisionClusterFailStatic: the cluster is unreachable but its backends
	// stay in use (ModeFailStatic).
	DecisionClusterFailStatic DecisionKind = "ClusterFailStatic"
	// DecisionNotShared: the cluster sent the service with shared=false;
	// it is ignored.
	DecisionNotShared DecisionKind = "NotShared"
	// DecisionNotGlobal: other clusters export the service but it is not
	// global here, so their backends are not used.
	DecisionNotGlobal DecisionKind = "NotGlobal"
	// DecisionPortsIgnored: the cluster exports backend ports whose name the
	// local service lacks, or whose protocol differs; they are not used.
	DecisionPortsIgnored DecisionKind = "PortsIgnored"
)

// Decision is a record of why the merge chose a backend set, for logs and
// events. Per-frontend decisions set Frontend; per-cluster ones set Cluster.
type Decision struct {
	Service  string // namespace/name
	Kind     DecisionKind
	Frontend state.Frontend
	Cluster  string
	// Backends is how many backends (or, for PortsIgnored, backend ports)
	// the decision concerns.
	Backends int
	Detail   string
}

func (d Decision) String() string {
	s := fmt.Sprintf("%s %s", d.Service, d.Kind)
	if d.Frontend.IP.IsValid() {
		s += " frontend=" + d.Frontend.String()
	}
	if d.Cluster != "" {
		s += " cluster=" + d.Cluster
	}
	return fmt.Sprintf("%s backends=%d: %s", s, d.Backends, d.Detail)
}

// Result of a merge. Services is sorted by Name then frontend (address,
// port, protocol), each Backends slice by address, port, protocol; Decisions
// by service, kind, cluster, frontend. Equal inputs give equal Results.
type Result struct {
	Services  []state.Service
	Decisions []Decision
	// Warnings are problems with the input that the merge worked around
	// (unknown affinity, invalid imports); each names its service.
	Warnings []error
}

// Merge computes the node's services from the local services and every
// remote cluster's exports.
func Merge(in *Input) Result {
	byName := make(map[string][]Import)
	for i := range in.Remote {
		rc := &in.Remote[i]
		for _, cs := range rc.Services {
			if cs == nil {
				continue
			}
			key := cs.Namespace + "/" + cs.Name
			byName[key] = append(byName[key], Import{Cluster: rc.Name, ClusterID: rc.ID, Reachable: rc.Reachable, Service: cs})
		}
	}
	type keyed struct {
		key string
		svc *LocalService
	}
	local := make([]keyed, len(in.Local))
	for i := range in.Local {
		local[i] = keyed{in.Local[i].NamespacedName(), &in.Local[i]}
	}
	slices.SortStableFunc(local, func(a, b keyed) int { return cmp.Compare(a.key, b.key) })
	var res Result
	var m merger
	for _, l := range local {
		m.merge(&res, l.svc, byName[l.key], in.Options)
	}
	sortDecisions(res.Decisions)
	return res
}

// MergeService merges one local service with the given imports (which may
// name other services; those are ignored). It lets an agent re-merge only the
// services that changed; Merge gives the same answer for the whole set.
func MergeService(svc *LocalService, imports []Import, opts Options) Result {
	var res Result
	var m merger
	m.merge(&res, svc, imports, opts)
	sortDecisions(res.Decisions)
	return res
}

// candidate is a backend before affinity and de-duplication.
type candidate struct {
	b      state.Backend
	local  bool
	active bool // would take new connections if affinity allows its side
}

// merger holds scratch space reused across services of one merge.
type merger struct {
	frontends []state.Frontend
	portOf    []int // frontends[i] serves svc.Ports[portOf[i]]
	cands     [][]candidate
}

func (m *merger) merge(res *Result, svc *LocalService, imports []Import, opts Options) {
	name := svc.NamespacedName()
	policy, err := ParseAnnotations(svc.Annotations)
	if err != nil {
		res.Warnings = append(res.Warnings, fmt.Errorf("service %s: %w", name, err))
	}

	m.frontends = m.frontends[:0]
	m.portOf = m.portOf[:0]
	for _, ip := range svc.ClusterIPs {
		ip = ip.Unmap()
		if !ip.IsValid() {
			continue
		}
		for pi, p := range svc.Ports {
			if p.Port == 0 {
				continue
			}
			fe := state.Frontend{IP: ip, Port: p.Port, Protocol: p.Protocol}
			if slices.Contains(m.frontends, fe) {
				res.Warnings = append(res.Warnings, fmt.Errorf("service %s: %w %s", name, ErrDuplicateFrontend, fe))
				continue
			}
			m.frontends = append(m.frontends, fe)
			m.portOf = append(m.portOf, pi)
		}
	}
	if len(m.frontends) == 0 {
		// Headless, or no usable port: nothing to load-balance, and no
		// decision is worth reporting about backends nobody can reach.
		return
	}
	for len(m.cands) < len(m.frontends) {
		m.cands = append(m.cands, nil)
	}
	cands := m.cands[:len(m.frontends)]
	for i := range cands {
		cands[i] = cands[i][:0]
	}

	for _, lb := range svc.Backends {
		ip := lb.IP.Unmap()
		if !ip.IsValid() || !(lb.Terminating || lb.Ready) {
			continue
		}
		active := lb.Ready && !lb.Terminating
		for _, bp := range lb.Ports {
			if bp.Port == 0 {
				continue
			}
			for fi, fe := range m.frontends {
				sp := svc.Ports[m.portOf[fi]]
				if sp.Name != bp.Name || sp.Protocol != bp.Protocol || fe.IP.Is4() != ip.Is4() {
					continue
				}
				cands[fi] = append(cands[fi], candidate{
					b:     state.Backend{IP: ip, Port: bp.Port, Protocol: bp.Protocol, ClusterID: opts.LocalClusterID},
					local: true, active: active,
				})
			}
		}
	}

	notGlobal := 0
	for _, imp := range imports {
		cs := imp.Service
		if cs == nil || cs.Namespace != svc.Namespace || cs.Name != svc.Name {
			continue
		}
		if cs.Cluster != imp.Cluster || cs.ClusterID != imp.ClusterID || imp.ClusterID == opts.LocalClusterID {
			res.Warnings = append(res.Warnings, fmt.Errorf("service %s from cluster %q (ID %d): %w: value names cluster %q ID %d, local cluster ID %d",
				name, imp.Cluster, imp.ClusterID, ErrInvalidImport, cs.Cluster, cs.ClusterID, opts.LocalClusterID))
			continue
		}
		if !cs.Shared {
			res.Decisions = append(res.Decisions, Decision{Service: name, Kind: DecisionNotShared, Cluster: imp.Cluster,
				Backends: len(cs.Backends), Detail: "remote service is not shared; ignored"})
			continue
		}
		if !policy.Global {
			notGlobal += len(cs.Backends)
			continue
		}
		m.addImport(res, name, svc, imp, opts.Mode)
	}
	if notGlobal > 0 {
		res.Decisions = append(res.Decisions, Decision{Service: name, Kind: DecisionNotGlobal, Backends: notGlobal,
			Detail: "other clusters export this service but it is not global here; remote backends not used"})
	}

	for fi, fe := range m.frontends {
		res.Services = append(res.Services, state.Service{
			Name:     name,
			Frontend: fe,
			Backends: choose(res, name, fe, policy.Affinity, cands[fi]),
		})
	}
	svcs := res.Services[len(res.Services)-len(m.frontends):]
	slices.SortFunc(svcs, func(a, b state.Service) int { return compareFrontend(a.Frontend, b.Frontend) })
}

// addImport adds one remote cluster's matching backends to the candidates.
func (m *merger) addImport(res *Result, name string, svc *LocalService, imp Import, mode Mode) {
	reachable := imp.Reachable || mode == ModeFailStatic
	matched, ignoredPorts := 0, 0
	for addr, ports := range imp.Service.Backends {
		ip, err := netip.ParseAddr(addr)
		if err != nil {
			continue // the decoder rejects these; never trust that it ran
		}
		ip = ip.Unmap()
		hit := false
		for pname, pc := range ports {
			if pc == nil || pc.Port == 0 {
				ignoredPorts++
				continue
			}
			proto, err := state.ParseProtocol(pc.Protocol)
			if err != nil || proto == state.ProtoAny {
				ignoredPorts++
				continue
			}
			portHit := false
			for fi, fe := range m.frontends {
				sp := svc.Ports[m.portOf[fi]]
				if sp.Name != pname || sp.Protocol != proto {
					continue
				}
				portHit = true
				if fe.IP.Is4() != ip.Is4() {
					continue
				}
				hit = true
				m.cands[fi] = append(m.cands[fi], candidate{
					b:      state.Backend{IP: ip, Port: pc.Port, Protocol: proto, ClusterID: imp.ClusterID},
					active: reachable,
				})
			}
			if !portHit {
				ignoredPorts++
			}
		}
		if hit {
			matched++
		}
	}
	if ignoredPorts > 0 {
		res.Decisions = append(res.Decisions, Decision{Service: name, Kind: DecisionPortsIgnored, Cluster: imp.Cluster, Backends: ignoredPorts,
			Detail: "remote backend ports with a name the local service lacks, a different protocol, or an invalid port are not used"})
	}
	if !imp.Reachable && matched > 0 {
		d := Decision{Service: name, Kind: DecisionClusterWithdrawn, Cluster: imp.Cluster, Backends: matched,
			Detail: "cluster unreachable; its backends take no new connections, established ones continue"}
		if mode == ModeFailStatic {
			d.Kind, d.Detail = DecisionClusterFailStatic, "cluster unreachable; fail-static keeps its backends in use"
		}
		res.Decisions = append(res.Decisions, d)
	}
}

// choose applies affinity to one frontend's candidates and returns its
// sorted, de-duplicated backends.
func choose(res *Result, name string, fe state.Frontend, aff Affinity, cands []candidate) []state.Backend {
	if len(cands) == 0 {
		return nil
	}
	localActive, remoteActive := 0, 0
	for _, c := range cands {
		switch {
		case !c.active:
		case c.local:
			localActive++
		default:
			remoteActive++
		}
	}
	useLocal, useRemote := true, true
	switch aff {
	case AffinityLocal:
		if localActive > 0 {
			useRemote = false
		} else if remoteActive > 0 {
			res.Decisions = append(res.Decisions, Decision{Service: name, Kind: DecisionAffinityFallback, Frontend: fe, Backends: remoteActive,
				Detail: "affinity local but no active local backend; using remote backends"})
		}
	case AffinityRemote:
		if remoteActive > 0 {
			useLocal = false
		} else if localActive > 0 {
			res.Decisions = append(res.Decisions, Decision{Service: name, Kind: DecisionAffinityFallback, Frontend: fe, Backends: localActive,
				Detail: "affinity remote but no active remote backend; using local backends"})
		}
	}
	for i := range cands {
		c := &cands[i]
		if c.active && (c.local && useLocal || !c.local && useRemote) {
			c.b.State = state.BackendActive
		} else {
			c.b.State = state.BackendTerminating
		}
	}
	sorted := cands // scratch owned by the merger: sort in place
	slices.SortFunc(sorted, func(a, b candidate) int {
		return cmp.Or(
			compareAddrPort(a.b, b.b),
			cmp.Compare(a.b.State, b.b.State), // Active (0) first
			-cmpBool(a.local, b.local),        // local first
			cmp.Compare(a.b.ClusterID, b.b.ClusterID),
		)
	})
	out := make([]state.Backend, 0, len(sorted))
	for i, c := range sorted {
		if i > 0 && compareAddrPort(sorted[i-1].b, c.b) == 0 {
			continue
		}
		out = append(out, c.b)
	}
	return out
}

func compareAddrPort(a, b state.Backend) int {
	return cmp.Or(a.IP.Compare(b.IP), cmp.Compare(a.Port, b.Port), cmp.Compare(a.Protocol, b.Protocol))
}

func compareFrontend(a, b state.Frontend) int {
	return cmp.Or(a.IP.Compare(b.IP), cmp.Compare(a.Port, b.Port), cmp.Compare(a.Protocol, b.Protocol))
}

func cmpBool(a, b bool) int {
	switch {
	case a == b:
		return 0
	case a:
		return 1
	}
	return -1
}

func sortDecisions(ds []Decision) {
	slices.SortStableFunc(ds, func(a, b Decision) int {
		return cmp.Or(
			cmp.Compare(a.Service, b.Service),
			cmp.Compare(a.Kind, b.Kind),
			cmp.Compare(a.Cluster, b.Cluster),
			compareFrontend(a.Frontend, b.Frontend),
		)
	})
}
