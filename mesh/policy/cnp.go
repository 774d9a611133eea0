package policy

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"sigs.k8s.io/yaml"

	"github.com/meshbed/meshbed/datapath/state"
)

// CiliumNetworkPolicy identification.
const (
	CNPAPIVersion = "cilium.io/v2"
	CNPKind       = "CiliumNetworkPolicy"
)

// DefaultNamespace is the namespace of a policy whose metadata names none,
// as kubectl would apply it with the default context.
const DefaultNamespace = "default"

// DecodeCNP decodes one CiliumNetworkPolicy from YAML or JSON, strictly:
// unknown fields, duplicate keys and unsupported features are errors
// (*DecodeError naming the policy and the field path). Metadata other than
// name and namespace, and status, are ignored.
func DecodeCNP(data []byte) (*Policy, error) {
	fail := func(err error) (*Policy, error) {
		return nil, &DecodeError{Ref: Ref{Source: SourceCiliumNetworkPolicy}, Err: err}
	}
	j, err := yaml.YAMLToJSONStrict(data)
	if err != nil {
		return fail(fmt.Errorf("parse YAML: %w", err))
	}
	dec := json.NewDecoder(bytes.NewReader(j))
	dec.UseNumber()
	var obj any
	if err := dec.Decode(&obj); err != nil {
		return fail(fmt.Errorf("parse JSON: %w", err))
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return fail(errors.New("trailing data after the object"))
	}
	m, ok := obj.(map[string]any)
	if !ok {
		return fail(fmt.Errorf("must be an object, not %s", kindOf(obj)))
	}
	return DecodeCNPObject(m)
}

// DecodeCNPObject decodes a CiliumNetworkPolicy held as a generic object,
// e.g. unstructured.Unstructured.Object from a dynamic informer, with the
// same rules as DecodeCNP.
func DecodeCNPObject(obj map[string]any) (*Policy, error) {
	d := &cnpDecoder{p: &Policy{Ref: Ref{Source: SourceCiliumNetworkPolicy}}}
	if err := d.decode(value{v: obj}); err != nil {
		de := &DecodeError{Ref: d.p.Ref, Err: err}
		var fe *fieldError
		if errors.As(err, &fe) {
			de.Path, de.Err = fe.path, fe.err
		}
		return nil, de
	}
	return d.p, nil
}

type cnpDecoder struct {
	p *Policy
}

func (d *cnpDecoder) warn(v value, format string, args ...any) {
	d.p.Warnings = append(d.p.Warnings, v.path+": "+fmt.Sprintf(format, args...))
}

func (d *cnpDecoder) decode(root value) error {
	o, err := root.object()
	if err != nil {
		return err
	}
	// Metadata first, so that every later error names the policy.
	md, ok := o.get("metadata")
	if !ok {
		return root.errorf("metadata is required")
	}
	if err := d.metadata(md); err != nil {
		return err
	}
	if err := requireString(o, "apiVersion", CNPAPIVersion); err != nil {
		return err
	}
	if k, ok := o.get("kind"); ok {
		if s, _ := k.str(); s == "CiliumClusterwideNetworkPolicy" {
			return k.unsupported("CiliumClusterwideNetworkPolicy")
		}
	}
	if err := requireString(o, "kind", CNPKind); err != nil {
		return err
	}
	o.ignore("status")
	if v, ok := o.get("spec"); ok {
		s, err := d.spec(v)
		if err != nil {
			return err
		}
		d.p.Specs = append(d.p.Specs, s)
	}
	if v, ok := o.get("specs"); ok {
		l, err := v.list()
		if err != nil {
			return err
		}
		for _, e := range l {
			s, err := d.spec(e)
			if err != nil {
				return err
			}
			d.p.Specs = append(d.p.Specs, s)
		}
	}
	if len(d.p.Specs) == 0 {
		return root.errorf("spec or specs is required")
	}
	return o.done()
}

func requireString(o *object, field, want string) error {
	v, ok := o.get(field)
	if !ok {
		return o.child(field, nil).errorf("is required (want %q)", want)
	}
	s, err := v.str()
	if err != nil {
		return err
	}
	if s != want {
		return v.errorf("is %q, want %q", s, want)
	}
	return nil
}

func (d *cnpDecoder) metadata(v value) error {
	o, err := v.object()
	if err != nil {
		return err
	}
	name, ok := o.get("name")
	if !ok {
		return v.errorf("name is required")
	}
	if d.p.Name, err = name.str(); err != nil {
		return err
	}
	if d.p.Name == "" {
		return name.errorf("must not be empty")
	}
	d.p.Namespace = DefaultNamespace
	if ns, ok := o.get("namespace"); ok {
		s, err := ns.str()
		if err != nil {
			return err
		}
		if s != "" {
			d.p.Namespace = s
		}
	}
	// Labels, annotations, uid, managedFields...: the API server's business.
	return nil
}

var unsupportedSpecFields = map[string]string{
	"nodeSelector": "nodeSelector (host policy)",
	"ingressDeny":  "ingressDeny (deny rules)",
	"egressDeny":   "egressDeny (deny rules)",
	"log":          "policy logging",
}

func (d *cnpDecoder) spec(v value) (Spec, error) {
	var s Spec
	o, err := v.object()
	if err != nil {
		return s, err
	}
	if err := o.reject(unsupportedSpecFields); err != nil {
		return s, err
	}
	es, ok := o.get("endpointSelector")
	if !ok {
		return s, v.errorf("endpointSelector is required")
	}
	if s.Subject, err = d.subject(es); err != nil {
		return s, err
	}
	// Cilium leaves peers of a policy for initializing endpoints without
	// namespace: those endpoints have no labels yet.
	peerNS := d.p.Namespace
	if s.Subject.HasKey(ReservedPrefix + "init") {
		peerNS = ""
	}
	if in, ok := o.get("ingress"); ok {
		if s.Ingress, err = d.rules(in, state.Ingress, peerNS); err != nil {
			return s, err
		}
	}
	if eg, ok := o.get("egress"); ok {
		if s.Egress, err = d.rules(eg, state.Egress, peerNS); err != nil {
			return s, err
		}
	}
	s.EnforceIngress, s.EnforceEgress = len(s.Ingress) > 0, len(s.Egress) > 0
	if dd, ok := o.get("enableDefaultDeny"); ok {
		ddo, err := dd.object()
		if err != nil {
			return s, err
		}
		for _, f := range []struct {
			name string
			dst  *bool
		}{{"ingress", &s.EnforceIngress}, {"egress", &s.EnforceEgress}} {
			if fv, ok := ddo.get(f.name); ok {
				if *f.dst, err = fv.boolean(); err != nil {
					return s, err
				}
			}
		}
		if err := ddo.done(); err != nil {
			return s, err
		}
	}
	// Rule labels only name the rule in Cilium's policy repository.
	o.ignore("labels")
	if dv, ok := o.get("description"); ok {
		if _, err := dv.str(); err != nil {
			return s, err
		}
	}
	return s, o.done()
}

// subject decodes the endpointSelector. In a namespaced policy it always
// applies to the policy's namespace: a different namespace in matchLabels is
// dropped with a warning, as Cilium does.
func (d *cnpDecoder) subject(v value) (Selector, error) {
	labels, exprs, err := decodeLabelSelector(v)
	if err != nil {
		return Selector{}, err
	}
	reqs := exprs
	for _, r := range labels {
		if r.Key == LabelNamespace {
			if r.Values[0] != d.p.Namespace {
				d.warn(v, "namespace %q in matchLabels dropped: an endpointSelector applies to the policy's namespace %q only", r.Values[0], d.p.Namespace)
			}
			continue
		}
		reqs = append(reqs, r)
	}
	return Selector{Requirements: reqs}.with(nsRequirement(d.p.Namespace)), nil
}

func nsRequirement(ns string) Requirement {
	return Requirement{Key: LabelNamespace, Operator: OpIn, Values: []string{ns}}
}

// peerSelector applies Cilium's namespace defaulting to a
// fromEndpoints/toEndpoints selector: it stays in the policy's namespace
// unless it says otherwise.
func peerSelector(sel Selector, ns string) Selector {
	if ns == "" || sel.hasKeyPrefix(ReservedPrefix) || sel.HasKey(LabelNamespace) || sel.hasKeyPrefix(LabelNamespaceLabelsPrefix) {
		return sel.Canonical()
	}
	return sel.with(nsRequirement(ns))
}

// decodeLabelSelector reads matchLabels (returned as In requirements, in
// key order) and matchExpressions, with canonical keys.
func decodeLabelSelector(v value) (labels, exprs []Requirement, err error) {
	o, err := v.object()
	if err != nil {
		return nil, nil, err
	}
	if ml, ok := o.get("matchLabels"); ok {
		mo, err := ml.object()
		if err != nil {
			return nil, nil, err
		}
		keys := make([]string, 0, len(mo.m))
		for k := range mo.m {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		for _, k := range keys {
			f := value{path: ml.path + "[" + strconv.Quote(k) + "]", v: mo.m[k]}
			val, err := f.str()
			if err != nil {
				return nil, nil, err
			}
			r, err := requirement(f, k, OpIn, []string{val})
			if err != nil {
				return nil, nil, err
			}
			labels = append(labels, r)
		}
	}
	if me, ok := o.get("matchExpressions"); ok {
		l, err := me.list()
		if err != nil {
			return nil, nil, err
		}
		for _, e := range l {
			eo, err := e.object()
			if err != nil {
				return nil, nil, err
			}
			kv, ok := eo.get("key")
			if !ok {
				return nil, nil, e.errorf("key is required")
			}
			key, err := kv.str()
			if err != nil {
				return nil, nil, err
			}
			ov, ok := eo.get("operator")
			if !ok {
				return nil, nil, e.errorf("operator is required")
			}
			op, err := ov.str()
			if err != nil {
				return nil, nil, err
			}
			var vals []string
			if vv, ok := eo.get("values"); ok {
				if vals, err = vv.strings(); err != nil {
					return nil, nil, err
				}
			}
			if err := eo.done(); err != nil {
				return nil, nil, err
			}
			r, err := requirement(e, key, Operator(op), vals)
			if err != nil {
				return nil, nil, err
			}
			exprs = append(exprs, r)
		}
	}
	return labels, exprs, o.done()
}

func requirement(v value, key string, op Operator, vals []string) (Requirement, error) {
	k, err := canonicalKey(key)
	if err != nil {
		return Requirement{}, &fieldError{path: v.path, err: err}
	}
	r := Requirement{Key: k, Operator: op, Values: vals}
	if len(r.Values) == 0 {
		r.Values = nil
	}
	r = Selector{Requirements: []Requirement{r}}.Canonical().Requirements[0]
	if err := r.validate(); err != nil {
		return Requirement{}, &fieldError{path: v.path, err: err}
	}
	return r, nil
}

var unsupportedIngressFields = map[string]string{
	"fromRequires":   "fromRequires",
	"fromGroups":     "fromGroups (cloud provider groups)",
	"fromNodes":      "fromNodes",
	"icmps":          "ICMP rules",
	"authentication": "mutual authentication",
}

var unsupportedEgressFields = map[string]string{
	"toRequires":     "toRequires",
	"toGroups":       "toGroups (cloud provider groups)",
	"toNodes":        "toNodes",
	"toServices":     "toServices",
	"toFQDNs":        "toFQDNs (DNS-based policy)",
	"icmps":          "ICMP rules",
	"authentication": "mutual authentication",
}

func (d *cnpDecoder) rules(v value, dir state.Direction, ns string) ([]Rule, error) {
	l, err := v.list()
	if err != nil {
		return nil, err
	}
	out := make([]Rule, 0, len(l))
	for _, e := range l {
		r, err := d.rule(e, dir, ns)
		if err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	return out, nil
}

func (d *cnpDecoder) rule(v value, dir state.Direction, ns string) (Rule, error) {
	var r Rule
	o, err := v.object()
	if err != nil {
		return r, err
	}
	prefix, unsupported := "from", unsupportedIngressFields
	if dir == state.Egress {
		prefix, unsupported = "to", unsupportedEgressFields
	}
	if err := o.reject(unsupported); err != nil {
		return r, err
	}
	if f, ok := o.get(prefix + "Endpoints"); ok {
		l, err := f.list()
		if err != nil {
			return r, err
		}
		for _, e := range l {
			labels, exprs, err := decodeLabelSelector(e)
			if err != nil {
				return r, err
			}
			sel := peerSelector(Selector{Requirements: append(labels, exprs...)}, ns)
			r.Peers = append(r.Peers, Peer{Selector: &sel})
		}
	}
	if f, ok := o.get(prefix + "Entities"); ok {
		l, err := f.list()
		if err != nil {
			return r, err
		}
		for _, e := range l {
			s, err := e.str()
			if err != nil {
				return r, err
			}
			ent, err := entity(e, s)
			if err != nil {
				return r, err
			}
			r.Peers = append(r.Peers, Peer{Entity: ent})
		}
	}
	if f, ok := o.get(prefix + "CIDR"); ok {
		l, err := f.list()
		if err != nil {
			return r, err
		}
		for _, e := range l {
			p, err := d.prefix(e)
			if err != nil {
				return r, err
			}
			r.Peers = append(r.Peers, Peer{CIDR: &CIDR{Prefix: p}})
		}
	}
	if f, ok := o.get(prefix + "CIDRSet"); ok {
		l, err := f.list()
		if err != nil {
			return r, err
		}
		for _, e := range l {
			c, err := d.cidrRule(e)
			if err != nil {
				return r, err
			}
			r.Peers = append(r.Peers, Peer{CIDR: c})
		}
	}
	if f, ok := o.get("toPorts"); ok {
		l, err := f.list()
		if err != nil {
			return r, err
		}
		for _, e := range l {
			if err := d.portRule(e, dir, &r); err != nil {
				return r, err
			}
		}
	}
	// A rule with ports but no peers is an L4-only rule: any peer.
	if len(r.Peers) == 0 && len(r.Ports) > 0 {
		r.Peers = []Peer{{Entity: EntityAll}}
	}
	return r, o.done()
}

func entity(v value, s string) (Entity, error) {
	e := Entity(s)
	if e.valid() {
		return e, nil
	}
	switch s {
	case "world-ipv4", "world-ipv6":
		return "", &fieldError{path: v.path, err: fmt.Errorf("entity %q: %w (there is one world identity: use world)", s, ErrUnsupported)}
	case "ingress", "cluster-mesh", "kube-dns", "remote-cluster":
		return "", v.unsupported(fmt.Sprintf("entity %q", s))
	}
	return "", v.errorf("unknown entity %q (want all, world, cluster, host, remote-node, kube-apiserver, init, health or unmanaged)", s)
}

// prefix parses a CIDR or a single address; host bits are cleared with a
// warning.
func (d *cnpDecoder) prefix(v value) (netip.Prefix, error) {
	s, err := v.str()
	if err != nil {
		return netip.Prefix{}, err
	}
	p, masked, err := parsePrefix(s)
	if err != nil {
		return netip.Prefix{}, v.errorf("%v", err)
	}
	if masked {
		d.warn(v, "%s has host bits set; using %s", s, p)
	}
	return p, nil
}

// parsePrefix parses a prefix ("10.0.0.0/8") or an address (a /32 or
// /128); masked reports that host bits were cleared.
func parsePrefix(s string) (p netip.Prefix, masked bool, err error) {
	if strings.Contains(s, "/") {
		p, err = netip.ParsePrefix(s)
		if err != nil {
			return p, false, fmt.Errorf("invalid CIDR %q", s)
		}
	} else {
		a, err := netip.ParseAddr(s)
		if err != nil {
			return p, false, fmt.Errorf("invalid CIDR or address %q", s)
		}
		if a.Zone() != "" {
			return p, false, fmt.Errorf("address %q has a zone", s)
		}
		p = netip.PrefixFrom(a, a.BitLen())
	}
	if p.Addr().Is4In6() {
		return p, false, fmt.Errorf("IPv4-mapped IPv6 %q is not accepted, use the IPv4 form", s)
	}
	if m := p.Masked(); m != p {
		return m, true, nil
	}
	return p, false, nil
}

func (d *cnpDecoder) cidrRule(v value) (*CIDR, error) {
	o, err := v.object()
	if err != nil {
		return nil, err
	}
	if err := o.reject(map[string]string{
		"cidrGroupRef":      "cidrGroupRef (CiliumCIDRGroup)",
		"cidrGroupSelector": "cidrGroupSelector (CiliumCIDRGroup)",
	}); err != nil {
		return nil, err
	}
	cv, ok := o.get("cidr")
	if !ok {
		return nil, v.errorf("cidr is required")
	}
	c := &CIDR{}
	if c.Prefix, err = d.prefix(cv); err != nil {
		return nil, err
	}
	if ev, ok := o.get("except"); ok {
		l, err := ev.list()
		if err != nil {
			return nil, err
		}
		for _, e := range l {
			p, err := d.prefix(e)
			if err != nil {
				return nil, err
			}
			if !strictlyInside(p, c.Prefix) {
				return nil, e.errorf("except %s is not strictly inside cidr %s", p, c.Prefix)
			}
			c.Except = append(c.Except, p)
		}
	}
	return c, o.done()
}

var unsupportedPortRuleFields = map[string]string{
	"terminatingTLS": "TLS interception (terminatingTLS)",
	"originatingTLS": "TLS interception (originatingTLS)",
	"serverNames":    "TLS SNI matching (serverNames)",
	"listener":       "L7 listeners",
}

func (d *cnpDecoder) portRule(v value, dir state.Direction, r *Rule) error {
	o, err := v.object()
	if err != nil {
		return err
	}
	if err := o.reject(unsupportedPortRuleFields); err != nil {
		return err
	}
	pv, ok := o.get("ports")
	if !ok {
		return v.errorf("ports is required")
	}
	l, err := pv.list()
	if err != nil {
		return err
	}
	if len(l) == 0 {
		return pv.errorf("must not be empty")
	}
	for _, e := range l {
		p, err := cnpPort(e)
		if err != nil {
			return err
		}
		r.Ports = append(r.Ports, p)
	}
	if rv, ok := o.get("rules"); ok {
		ro, err := rv.object()
		if err != nil {
			return err
		}
		if err := ro.reject(map[string]string{
			"http":    "L7 HTTP rules (meshbed enforces L3/L4 only)",
			"kafka":   "L7 Kafka rules (meshbed enforces L3/L4 only)",
			"l7proto": "L7 protocol parsers (meshbed enforces L3/L4 only)",
			"l7":      "L7 rules (meshbed enforces L3/L4 only)",
		}); err != nil {
			return err
		}
		if dv, ok := ro.get("dns"); ok {
			if dir != state.Egress {
				return dv.errorf("DNS rules are only valid in egress")
			}
			dl, err := dv.list()
			if err != nil {
				return err
			}
			for _, e := range dl {
				m, err := dnsMatch(e)
				if err != nil {
					return err
				}
				r.DNS = append(r.DNS, m)
			}
			d.warn(dv, "DNS names are not filtered: meshbed enforces this rule at L4, allowing its ports to the selected peers for any name")
		}
		if err := ro.done(); err != nil {
			return err
		}
	}
	return o.done()
}

func dnsMatch(v value) (DNSMatch, error) {
	var m DNSMatch
	o, err := v.object()
	if err != nil {
		return m, err
	}
	for _, f := range []struct {
		name string
		dst  *string
	}{{"matchName", &m.MatchName}, {"matchPattern", &m.MatchPattern}} {
		if fv, ok := o.get(f.name); ok {
			if *f.dst, err = fv.str(); err != nil {
				return m, err
			}
		}
	}
	return m, o.done()
}

func cnpPort(v value) (Port, error) {
	p := Port{Protocol: state.ProtoAny}
	o, err := v.object()
	if err != nil {
		return p, err
	}
	if pv, ok := o.get("port"); ok {
		s, err := pv.str()
		if err != nil {
			return p, pv.errorf("must be a string such as \"80\", not %s", kindOf(pv.v))
		}
		if p.Port, err = portNumber(pv, s); err != nil {
			return p, err
		}
	}
	if ev, ok := o.get("endPort"); ok {
		n, err := ev.integer()
		if err != nil {
			return p, err
		}
		if n < 0 || n > 65535 {
			return p, ev.errorf("%d is not a port number", n)
		}
		if n != 0 {
			if p.Port == 0 {
				return p, ev.errorf("needs a port")
			}
			if n < int64(p.Port) {
				return p, ev.errorf("%d is below port %d", n, p.Port)
			}
			if n > int64(p.Port) {
				p.EndPort = uint16(n)
			}
		}
	}
	if prv, ok := o.get("protocol"); ok {
		s, err := prv.str()
		if err != nil {
			return p, err
		}
		if p.Protocol, err = protocol(prv, s, state.ProtoAny); err != nil {
			return p, err
		}
	}
	return p, o.done()
}

// portNumber parses a toPorts port: a decimal number, 0 or empty for every
// port. Named ports are not resolved.
func portNumber(v value, s string) (uint16, error) {
	if s == "" {
		return 0, nil
	}
	n, err := strconv.ParseUint(s, 10, 16)
	if err == nil {
		return uint16(n), nil
	}
	if s[0] >= '0' && s[0] <= '9' {
		return 0, v.errorf("%q is not a port number (0-65535)", s)
	}
	return 0, &fieldError{path: v.path, err: fmt.Errorf("named port %q: %w, use the port number", s, ErrUnsupported)}
}

// protocol parses TCP, UDP or ANY; an empty string means def.
func protocol(v value, s string, def state.Protocol) (state.Protocol, error) {
	switch s {
	case "":
		return def, nil
	case "TCP":
		return state.TCP, nil
	case "UDP":
		return state.UDP, nil
	case "ANY":
		return state.ProtoAny, nil
	case "SCTP", "ICMP", "ICMPv6", "VRRP", "IGMP":
		return 0, &fieldError{path: v.path, err: fmt.Errorf("protocol %s: %w (TCP, UDP and ANY are)", s, ErrUnsupported)}
	}
	return 0, v.errorf("unknown protocol %q (want TCP, UDP or ANY)", s)
}
