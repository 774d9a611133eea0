package scenarios

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Op is a matcher's comparison.
type Op int

const (
	OpEq Op = iota
	OpGE
	OpLE
	OpGT
	OpLT
)

func (o Op) String() string {
	switch o {
	case OpGE:
		return ">="
	case OpLE:
		return "<="
	case OpGT:
		return ">"
	case OpLT:
		return "<"
	}
	return ""
}

// MatchKind says what a Matcher compares.
type MatchKind int

const (
	// MatchCount compares a number of requests.
	MatchCount MatchKind = iota
	// MatchShare compares a share of a total.
	MatchShare
	// MatchAll holds when every request matched and there was at least
	// one (expect.errors: all).
	MatchAll
)

// Matcher is a parsed count or share expectation; see the package
// documentation for its grammar.
type Matcher struct {
	Kind MatchKind
	Op   Op
	// Count is the number compared, for MatchCount.
	Count int
	// MilliPercent is the share compared, for MatchShare, in thousandths of
	// a percent (25% is 25000), so that comparisons are exact integers.
	MilliPercent int64
}

// Match reports whether n out of total satisfies m.
func (m Matcher) Match(n, total int) bool {
	switch m.Kind {
	case MatchAll:
		return total > 0 && n == total
	case MatchShare:
		if total <= 0 {
			// Nothing to share: every share is 0%.
			return compare(m.Op, 0, m.MilliPercent)
		}
		// n/total op p/100000, cross-multiplied to stay exact.
		return compare(m.Op, int64(n)*100000, m.MilliPercent*int64(total))
	}
	return compare(m.Op, int64(n), int64(m.Count))
}

func compare(op Op, a, b int64) bool {
	switch op {
	case OpGE:
		return a >= b
	case OpLE:
		return a <= b
	case OpGT:
		return a > b
	case OpLT:
		return a < b
	}
	return a == b
}

// String formats m in the file's grammar.
func (m Matcher) String() string {
	switch m.Kind {
	case MatchAll:
		return "all"
	case MatchShare:
		p := strconv.FormatInt(m.MilliPercent/1000, 10)
		if frac := m.MilliPercent % 1000; frac != 0 {
			p += strings.TrimRight(fmt.Sprintf(".%03d", frac), "0")
		}
		return m.Op.String() + p + "%"
	}
	return m.Op.String() + strconv.Itoa(m.Count)
}

// maxCount bounds counts so that comparisons never overflow.
const maxCount = 1 << 30

// ParseMatcher parses a count or share matcher ("0", ">=25%", "<=10").
// "all" is accepted only when allowAll is set, shares only when allowShare is.
func ParseMatcher(s string, allowShare, allowAll bool) (Matcher, error) {
	orig := s
	s = strings.TrimSpace(s)
	if s == "all" {
		if !allowAll {
			return Matcher{}, errors.New(`"all" is only valid for expect.errors`)
		}
		return Matcher{Kind: MatchAll}, nil
	}
	var m Matcher
	for _, op := range []struct {
		text string
		op   Op
	}{{">=", OpGE}, {"<=", OpLE}, {"==", OpEq}, {">", OpGT}, {"<", OpLT}, {"=", OpEq}} {
		if rest, ok := strings.CutPrefix(s, op.text); ok {
			m.Op, s = op.op, strings.TrimSpace(rest)
			break
		}
	}
	num, isShare := strings.CutSuffix(s, "%")
	if isShare {
		if !allowShare {
			return Matcher{}, fmt.Errorf("%q: a share is not allowed here, give a count", orig)
		}
		mp, err := parseMilliPercent(num)
		if err != nil {
			return Matcher{}, fmt.Errorf("%q is not a share from 0%% to 100%% (at most three decimals)", orig)
		}
		m.Kind, m.MilliPercent = MatchShare, mp
		return m, nil
	}
	n, err := parseDigits(num)
	if err != nil || n > maxCount {
		want := "a count (10, >=1)"
		if allowShare {
			want = `a count (0, ">=10") or a share ("100%", ">=25%", "<=5%")`
		}
		if allowAll {
			want += ` or "all"`
		}
		return Matcher{}, fmt.Errorf("%q is not %s", orig, want)
	}
	m.Count = int(n)
	return m, nil
}

func parseDigits(s string) (int64, error) {
	if s == "" || strings.TrimLeft(s, "0123456789") != "" {
		return 0, errors.New("not a number")
	}
	return strconv.ParseInt(s, 10, 64)
}

// parseMilliPercent parses "25", "2.5", "33.333" (0 to 100, at most three
// decimals) as thousandths of a percent.
func parseMilliPercent(s string) (int64, error) {
	whole, frac, hasFrac := strings.Cut(s, ".")
	w, err := parseDigits(whole)
	bad := errors.New("not a percentage")
	if err != nil || w > 100 || (hasFrac && (len(frac) == 0 || len(frac) > 3)) {
		return 0, bad
	}
	mp := w * 1000
	if hasFrac {
		f, err := parseDigits(frac)
		if err != nil {
			return 0, bad
		}
		for range 3 - len(frac) {
			f *= 10
		}
		mp += f
	}
	if mp > 100000 {
		return 0, bad
	}
	return mp, nil
}

// Rate is a number of requests per period.
type Rate struct {
	Requests int
	Per      time.Duration
}

// Interval is the time between two requests.
func (r Rate) Interval() time.Duration { return r.Per / time.Duration(r.Requests) }

// String formats r in the file's grammar ("50/s", "5/100ms").
func (r Rate) String() string {
	switch r.Per {
	case time.Second:
		return fmt.Sprintf("%d/s", r.Requests)
	case time.Minute:
		return fmt.Sprintf("%d/m", r.Requests)
	case time.Hour:
		return fmt.Sprintf("%d/h", r.Requests)
	}
	return fmt.Sprintf("%d/%s", r.Requests, r.Per)
}

// ParseRate parses "N/UNIT" or "N/DURATION" ("50/s", "600/m", "5/100ms").
func ParseRate(s string) (Rate, error) {
	n, per, ok := strings.Cut(strings.TrimSpace(s), "/")
	bad := fmt.Errorf("%q is not a rate like \"50/s\", \"600/m\" or \"5/100ms\"", s)
	if !ok {
		return Rate{}, bad
	}
	count, err := parseDigits(strings.TrimSpace(n))
	if err != nil || count < 1 || count > maxCount {
		return Rate{}, bad
	}
	per = strings.TrimSpace(per)
	if per != "" && (per[0] < '0' || per[0] > '9') {
		per = "1" + per // "s" is one second
	}
	d, err := time.ParseDuration(per)
	if err != nil || d <= 0 {
		return Rate{}, bad
	}
	r := Rate{Requests: int(count), Per: d}
	if r.Interval() < MinRateInterval {
		return Rate{}, fmt.Errorf("%q is faster than one request per %s", s, MinRateInterval)
	}
	return r, nil
}

// ParseDuration parses a positive Go duration with a unit.
func ParseDuration(s string) (time.Duration, error) {
	d, err := time.ParseDuration(strings.TrimSpace(s))
	if err != nil {
		if _, numErr := strconv.ParseFloat(strings.TrimSpace(s), 64); numErr == nil {
			return 0, fmt.Errorf("%q has no unit: write e.g. \"%ss\" or \"%sms\"", s, s, s)
		}
		return 0, fmt.Errorf("%q is not a duration like \"5s\" or \"500ms\"", s)
	}
	if d < 0 {
		return 0, fmt.Errorf("%q is negative", s)
	}
	return d, nil
}

// MatchJSONSubset reports whether the JSON document actual contains want: an
// object matches when every key of want is present and matches in actual
// (extra keys are fine), an array when it has the same length and each
// element matches, a number when numerically equal, anything else when equal.
// want is a value as decoded from the scenario (KVStoreExpect.JSON).
func MatchJSONSubset(want any, actual []byte) (bool, error) {
	dec := json.NewDecoder(bytes.NewReader(actual))
	dec.UseNumber()
	var got any
	if err := dec.Decode(&got); err != nil {
		return false, fmt.Errorf("decode value: %w", err)
	}
	return subset(want, got), nil
}

func subset(want, got any) bool {
	switch w := want.(type) {
	case map[string]any:
		g, ok := got.(map[string]any)
		if !ok {
			return false
		}
		for k, wv := range w {
			gv, ok := g[k]
			if !ok || !subset(wv, gv) {
				return false
			}
		}
		return true
	case []any:
		g, ok := got.([]any)
		if !ok || len(g) != len(w) {
			return false
		}
		for i := range w {
			if !subset(w[i], g[i]) {
				return false
			}
		}
		return true
	case json.Number:
		g, ok := got.(json.Number)
		if !ok {
			return false
		}
		if w == g {
			return true
		}
		wf, err1 := w.Float64()
		gf, err2 := g.Float64()
		return err1 == nil && err2 == nil && wf == gf
	}
	return want == got
}
