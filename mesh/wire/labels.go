package wire

import (
	"cmp"
	"fmt"
	"slices"
	"strings"
)

// Label sources and the labels every identity carries.
const (
	LabelSourceK8s = "k8s"

	// PolicyClusterLabel names the cluster of an endpoint; it makes equal
	// pods in two clusters get different identities.
	PolicyClusterLabel = "io.cilium.k8s.policy.cluster"
	// PodNamespaceLabel names the namespace of an endpoint.
	PodNamespaceLabel = "io.kubernetes.pod.namespace"
)

// Label is one identity label, source:key=value.
type Label struct {
	Source, Key, Value string
}

// Labels is a set of labels with unique keys, sorted by key as the wire
// form requires.
type Labels []Label

// NewLabels builds sorted Labels of one source from a map.
func NewLabels(source string, kv map[string]string) Labels {
	l := make(Labels, 0, len(kv))
	for k, v := range kv {
		l = append(l, Label{Source: source, Key: k, Value: v})
	}
	slices.SortFunc(l, compareLabels)
	return l
}

func compareLabels(a, b Label) int {
	return cmp.Or(strings.Compare(a.Key, b.Key), strings.Compare(a.Source, b.Source))
}

// Get returns the value of key.
func (l Labels) Get(key string) (string, bool) {
	for _, lb := range l {
		if lb.Key == key {
			return lb.Value, true
		}
	}
	return "", false
}

// String is the wire form: "source:key=value;" for each label, sorted by
// key, e.g. "k8s:app=x;k8s:io.cilium.k8s.policy.cluster=c1;". Labels with
// an empty source are written without "source:".
func (l Labels) String() string {
	s := slices.Clone(l)
	slices.SortFunc(s, compareLabels)
	var b strings.Builder
	for _, lb := range s {
		if lb.Source != "" {
			b.WriteString(lb.Source)
			b.WriteByte(':')
		}
		b.WriteString(lb.Key)
		b.WriteByte('=')
		b.WriteString(lb.Value)
		b.WriteByte(';')
	}
	return b.String()
}

// Validate checks that the labels can be written and read back unchanged:
// non-empty unique keys, no ';' anywhere, no ':' in the source, no '=' in
// the key.
func (l Labels) Validate() error {
	seen := make(map[string]bool, len(l))
	for _, lb := range l {
		switch {
		case lb.Key == "":
			return fmt.Errorf("label %q: empty key", lb.Source+":"+lb.Key)
		case strings.ContainsAny(lb.Source, ":;="):
			return fmt.Errorf("label source %q: contains ':', ';' or '='", lb.Source)
		case strings.ContainsAny(lb.Key, ";="):
			return fmt.Errorf("label key %q: contains ';' or '='", lb.Key)
		case strings.Contains(lb.Value, ";"):
			return fmt.Errorf("label %q: value contains ';'", lb.Key)
		case lb.Source == "" && strings.Contains(lb.Key, ":"):
			return fmt.Errorf("label key %q: contains ':' without a source", lb.Key)
		case seen[lb.Key]:
			return fmt.Errorf("label key %q: duplicate", lb.Key)
		}
		seen[lb.Key] = true
	}
	return nil
}

// ParseLabels parses the wire form: a sequence of "source:key=value;"
// entries, each terminated by ';', sorted by key, keys unique. The empty
// string is an empty set. The source is what precedes the first ':'.
func ParseLabels(s string) (Labels, error) {
	if s == "" {
		return Labels{}, nil
	}
	if !strings.HasSuffix(s, ";") {
		return nil, fmt.Errorf("labels %q: not terminated by ';'", s)
	}
	parts := strings.Split(s[:len(s)-1], ";")
	l := make(Labels, 0, len(parts))
	for _, p := range parts {
		var lb Label
		kv := p
		if src, rest, ok := strings.Cut(p, ":"); ok {
			// A ':' after the '=' belongs to the value, not a source.
			if !strings.Contains(src, "=") {
				if src == "" {
					return nil, fmt.Errorf("labels %q: entry %q has an empty source", s, p)
				}
				lb.Source, kv = src, rest
			}
		}
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			return nil, fmt.Errorf("labels %q: entry %q has no '='", s, p)
		}
		lb.Key, lb.Value = k, v
		l = append(l, lb)
	}
	if err := l.Validate(); err != nil {
		return nil, fmt.Errorf("labels %q: %w", s, err)
	}
	if !slices.IsSortedFunc(l, compareLabels) {
		return nil, fmt.Errorf("labels %q: not sorted by key", s)
	}
	return l, nil
}
