package policy

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/meshbed/meshbed/datapath/state"
)

// Well-known label keys, without source prefix.
const (
	// LabelNamespace is the namespace of a pod's identity.
	LabelNamespace = "io.kubernetes.pod.namespace"
	// LabelCluster is the cluster an identity belongs to.
	LabelCluster = "io.cilium.k8s.policy.cluster"
	// LabelNamespaceLabelsPrefix prefixes the labels of an identity's
	// namespace, as Cilium puts them on identities.
	LabelNamespaceLabelsPrefix = "io.cilium.k8s.namespace.labels."
	// LabelNamespaceName is the label Kubernetes puts on every namespace.
	LabelNamespaceName = "kubernetes.io/metadata.name"
	// ReservedPrefix prefixes the label keys of reserved identities
	// (reserved:host, reserved:world, ...).
	ReservedPrefix = "reserved:"
)

// ErrUnsupported marks a well-formed policy that uses a feature meshbed
// does not enforce; the caller should report it to the user and keep the
// previous version of the policy.
var ErrUnsupported = errors.New("not supported by meshbed")

// ErrUnknownIdentity is returned by Compute and Track for an identity the
// Repository does not know. The policy returned with it denies everything:
// the agent should give the endpoint a known identity before relying on it.
var ErrUnknownIdentity = errors.New("unknown identity")

// Source is the kind of Kubernetes object a Policy comes from.
type Source uint8

// Policy sources.
const (
	SourceCiliumNetworkPolicy Source = iota + 1
	SourceNetworkPolicy
)

func (s Source) String() string {
	switch s {
	case SourceCiliumNetworkPolicy:
		return "CiliumNetworkPolicy"
	case SourceNetworkPolicy:
		return "NetworkPolicy"
	}
	return fmt.Sprintf("source-%d", uint8(s))
}

// Ref names a policy: a CiliumNetworkPolicy and a NetworkPolicy of the same
// name are different policies.
type Ref struct {
	Source    Source
	Namespace string
	Name      string
}

func (r Ref) String() string { return fmt.Sprintf("%s %s/%s", r.Source, r.Namespace, r.Name) }

// Policy is a decoded policy object. Selectors carry the namespace
// defaulting already; the local-cluster defaulting is added by the
// Repository (see the package documentation).
type Policy struct {
	Ref
	// Specs are the rules of the object: the spec and specs of a
	// CiliumNetworkPolicy, the one spec of a NetworkPolicy.
	Specs []Spec
	// Warnings are things the user should know about an accepted policy,
	// e.g. that DNS rules are enforced at L4 only.
	Warnings []string
}

// Spec is one rule set: the endpoints it applies to and what they may do.
type Spec struct {
	// Subject selects the endpoints the spec applies to.
	Subject Selector
	// EnforceIngress and EnforceEgress put the subject endpoints into
	// default deny in that direction.
	EnforceIngress bool
	EnforceEgress  bool
	// Ingress and Egress allow traffic; each Rule is added to the others.
	Ingress []Rule
	Egress  []Rule
}

// Rule allows traffic with any of Peers on any of Ports.
type Rule struct {
	// Peers of the rule; empty allows nothing (Cilium's `ingress: [{}]`
	// idiom for default deny). Peer{Entity: EntityAll} allows any peer.
	Peers []Peer
	// Ports the rule allows; empty means every port and protocol.
	Ports []Port
	// DNS holds the rules.dns matches of a CiliumNetworkPolicy; they are
	// kept for the record and not enforced (the rule applies at L4).
	DNS []DNSMatch
}

// Peer is one source or destination selector; exactly one field is set.
type Peer struct {
	Selector *Selector
	Entity   Entity
	CIDR     *CIDR
}

// CIDR selects the addresses of Prefix that are not in any of Except.
type CIDR struct {
	Prefix netip.Prefix
	Except []netip.Prefix
}

// Entity names a class of peers (Cilium's fromEntities/toEntities).
type Entity string

// Supported entities.
const (
	EntityAll           Entity = "all"
	EntityWorld         Entity = "world"
	EntityCluster       Entity = "cluster"
	EntityHost          Entity = "host"
	EntityRemoteNode    Entity = "remote-node"
	EntityKubeAPIServer Entity = "kube-apiserver"
	EntityInit          Entity = "init"
	EntityHealth        Entity = "health"
	EntityUnmanaged     Entity = "unmanaged"
)

// reservedEntities maps the entities that are exactly one reserved identity.
var reservedEntities = map[Entity]uint32{
	EntityWorld:         state.IdentityWorld,
	EntityHost:          state.IdentityHost,
	EntityRemoteNode:    state.IdentityRemoteNode,
	EntityKubeAPIServer: state.IdentityKubeAPIServer,
	EntityInit:          state.IdentityInit,
	EntityHealth:        state.IdentityHealth,
	EntityUnmanaged:     state.IdentityUnmanaged,
}

// reservedNames are the label names of the reserved identities
// (reserved:<name>), which are also their entity names.
var reservedNames = map[uint32]string{
	state.IdentityHost:          "host",
	state.IdentityWorld:         "world",
	state.IdentityUnmanaged:     "unmanaged",
	state.IdentityHealth:        "health",
	state.IdentityInit:          "init",
	state.IdentityRemoteNode:    "remote-node",
	state.IdentityKubeAPIServer: "kube-apiserver",
}

func (e Entity) valid() bool {
	if e == EntityAll || e == EntityCluster {
		return true
	}
	_, ok := reservedEntities[e]
	return ok
}

// Port is an allowed protocol and port range. Port 0 means every port;
// EndPort is the inclusive end of a range (0 for a single port).
type Port struct {
	Protocol state.Protocol
	Port     uint16
	EndPort  uint16
}

// DNSMatch is one rules.dns entry.
type DNSMatch struct {
	MatchName    string
	MatchPattern string
}

// Validate checks the invariants the decoders guarantee, for policies built
// by hand. The Repository refuses a policy that fails it.
func (p *Policy) Validate() error {
	if p.Source != SourceCiliumNetworkPolicy && p.Source != SourceNetworkPolicy {
		return fmt.Errorf("policy %s/%s: unknown source %d", p.Namespace, p.Name, p.Source)
	}
	if p.Name == "" || p.Namespace == "" {
		return fmt.Errorf("%s: name and namespace are required", p.Ref)
	}
	for i := range p.Specs {
		if err := p.Specs[i].validate(); err != nil {
			return fmt.Errorf("%s: specs[%d]: %w", p.Ref, i, err)
		}
	}
	return nil
}

func (s *Spec) validate() error {
	if err := s.Subject.validate(); err != nil {
		return fmt.Errorf("subject: %w", err)
	}
	for _, d := range []struct {
		name  string
		rules []Rule
	}{{"ingress", s.Ingress}, {"egress", s.Egress}} {
		for i := range d.rules {
			if err := d.rules[i].validate(); err != nil {
				return fmt.Errorf("%s[%d]: %w", d.name, i, err)
			}
		}
	}
	return nil
}

func (r *Rule) validate() error {
	for i, p := range r.Peers {
		if err := p.validate(); err != nil {
			return fmt.Errorf("peers[%d]: %w", i, err)
		}
	}
	for i, p := range r.Ports {
		if err := p.validate(); err != nil {
			return fmt.Errorf("ports[%d]: %w", i, err)
		}
	}
	return nil
}

func (p Peer) validate() error {
	n := 0
	if p.Selector != nil {
		n++
		if err := p.Selector.validate(); err != nil {
			return err
		}
	}
	if p.Entity != "" {
		n++
		if !p.Entity.valid() {
			return fmt.Errorf("unknown entity %q", p.Entity)
		}
	}
	if p.CIDR != nil {
		n++
		if err := p.CIDR.validate(); err != nil {
			return err
		}
	}
	if n != 1 {
		return fmt.Errorf("a peer needs exactly one of selector, entity, CIDR (has %d)", n)
	}
	return nil
}

func (c *CIDR) validate() error {
	if err := checkPrefix(c.Prefix); err != nil {
		return err
	}
	for _, e := range c.Except {
		if err := checkPrefix(e); err != nil {
			return fmt.Errorf("except: %w", err)
		}
		if !strictlyInside(e, c.Prefix) {
			return fmt.Errorf("except %s is not strictly inside %s", e, c.Prefix)
		}
	}
	return nil
}

func checkPrefix(p netip.Prefix) error {
	switch {
	case !p.IsValid():
		return fmt.Errorf("invalid prefix %s", p)
	case p.Addr().Is4In6():
		return fmt.Errorf("prefix %s: IPv4-mapped IPv6 prefixes are not accepted, use the IPv4 form", p)
	case p.Addr().Zone() != "":
		return fmt.Errorf("prefix %s has a zone", p)
	case p.Masked() != p:
		return fmt.Errorf("prefix %s has host bits set", p)
	}
	return nil
}

// inside reports whether every address of q is in p.
func inside(q, p netip.Prefix) bool {
	return q.Addr().BitLen() == p.Addr().BitLen() && p.Bits() <= q.Bits() && p.Contains(q.Addr())
}

func strictlyInside(q, p netip.Prefix) bool { return inside(q, p) && q.Bits() > p.Bits() }

func (p Port) validate() error {
	switch p.Protocol {
	case state.ProtoAny, state.TCP, state.UDP:
	default:
		return fmt.Errorf("protocol %s: %w", p.Protocol, ErrUnsupported)
	}
	if p.EndPort != 0 {
		if p.Port == 0 {
			return fmt.Errorf("endPort %d needs a port", p.EndPort)
		}
		if p.EndPort < p.Port {
			return fmt.Errorf("endPort %d is below port %d", p.EndPort, p.Port)
		}
	}
	return nil
}
