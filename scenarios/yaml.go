package scenarios

import (
	"bytes"
	"encoding/json"
	"fmt"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"sigs.k8s.io/yaml"
)

// document is one YAML document of a file and the line it starts on.
type document struct {
	data      []byte
	firstLine int
}

// splitDocuments splits a multi-document YAML stream at "---" lines and
// drops documents that hold nothing but blank lines and comments.
func splitDocuments(data []byte) []document {
	var docs []document
	var cur bytes.Buffer
	start := 1
	flush := func() {
		if !blankYAML(cur.Bytes()) {
			docs = append(docs, document{data: bytes.Clone(cur.Bytes()), firstLine: start})
		}
		cur.Reset()
	}
	lines := bytes.SplitAfter(data, []byte("\n"))
	for i, line := range lines {
		trimmed := bytes.TrimRight(line, "\r\n")
		if rest, ok := bytes.CutPrefix(trimmed, []byte("---")); ok &&
			(len(rest) == 0 || rest[0] == ' ' || rest[0] == '\t') {
			flush()
			start = i + 1
			// Content after the marker ("--- {a: 1}") belongs to the
			// document; keep it on the marker's line.
			cur.Write(rest)
			cur.WriteByte('\n')
			continue
		}
		if bytes.Equal(trimmed, []byte("...")) {
			continue
		}
		cur.Write(line)
	}
	flush()
	return docs
}

func blankYAML(b []byte) bool {
	for line := range bytes.Lines(b) {
		line = bytes.TrimSpace(line)
		if len(line) > 0 && line[0] != '#' {
			return false
		}
	}
	return true
}

var yamlLine = regexp.MustCompile(`line (\d+)`)

// decodeYAML converts one YAML document to a generic JSON value (objects are
// map[string]any, numbers json.Number). Duplicate keys are errors. Line
// numbers in errors are shifted to the document's place in its file.
func decodeYAML(doc document) (any, error) {
	j, err := yaml.YAMLToJSONStrict(doc.data)
	if err != nil {
		msg := strings.TrimPrefix(err.Error(), "error converting YAML to JSON: ")
		msg = yamlLine.ReplaceAllStringFunc(msg, func(m string) string {
			n, _ := strconv.Atoi(strings.TrimPrefix(m, "line "))
			return fmt.Sprintf("line %d", n+doc.firstLine-1)
		})
		return nil, fmt.Errorf("invalid YAML: %s", msg)
	}
	dec := json.NewDecoder(bytes.NewReader(j))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, fmt.Errorf("invalid YAML: %w", err)
	}
	return v, nil
}

// describe names a generic value's type for error messages.
func describe(v any) string {
	switch v := v.(type) {
	case nil:
		return "nothing (null)"
	case string:
		return fmt.Sprintf("the string %q", v)
	case json.Number:
		return "the number " + v.String()
	case bool:
		return fmt.Sprintf("%t (quote it if you meant the string)", v)
	case []any:
		return "a list"
	case map[string]any:
		return "an object"
	}
	return fmt.Sprintf("%T", v)
}

// decoder walks the generic value of a scenario file, collecting every
// problem instead of stopping at the first.
type decoder struct {
	file string
	errs []error
	// step and stepName give errors their step context while a step is
	// decoded.
	step     int
	stepName string
}

func (d *decoder) errorf(field, format string, args ...any) {
	d.errs = append(d.errs, &FieldError{
		File: d.file, Step: d.step, StepName: d.stepName, Field: field,
		Msg: fmt.Sprintf(format, args...),
	})
}

// object returns v as an object whose keys are all in keys, reporting
// unknown keys. It returns nil (after reporting) when v is not an object.
func (d *decoder) object(field string, v any, keys ...string) map[string]any {
	m, ok := v.(map[string]any)
	if !ok {
		d.errorf(field, "must be an object, got %s", describe(v))
		return nil
	}
	var unknown []string
	for k := range m {
		if !contains(keys, k) {
			unknown = append(unknown, k)
		}
	}
	sort.Strings(unknown)
	for _, k := range unknown {
		d.errorf(join(field, k), "unknown field%s", suggest(k, keys))
	}
	return m
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// get returns m[key]; an explicit null counts as absent.
func get(m map[string]any, key string) (any, bool) {
	v, ok := m[key]
	return v, ok && v != nil
}

// required returns m[key], reporting it missing.
func (d *decoder) required(field string, m map[string]any, key string) (any, bool) {
	v, ok := get(m, key)
	if !ok {
		d.errorf(join(field, key), "required")
	}
	return v, ok
}

func (d *decoder) str(field string, v any) (string, bool) {
	s, ok := v.(string)
	if !ok {
		d.errorf(field, "must be a string, got %s", describe(v))
	}
	return s, ok
}

// nonEmpty is str that also rejects "".
func (d *decoder) nonEmpty(field string, v any) (string, bool) {
	s, ok := d.str(field, v)
	if ok && s == "" {
		d.errorf(field, "must not be empty")
		return "", false
	}
	return s, ok
}

func (d *decoder) integer(field string, v any, lo, hi int64) (int64, bool) {
	n, ok := v.(json.Number)
	if !ok {
		d.errorf(field, "must be a whole number, got %s", describe(v))
		return 0, false
	}
	i, err := n.Int64()
	if err != nil {
		d.errorf(field, "must be a whole number, got %s", n)
		return 0, false
	}
	if i < lo || i > hi {
		d.errorf(field, "%d is out of range %d..%d", i, lo, hi)
		return 0, false
	}
	return i, true
}

func (d *decoder) boolean(field string, v any) (bool, bool) {
	b, ok := v.(bool)
	if !ok {
		d.errorf(field, "must be true or false, got %s", describe(v))
	}
	return b, ok
}

func (d *decoder) list(field string, v any) ([]any, bool) {
	l, ok := v.([]any)
	if !ok {
		d.errorf(field, "must be a list, got %s", describe(v))
	}
	return l, ok
}

// duration parses a positive duration ("5s"); zero is rejected too unless
// allowZero.
func (d *decoder) duration(field string, v any, allowZero bool) (time.Duration, bool) {
	if n, ok := v.(json.Number); ok {
		d.errorf(field, "%s has no unit: write e.g. \"%ss\" or \"%sms\"", n, n, n)
		return 0, false
	}
	s, ok := d.str(field, v)
	if !ok {
		return 0, false
	}
	dur, err := ParseDuration(s)
	if err != nil {
		d.errorf(field, "%v", err)
		return 0, false
	}
	if dur == 0 && !allowZero {
		d.errorf(field, "must be longer than zero")
		return 0, false
	}
	return dur, true
}

// enum returns m[key], which must be one of values, or def when absent;
// ok is false when it was present and invalid.
func (d *decoder) enum(field string, m map[string]any, key, def string, values ...string) (string, bool) {
	v, ok := get(m, key)
	if !ok {
		return def, true
	}
	s, ok := d.str(join(field, key), v)
	if !ok {
		return def, false
	}
	if !contains(values, s) {
		d.errorf(join(field, key), "%q is not one of %s", s, strings.Join(values, ", "))
		return def, false
	}
	return s, true
}

// oneOrList accepts a single object or a list of them.
func oneOrList(v any) []any {
	if l, ok := v.([]any); ok {
		return l
	}
	return []any{v}
}
