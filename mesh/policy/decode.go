package policy

import (
	"encoding/json"
	"fmt"
	"math"
	"slices"
	"strconv"
)

// DecodeError is what the decoders return: which policy, which field, and
// why. errors.Is(err, ErrUnsupported) tells a feature meshbed does not
// enforce from malformed input.
type DecodeError struct {
	// Ref is as much of the policy's name as could be read.
	Ref Ref
	// Path is the offending field, e.g. spec.egress[0].toPorts[0].rules.http;
	// empty when the object as a whole is at fault.
	Path string
	Err  error
}

func (e *DecodeError) Error() string {
	name := e.Ref.Name
	if name == "" {
		name = "<unnamed>"
	} else if e.Ref.Namespace != "" {
		name = e.Ref.Namespace + "/" + name
	}
	if e.Path == "" {
		return fmt.Sprintf("decode %s %s: %v", e.Ref.Source, name, e.Err)
	}
	return fmt.Sprintf("decode %s %s: %s: %v", e.Ref.Source, name, e.Path, e.Err)
}

func (e *DecodeError) Unwrap() error { return e.Err }

// fieldError is a decode failure at a path, before the policy name is
// attached.
type fieldError struct {
	path string
	err  error
}

func (e *fieldError) Error() string { return e.path + ": " + e.err.Error() }
func (e *fieldError) Unwrap() error { return e.err }

// value is a node of a generic JSON tree (from encoding/json with UseNumber,
// or a Kubernetes unstructured object) and the path that leads to it.
type value struct {
	path string
	v    any
}

func (v value) errorf(format string, args ...any) error {
	return &fieldError{path: v.path, err: fmt.Errorf(format, args...)}
}

func (v value) unsupported(what string) error {
	return &fieldError{path: v.path, err: fmt.Errorf("%s: %w", what, ErrUnsupported)}
}

func (v value) child(name string, x any) value {
	if v.path == "" {
		return value{path: name, v: x}
	}
	return value{path: v.path + "." + name, v: x}
}

func kindOf(x any) string {
	switch x.(type) {
	case nil:
		return "null"
	case map[string]any:
		return "an object"
	case []any:
		return "a list"
	case string:
		return "a string"
	case bool:
		return "a boolean"
	case json.Number, float64, float32, int, int32, int64, uint32, uint64:
		return "a number"
	}
	return fmt.Sprintf("a %T", x)
}

// object is a JSON object whose fields are consumed one by one; whatever is
// left is unknown and rejected by done.
type object struct {
	value
	m    map[string]any
	used map[string]bool
}

func (v value) object() (*object, error) {
	m, ok := v.v.(map[string]any)
	if !ok {
		return nil, v.errorf("must be an object, not %s", kindOf(v.v))
	}
	return &object{value: v, m: m, used: make(map[string]bool, len(m))}, nil
}

// get returns a field; an explicit null counts as absent, as in Kubernetes.
func (o *object) get(name string) (value, bool) {
	x, ok := o.m[name]
	if !ok {
		return value{}, false
	}
	o.used[name] = true
	if x == nil {
		return value{}, false
	}
	return o.child(name, x), true
}

// ignore marks fields as known without reading them.
func (o *object) ignore(names ...string) {
	for _, n := range names {
		o.used[n] = true
	}
}

// reject fails if any of the named fields is present and not null.
func (o *object) reject(what map[string]string) error {
	names := make([]string, 0, len(what))
	for n := range what {
		names = append(names, n)
	}
	slices.Sort(names)
	for _, n := range names {
		if f, ok := o.get(n); ok {
			return f.unsupported(what[n])
		}
	}
	return nil
}

// done rejects the first (in sorted order) field nobody asked for.
func (o *object) done() error {
	var unknown []string
	for k := range o.m {
		if !o.used[k] {
			unknown = append(unknown, k)
		}
	}
	if len(unknown) == 0 {
		return nil
	}
	slices.Sort(unknown)
	return o.child(unknown[0], nil).errorf("unknown field")
}

func (v value) str() (string, error) {
	s, ok := v.v.(string)
	if !ok {
		return "", v.errorf("must be a string, not %s", kindOf(v.v))
	}
	return s, nil
}

func (v value) boolean() (bool, error) {
	b, ok := v.v.(bool)
	if !ok {
		return false, v.errorf("must be a boolean, not %s", kindOf(v.v))
	}
	return b, nil
}

func (v value) integer() (int64, error) {
	switch n := v.v.(type) {
	case json.Number:
		i, err := strconv.ParseInt(string(n), 10, 64)
		if err != nil {
			return 0, v.errorf("must be an integer, not %s", n)
		}
		return i, nil
	case int64:
		return n, nil
	case int:
		return int64(n), nil
	case int32:
		return int64(n), nil
	case float64:
		if n != math.Trunc(n) || math.Abs(n) > 1<<53 {
			return 0, v.errorf("must be an integer, not %v", n)
		}
		return int64(n), nil
	}
	return 0, v.errorf("must be an integer, not %s", kindOf(v.v))
}

func (v value) list() ([]value, error) {
	l, ok := v.v.([]any)
	if !ok {
		return nil, v.errorf("must be a list, not %s", kindOf(v.v))
	}
	out := make([]value, len(l))
	for i, x := range l {
		out[i] = value{path: fmt.Sprintf("%s[%d]", v.path, i), v: x}
	}
	return out, nil
}

// strings decodes a list of strings.
func (v value) strings() ([]string, error) {
	l, err := v.list()
	if err != nil {
		return nil, err
	}
	out := make([]string, 0, len(l))
	for _, e := range l {
		s, err := e.str()
		if err != nil {
			return nil, err
		}
		out = append(out, s)
	}
	return out, nil
}
