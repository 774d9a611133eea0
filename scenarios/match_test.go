package scenarios

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestParseMatcher(t *testing.T) {
	for _, tc := range []struct {
		in                   string
		share, all           bool
		want                 Matcher
		wantErr              string
		formatted            string // String() when it differs from in
		allowShare, allowAll bool
	}{
		{in: "0", want: Matcher{Kind: MatchCount}},
		{in: "52", want: Matcher{Kind: MatchCount, Count: 52}},
		{in: ">=10", want: Matcher{Kind: MatchCount, Op: OpGE, Count: 10}},
		{in: "< 3", want: Matcher{Kind: MatchCount, Op: OpLT, Count: 3}, formatted: "<3"},
		{in: "==4", want: Matcher{Kind: MatchCount, Count: 4}, formatted: "4"},
		{in: "=4", want: Matcher{Kind: MatchCount, Count: 4}, formatted: "4"},
		{in: "100%", share: true, want: Matcher{Kind: MatchShare, MilliPercent: 100000}},
		{in: ">=25%", share: true, want: Matcher{Kind: MatchShare, Op: OpGE, MilliPercent: 25000}},
		{in: "<=5%", share: true, want: Matcher{Kind: MatchShare, Op: OpLE, MilliPercent: 5000}},
		{in: ">33.333%", share: true, want: Matcher{Kind: MatchShare, Op: OpGT, MilliPercent: 33333}},
		{in: "2.5%", share: true, want: Matcher{Kind: MatchShare, MilliPercent: 2500}},
		{in: "0%", share: true, want: Matcher{Kind: MatchShare}},
		{in: "all", share: true, all: true, want: Matcher{Kind: MatchAll}},
		{in: "all", share: true, wantErr: `"all" is only valid for expect.errors`},
		{in: "50%", wantErr: "a share is not allowed here"},
		{in: "101%", share: true, wantErr: "is not a share from 0% to 100%"},
		{in: "100.001%", share: true, wantErr: "is not a share"},
		{in: "1.2345%", share: true, wantErr: "is not a share"},
		{in: "5.%", share: true, wantErr: "is not a share"},
		{in: "-5", wantErr: "is not a count"},
		{in: "=>5", wantErr: "is not a count"},
		{in: "", wantErr: "is not a count"},
		{in: "9999999999999", wantErr: "is not a count"},
		{in: "ten", share: true, all: true, wantErr: `or a share ("100%", ">=25%", "<=5%") or "all"`},
	} {
		t.Run(tc.in, func(t *testing.T) {
			m, err := ParseMatcher(tc.in, tc.share, tc.all)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want it to contain %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if m != tc.want {
				t.Fatalf("got %+v, want %+v", m, tc.want)
			}
			want := tc.in
			if tc.formatted != "" {
				want = tc.formatted
			}
			if m.String() != want {
				t.Errorf("String() = %q, want %q", m.String(), want)
			}
		})
	}
}

func TestMatcherMatch(t *testing.T) {
	must := func(s string) Matcher {
		m, err := ParseMatcher(s, true, true)
		if err != nil {
			t.Fatal(err)
		}
		return m
	}
	for _, tc := range []struct {
		m        string
		n, total int
		want     bool
	}{
		{"0", 0, 10, true},
		{"0", 1, 10, false},
		{"52", 52, 100, true},
		{">=10", 9, 100, false},
		{">=10", 10, 100, true},
		{"<3", 3, 10, false},
		{"100%", 50, 50, true},
		{"100%", 49, 50, false},
		{">=25%", 25, 100, true},
		{">=25%", 24, 100, false},
		{">=25%", 1, 4, true},
		{"<=5%", 5, 100, true},
		{"<=5%", 6, 100, false},
		{">33.333%", 1, 3, true}, // 33.3333...% > 33.333%
		{"<33.334%", 1, 3, true},
		{"0%", 0, 0, true},     // no responses: every share is 0%
		{"100%", 0, 0, false},  // ... so 100% does not hold
		{">=25%", 0, 0, false}, //
		{"all", 10, 10, true},
		{"all", 9, 10, false},
		{"all", 0, 0, false}, // no request at all is not a denial
		{"0", 0, 0, true},
	} {
		if got := must(tc.m).Match(tc.n, tc.total); got != tc.want {
			t.Errorf("%s.Match(%d, %d) = %t, want %t", tc.m, tc.n, tc.total, got, tc.want)
		}
	}
}

func TestParseRate(t *testing.T) {
	for _, tc := range []struct {
		in       string
		want     Rate
		interval time.Duration
		str      string
		wantErr  bool
	}{
		{in: "50/s", want: Rate{50, time.Second}, interval: 20 * time.Millisecond},
		{in: "600/m", want: Rate{600, time.Minute}, interval: 100 * time.Millisecond},
		{in: "3600/h", want: Rate{3600, time.Hour}, interval: time.Second},
		{in: "5/100ms", want: Rate{5, 100 * time.Millisecond}, interval: 20 * time.Millisecond},
		{in: "1/2s", want: Rate{1, 2 * time.Second}, interval: 2 * time.Second},
		{in: " 10 / s ", want: Rate{10, time.Second}, interval: 100 * time.Millisecond, str: "10/s"},
		{in: "1000/s", want: Rate{1000, time.Second}, interval: time.Millisecond},
		{in: "1001/s", wantErr: true},
		{in: "50", wantErr: true},
		{in: "0/s", wantErr: true},
		{in: "-1/s", wantErr: true},
		{in: "1.5/s", wantErr: true},
		{in: "5/", wantErr: true},
		{in: "5/0s", wantErr: true},
		{in: "5/-1s", wantErr: true},
		{in: "5/fortnight", wantErr: true},
	} {
		t.Run(tc.in, func(t *testing.T) {
			r, err := ParseRate(tc.in)
			if tc.wantErr {
				if err == nil {
					t.Fatalf("got %v, want an error", r)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if r != tc.want || r.Interval() != tc.interval {
				t.Fatalf("got %+v (interval %s), want %+v (%s)", r, r.Interval(), tc.want, tc.interval)
			}
			str := tc.in
			if tc.str != "" {
				str = tc.str
			}
			if r.String() != str {
				t.Errorf("String() = %q, want %q", r.String(), str)
			}
		})
	}
}

func TestParseDuration(t *testing.T) {
	for _, tc := range []struct {
		in      string
		want    time.Duration
		wantErr string
	}{
		{in: "5s", want: 5 * time.Second},
		{in: "500ms", want: 500 * time.Millisecond},
		{in: "1m30s", want: 90 * time.Second},
		{in: "0s", want: 0},
		{in: "5", wantErr: "has no unit"},
		{in: "1.5", wantErr: "has no unit"},
		{in: "-1s", wantErr: "negative"},
		{in: "5 seconds", wantErr: "not a duration"},
	} {
		d, err := ParseDuration(tc.in)
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("%q: err = %v, want %q", tc.in, err, tc.wantErr)
			}
			continue
		}
		if err != nil || d != tc.want {
			t.Errorf("%q: got %s, %v; want %s", tc.in, d, err, tc.want)
		}
	}
}

func TestMatchJSONSubset(t *testing.T) {
	const value = `{"cluster":"c1","clusterID":1,"shared":true,"frontends":{"10.0.1.5":{"http":{"Port":80}}},"list":[1,{"a":2}]}`
	for _, tc := range []struct {
		name string
		want string // as YAML would be written in a scenario
		ok   bool
	}{
		{"empty object", `{}`, true},
		{"one key", `{cluster: c1}`, true},
		{"number", `{clusterID: 1}`, true},
		{"number written as float", `{clusterID: 1.0}`, true},
		{"wrong number", `{clusterID: 2}`, false},
		{"bool", `{shared: true}`, true},
		{"wrong bool", `{shared: false}`, false},
		{"missing key", `{zones: {}}`, false},
		{"nested", `{frontends: {10.0.1.5: {http: {Port: 80}}}}`, true},
		{"nested wrong", `{frontends: {10.0.1.5: {http: {Port: 81}}}}`, false},
		{"list", `{list: [1, {a: 2}]}`, true},
		{"list subset element", `{list: [1, {}]}`, true},
		{"list length", `{list: [1]}`, false},
		{"type mismatch", `{cluster: {name: c1}}`, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			want, err := decodeYAML(document{data: []byte(tc.want), firstLine: 1})
			if err != nil {
				t.Fatal(err)
			}
			got, err := MatchJSONSubset(want, []byte(value))
			if err != nil {
				t.Fatal(err)
			}
			if got != tc.ok {
				t.Errorf("got %t, want %t", got, tc.ok)
			}
		})
	}
	if _, err := MatchJSONSubset(map[string]any{}, []byte("{not json")); err == nil {
		t.Error("no error for a value that is not JSON")
	}
}

// FuzzDecode feeds arbitrary files to the decoder: it must never panic, and
// every error line must name the file. A file that decodes must have exactly
// one action per step.
func FuzzDecode(f *testing.F) {
	seeds, _ := filepath.Glob("testdata/*.yaml")
	more, _ := filepath.Glob("*.yaml")
	for _, s := range append(seeds, more...) {
		data, err := os.ReadFile(s)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	f.Add([]byte("apiVersion: meshbed.io/v1alpha1\nkind: Scenario\nspec: {steps: [{heal: }]}"))
	// Manifest paths resolve against testdata, which holds real manifests.
	const file = "testdata/fuzz.yaml"
	f.Fuzz(func(t *testing.T, data []byte) {
		sc, err := Parse(file, data)
		if err != nil {
			for line := range strings.SplitSeq(err.Error(), "\n") {
				if !strings.HasPrefix(line, file+": ") {
					t.Fatalf("error line does not name the file: %q", line)
				}
			}
			return
		}
		for _, st := range sc.Steps {
			if st.Action() == nil {
				t.Fatalf("step %d has no action", st.Index)
			}
		}
	})
}

// FuzzValues checks the value grammars: no input panics, and whatever parses
// formats to a string that parses back to the same value.
func FuzzValues(f *testing.F) {
	for _, s := range []string{"0", ">=25%", "<=5%", "100%", "all", "33.333%", "> 7", "50/s", "5/100ms",
		"600/m", "5s", "1m30s", "500ms", "=0", "", "%", "/s"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if m, err := ParseMatcher(s, true, true); err == nil {
			back, err := ParseMatcher(m.String(), true, true)
			if err != nil || back != m {
				t.Fatalf("matcher %q -> %q -> %+v, %v", s, m.String(), back, err)
			}
			_ = m.Match(1, 3)
		}
		if r, err := ParseRate(s); err == nil {
			back, err := ParseRate(r.String())
			if err != nil || back.Interval() != r.Interval() {
				t.Fatalf("rate %q -> %q -> %+v, %v", s, r.String(), back, err)
			}
		}
		if d, err := ParseDuration(s); err == nil && d < 0 {
			t.Fatalf("negative duration from %q", s)
		}
	})
}
