package policy

import (
	"cmp"
	"fmt"
	"slices"
	"strings"

	"k8s.io/apimachinery/pkg/util/validation"
)

// Operator is a label selector operator.
type Operator string

// Label selector operators, as Kubernetes spells them.
const (
	OpIn           Operator = "In"
	OpNotIn        Operator = "NotIn"
	OpExists       Operator = "Exists"
	OpDoesNotExist Operator = "DoesNotExist"
)

// Requirement is one term of a Selector.
type Requirement struct {
	// Key is a label key without source prefix, or reserved:<name>.
	Key      string
	Operator Operator
	// Values for In and NotIn, sorted and without duplicates.
	Values []string
}

// Selector selects identities by labels: all requirements must hold. The
// empty selector selects every identity. matchLabels k: v is the
// requirement k In (v).
type Selector struct {
	// Requirements in canonical order (see Canonical).
	Requirements []Requirement
}

// Matches reports whether labels satisfy every requirement, with
// Kubernetes semantics (NotIn and DoesNotExist hold for a missing key).
func (s Selector) Matches(labels map[string]string) bool {
	for _, r := range s.Requirements {
		v, ok := labels[r.Key]
		switch r.Operator {
		case OpIn:
			if !ok || !slices.Contains(r.Values, v) {
				return false
			}
		case OpNotIn:
			if ok && slices.Contains(r.Values, v) {
				return false
			}
		case OpExists:
			if !ok {
				return false
			}
		case OpDoesNotExist:
			if ok {
				return false
			}
		default:
			return false
		}
	}
	return true
}

// HasKey reports whether any requirement is about key.
func (s Selector) HasKey(key string) bool {
	for _, r := range s.Requirements {
		if r.Key == key {
			return true
		}
	}
	return false
}

// hasKeyPrefix reports whether any requirement key starts with prefix.
func (s Selector) hasKeyPrefix(prefix string) bool {
	for _, r := range s.Requirements {
		if strings.HasPrefix(r.Key, prefix) {
			return true
		}
	}
	return false
}

// with returns a canonical copy of s with r added.
func (s Selector) with(r ...Requirement) Selector {
	out := Selector{Requirements: make([]Requirement, 0, len(s.Requirements)+len(r))}
	out.Requirements = append(out.Requirements, s.Requirements...)
	out.Requirements = append(out.Requirements, r...)
	return out.Canonical()
}

// Canonical returns s with values sorted and deduplicated, requirements
// sorted by key, operator and values, and duplicate requirements removed,
// so that equal selectors compare equal.
func (s Selector) Canonical() Selector {
	reqs := make([]Requirement, 0, len(s.Requirements))
	for _, r := range s.Requirements {
		var vals []string
		if len(r.Values) > 0 {
			vals = slices.Clone(r.Values)
			slices.Sort(vals)
			vals = slices.Compact(vals)
		}
		reqs = append(reqs, Requirement{Key: r.Key, Operator: r.Operator, Values: vals})
	}
	slices.SortFunc(reqs, compareRequirement)
	reqs = slices.CompactFunc(reqs, func(a, b Requirement) bool { return compareRequirement(a, b) == 0 })
	if len(reqs) == 0 {
		reqs = nil
	}
	return Selector{Requirements: reqs}
}

func compareRequirement(a, b Requirement) int {
	return cmp.Or(cmp.Compare(a.Key, b.Key), cmp.Compare(a.Operator, b.Operator), slices.Compare(a.Values, b.Values))
}

// String renders s like a Kubernetes label selector; it is also the key
// under which the Repository caches the selector.
func (s Selector) String() string {
	if len(s.Requirements) == 0 {
		return "<all>"
	}
	var b strings.Builder
	for i, r := range s.Requirements {
		if i > 0 {
			b.WriteByte(',')
		}
		switch r.Operator {
		case OpExists:
			b.WriteString(r.Key)
		case OpDoesNotExist:
			b.WriteString("!" + r.Key)
		default:
			fmt.Fprintf(&b, "%s %s (%s)", r.Key, strings.ToLower(string(r.Operator)), strings.Join(r.Values, ","))
		}
	}
	return b.String()
}

func (s Selector) validate() error {
	for _, r := range s.Requirements {
		if err := r.validate(); err != nil {
			return err
		}
	}
	return nil
}

func (r Requirement) validate() error {
	if err := validateKey(r.Key); err != nil {
		return err
	}
	switch r.Operator {
	case OpIn, OpNotIn:
		if len(r.Values) == 0 {
			return fmt.Errorf("key %q: operator %s needs values", r.Key, r.Operator)
		}
		for _, v := range r.Values {
			if errs := validation.IsValidLabelValue(v); len(errs) > 0 {
				return fmt.Errorf("key %q: invalid value %q: %s", r.Key, v, strings.Join(errs, "; "))
			}
		}
	case OpExists, OpDoesNotExist:
		if len(r.Values) > 0 {
			return fmt.Errorf("key %q: operator %s takes no values", r.Key, r.Operator)
		}
	default:
		return fmt.Errorf("key %q: unknown operator %q (want In, NotIn, Exists or DoesNotExist)", r.Key, r.Operator)
	}
	return nil
}

// validateKey checks a canonical key: a Kubernetes label key, or
// reserved:<name of a reserved identity>.
func validateKey(key string) error {
	if name, ok := strings.CutPrefix(key, ReservedPrefix); ok {
		for _, n := range reservedNames {
			if n == name {
				return nil
			}
		}
		return fmt.Errorf("key %q: unknown reserved label (want one of host, world, unmanaged, health, init, remote-node, kube-apiserver)", key)
	}
	// Namespace labels are label keys behind a fixed prefix; the prefix
	// may push them past the length limit of a plain key.
	if ns, ok := strings.CutPrefix(key, LabelNamespaceLabelsPrefix); ok {
		if errs := validation.IsQualifiedName(ns); len(errs) > 0 {
			return fmt.Errorf("invalid namespace label key %q: %s", ns, strings.Join(errs, "; "))
		}
		return nil
	}
	if errs := validation.IsQualifiedName(key); len(errs) > 0 {
		return fmt.Errorf("invalid label key %q: %s", key, strings.Join(errs, "; "))
	}
	return nil
}

// canonicalKey strips the label source of a selector key written in
// Cilium's source:key form. k8s:, any: and unspec: are dropped (identity
// labels are stored without source); reserved: is kept, it selects reserved
// identities; other sources are unsupported.
func canonicalKey(key string) (string, error) {
	src, rest, ok := strings.Cut(key, ":")
	if !ok {
		return key, nil
	}
	switch src {
	case "k8s", "any", "unspec":
		if strings.Contains(rest, ":") {
			return "", fmt.Errorf("invalid label key %q: more than one source prefix", key)
		}
		return rest, nil
	case "reserved":
		return key, nil
	}
	return "", fmt.Errorf("label source %q in key %q: %w (use k8s:, any: or reserved:)", src, key, ErrUnsupported)
}
