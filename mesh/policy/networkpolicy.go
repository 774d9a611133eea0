package policy

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"reflect"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/yaml"

	"github.com/meshbed/meshbed/datapath/state"
)

// DecodeNetworkPolicyYAML decodes one networking.k8s.io/v1 NetworkPolicy
// from YAML or JSON, rejecting duplicate keys and unknown fields (by path),
// then converts it with DecodeNetworkPolicy.
func DecodeNetworkPolicyYAML(data []byte) (*Policy, error) {
	ref := Ref{Source: SourceNetworkPolicy}
	fail := func(path string, err error) (*Policy, error) {
		return nil, &DecodeError{Ref: ref, Path: path, Err: err}
	}
	j, err := yaml.YAMLToJSONStrict(data)
	if err != nil {
		return fail("", fmt.Errorf("parse YAML: %w", err))
	}
	dec := json.NewDecoder(bytes.NewReader(j))
	dec.UseNumber()
	var obj any
	if err := dec.Decode(&obj); err != nil {
		return fail("", fmt.Errorf("parse JSON: %w", err))
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return fail("", errors.New("trailing data after the object"))
	}
	// The name first, so that every later error carries it.
	if m, ok := obj.(map[string]any); ok {
		if md, ok := m["metadata"].(map[string]any); ok {
			ref.Name, _ = md["name"].(string)
			ref.Namespace, _ = md["namespace"].(string)
		}
	}
	if err := checkFields(value{v: obj}, reflect.TypeFor[networkingv1.NetworkPolicy]()); err != nil {
		var fe *fieldError
		if errors.As(err, &fe) {
			return fail(fe.path, fe.err)
		}
		return fail("", err)
	}
	var np networkingv1.NetworkPolicy
	if err := json.Unmarshal(j, &np); err != nil {
		return fail("", fmt.Errorf("parse: %w", err))
	}
	if np.APIVersion != "networking.k8s.io/v1" || np.Kind != "NetworkPolicy" {
		return fail("", fmt.Errorf("apiVersion/kind is %q/%q, want networking.k8s.io/v1/NetworkPolicy", np.APIVersion, np.Kind))
	}
	return DecodeNetworkPolicy(&np)
}

var jsonUnmarshaler = reflect.TypeFor[json.Unmarshaler]()

// checkFields rejects the first field of a generic JSON tree that the
// type t (with json tags, as Kubernetes API types have) does not declare.
// Type mismatches are left to encoding/json.
func checkFields(v value, t reflect.Type) error {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if t.Implements(jsonUnmarshaler) || reflect.PointerTo(t).Implements(jsonUnmarshaler) {
		return nil // IntOrString, Time, FieldsV1: their own format
	}
	switch t.Kind() {
	case reflect.Struct:
		m, ok := v.v.(map[string]any)
		if !ok {
			return nil
		}
		fields := jsonFields(t, map[string]reflect.Type{})
		for _, k := range slices.Sorted(maps.Keys(m)) {
			ft, ok := fields[k]
			if !ok {
				return v.child(k, nil).errorf("unknown field")
			}
			if err := checkFields(v.child(k, m[k]), ft); err != nil {
				return err
			}
		}
	case reflect.Slice:
		l, ok := v.v.([]any)
		if !ok {
			return nil
		}
		for i, e := range l {
			if err := checkFields(value{path: fmt.Sprintf("%s[%d]", v.path, i), v: e}, t.Elem()); err != nil {
				return err
			}
		}
	case reflect.Map:
		m, ok := v.v.(map[string]any)
		if !ok {
			return nil
		}
		for _, k := range slices.Sorted(maps.Keys(m)) {
			if err := checkFields(value{path: fmt.Sprintf("%s[%q]", v.path, k), v: m[k]}, t.Elem()); err != nil {
				return err
			}
		}
	}
	return nil
}

// jsonFields collects the JSON field names of a struct, descending into
// inline embedded structs (TypeMeta, ObjectMeta's neighbours).
func jsonFields(t reflect.Type, out map[string]reflect.Type) map[string]reflect.Type {
	for i := range t.NumField() {
		f := t.Field(i)
		name, opts, _ := strings.Cut(f.Tag.Get("json"), ",")
		if name == "-" {
			continue
		}
		if f.Anonymous && (name == "" || strings.Contains(opts, "inline")) {
			ft := f.Type
			for ft.Kind() == reflect.Pointer {
				ft = ft.Elem()
			}
			if ft.Kind() == reflect.Struct {
				jsonFields(ft, out)
				continue
			}
		}
		if !f.IsExported() {
			continue
		}
		if name == "" {
			name = f.Name
		}
		out[name] = f.Type
	}
	return out
}

// DecodeNetworkPolicy converts a NetworkPolicy, validating what the API
// server would (peers, ports, CIDRs, label selectors) and rejecting what
// meshbed does not enforce (SCTP, named ports). Peers select within the
// local cluster only. An empty namespace means "default".
func DecodeNetworkPolicy(np *networkingv1.NetworkPolicy) (*Policy, error) {
	ns := np.Namespace
	if ns == "" {
		ns = DefaultNamespace
	}
	p := &Policy{Ref: Ref{Source: SourceNetworkPolicy, Namespace: ns, Name: np.Name}}
	if err := decodeNP(p, &np.Spec); err != nil {
		de := &DecodeError{Ref: p.Ref, Err: err}
		var fe *fieldError
		if errors.As(err, &fe) {
			de.Path, de.Err = fe.path, fe.err
		}
		return nil, de
	}
	return p, nil
}

func decodeNP(p *Policy, spec *networkingv1.NetworkPolicySpec) error {
	if p.Name == "" {
		return errors.New("metadata.name is required")
	}
	subj, err := npSelector("spec.podSelector", &spec.PodSelector, "")
	if err != nil {
		return err
	}
	s := Spec{Subject: subj.with(nsRequirement(p.Namespace))}

	// policyTypes defaults to Ingress, plus Egress when there are egress
	// rules; a direction not listed ignores its rules.
	if len(spec.PolicyTypes) == 0 {
		s.EnforceIngress, s.EnforceEgress = true, len(spec.Egress) > 0
	}
	for i, t := range spec.PolicyTypes {
		switch t {
		case networkingv1.PolicyTypeIngress:
			s.EnforceIngress = true
		case networkingv1.PolicyTypeEgress:
			s.EnforceEgress = true
		default:
			return &fieldError{path: fmt.Sprintf("spec.policyTypes[%d]", i), err: fmt.Errorf("unknown policy type %q (want Ingress or Egress)", t)}
		}
	}
	if s.EnforceIngress {
		for i := range spec.Ingress {
			r, err := npRule(fmt.Sprintf("spec.ingress[%d]", i), "from", spec.Ingress[i].From, spec.Ingress[i].Ports, p.Namespace)
			if err != nil {
				return err
			}
			s.Ingress = append(s.Ingress, r)
		}
	} else if len(spec.Ingress) > 0 {
		p.Warnings = append(p.Warnings, "spec.ingress: ignored, policyTypes does not list Ingress")
	}
	if s.EnforceEgress {
		for i := range spec.Egress {
			r, err := npRule(fmt.Sprintf("spec.egress[%d]", i), "to", spec.Egress[i].To, spec.Egress[i].Ports, p.Namespace)
			if err != nil {
				return err
			}
			s.Egress = append(s.Egress, r)
		}
	} else if len(spec.Egress) > 0 {
		p.Warnings = append(p.Warnings, "spec.egress: ignored, policyTypes does not list Egress")
	}
	p.Specs = []Spec{s}
	return nil
}

// npRule converts one ingress or egress rule. No peers means every peer,
// no ports every port (NetworkPolicy semantics, unlike Cilium's empty rule).
func npRule(path, peersField string, peers []networkingv1.NetworkPolicyPeer, ports []networkingv1.NetworkPolicyPort, ns string) (Rule, error) {
	var r Rule
	for i := range peers {
		pp, err := npPeer(fmt.Sprintf("%s.%s[%d]", path, peersField, i), &peers[i], ns)
		if err != nil {
			return r, err
		}
		r.Peers = append(r.Peers, pp)
	}
	if len(r.Peers) == 0 {
		r.Peers = []Peer{{Entity: EntityAll}}
	}
	for i := range ports {
		pt, err := npPort(fmt.Sprintf("%s.ports[%d]", path, i), &ports[i])
		if err != nil {
			return r, err
		}
		r.Ports = append(r.Ports, pt)
	}
	return r, nil
}

func npPeer(path string, peer *networkingv1.NetworkPolicyPeer, ns string) (Peer, error) {
	if peer.IPBlock != nil {
		if peer.PodSelector != nil || peer.NamespaceSelector != nil {
			return Peer{}, &fieldError{path: path, err: errors.New("ipBlock may not be combined with podSelector or namespaceSelector")}
		}
		return npIPBlock(path+".ipBlock", peer.IPBlock)
	}
	if peer.PodSelector == nil && peer.NamespaceSelector == nil {
		return Peer{}, &fieldError{path: path, err: errors.New("a peer needs podSelector, namespaceSelector or ipBlock")}
	}
	var sel Selector
	if peer.PodSelector != nil {
		s, err := npSelector(path+".podSelector", peer.PodSelector, "")
		if err != nil {
			return Peer{}, err
		}
		sel = s
	}
	if peer.NamespaceSelector == nil {
		// Pods of the policy's own namespace.
		sel = sel.with(nsRequirement(ns))
	} else {
		// Namespaces are matched by their labels, which identities carry
		// under io.cilium.k8s.namespace.labels.; the Exists term keeps an
		// empty namespaceSelector from selecting non-pod identities.
		s, err := npSelector(path+".namespaceSelector", peer.NamespaceSelector, LabelNamespaceLabelsPrefix)
		if err != nil {
			return Peer{}, err
		}
		sel = sel.with(s.Requirements...).with(Requirement{Key: LabelNamespace, Operator: OpExists})
	}
	return Peer{Selector: &sel}, nil
}

func npIPBlock(path string, b *networkingv1.IPBlock) (Peer, error) {
	c := &CIDR{}
	var masked bool
	var err error
	if c.Prefix, masked, err = parsePrefix(b.CIDR); err != nil || masked || !strings.Contains(b.CIDR, "/") {
		if err == nil {
			err = fmt.Errorf("%q is not a CIDR in canonical form", b.CIDR)
		}
		return Peer{}, &fieldError{path: path + ".cidr", err: err}
	}
	for i, e := range b.Except {
		ep := fmt.Sprintf("%s.except[%d]", path, i)
		x, masked, err := parsePrefix(e)
		if err != nil || masked || !strings.Contains(e, "/") {
			if err == nil {
				err = fmt.Errorf("%q is not a CIDR in canonical form", e)
			}
			return Peer{}, &fieldError{path: ep, err: err}
		}
		if !strictlyInside(x, c.Prefix) {
			return Peer{}, &fieldError{path: ep, err: fmt.Errorf("%s is not strictly inside cidr %s", x, c.Prefix)}
		}
		c.Except = append(c.Except, x)
	}
	return Peer{CIDR: c}, nil
}

func npPort(path string, p *networkingv1.NetworkPolicyPort) (Port, error) {
	out := Port{Protocol: state.TCP}
	if p.Protocol != nil {
		switch *p.Protocol {
		case corev1.ProtocolTCP:
		case corev1.ProtocolUDP:
			out.Protocol = state.UDP
		case corev1.ProtocolSCTP:
			return out, &fieldError{path: path + ".protocol", err: fmt.Errorf("protocol SCTP: %w (TCP and UDP are)", ErrUnsupported)}
		default:
			return out, &fieldError{path: path + ".protocol", err: fmt.Errorf("unknown protocol %q (want TCP, UDP or SCTP)", *p.Protocol)}
		}
	}
	if p.Port != nil {
		switch p.Port.Type {
		case intstr.Int:
			if p.Port.IntVal < 1 || p.Port.IntVal > 65535 {
				return out, &fieldError{path: path + ".port", err: fmt.Errorf("%d is not a port number (1-65535)", p.Port.IntVal)}
			}
			out.Port = uint16(p.Port.IntVal)
		case intstr.String:
			return out, &fieldError{path: path + ".port", err: fmt.Errorf("named port %q: %w, use the port number", p.Port.StrVal, ErrUnsupported)}
		default:
			return out, &fieldError{path: path + ".port", err: fmt.Errorf("invalid port type %d", p.Port.Type)}
		}
	}
	if p.EndPort != nil {
		e := *p.EndPort
		switch {
		case out.Port == 0:
			return out, &fieldError{path: path + ".endPort", err: errors.New("needs a numeric port")}
		case e < int32(out.Port) || e > 65535:
			return out, &fieldError{path: path + ".endPort", err: fmt.Errorf("%d is not a port in %d-65535", e, out.Port)}
		case e > int32(out.Port):
			out.EndPort = uint16(e)
		}
	}
	return out, nil
}

// npSelector converts a Kubernetes label selector, prefixing every key
// with keyPrefix (for namespace selectors).
func npSelector(path string, ls *metav1.LabelSelector, keyPrefix string) (Selector, error) {
	var reqs []Requirement
	keys := make([]string, 0, len(ls.MatchLabels))
	for k := range ls.MatchLabels {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	add := func(p, key string, op Operator, vals []string) error {
		if errs := validateNPKey(key); errs != nil {
			return &fieldError{path: p, err: errs}
		}
		r := Selector{Requirements: []Requirement{{Key: keyPrefix + key, Operator: op, Values: vals}}}.Canonical().Requirements[0]
		if len(r.Values) == 0 {
			r.Values = nil
		}
		if err := r.validate(); err != nil {
			return &fieldError{path: p, err: err}
		}
		reqs = append(reqs, r)
		return nil
	}
	for _, k := range keys {
		if err := add(fmt.Sprintf("%s.matchLabels[%q]", path, k), k, OpIn, []string{ls.MatchLabels[k]}); err != nil {
			return Selector{}, err
		}
	}
	for i, e := range ls.MatchExpressions {
		op := Operator(e.Operator)
		if err := add(fmt.Sprintf("%s.matchExpressions[%d]", path, i), e.Key, op, e.Values); err != nil {
			return Selector{}, err
		}
	}
	return Selector{Requirements: reqs}.Canonical(), nil
}

// validateNPKey rejects keys a Kubernetes label selector cannot hold before
// any prefix is added (source prefixes are a Cilium notion).
func validateNPKey(key string) error {
	if strings.Contains(key, ":") {
		return fmt.Errorf("invalid label key %q", key)
	}
	return validateKey(key)
}
