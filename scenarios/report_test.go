package scenarios

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"
)

// fixedReport is a run of failover.yaml with one failed step, as the engine
// would record it.
func fixedReport() *Report {
	from := Workload{Cluster: "cluster2", Namespace: DefaultNamespace, Deployment: "x-wing"}
	s := NewStream("cluster2-clients", from, "http://rebel-base", 2*time.Second, 500*time.Millisecond)
	// 20 requests a second for 8 seconds: both clusters, then a second of
	// failures while cluster2's backends go away, then cluster1 only.
	for i := range 160 {
		at := 2*time.Second + time.Duration(i)*50*time.Millisecond
		switch {
		case at < 5*time.Second:
			s.Record(at, []string{"cluster1", "cluster2"}[i%2])
		case at < 6*time.Second:
			s.Record(at, "")
		default:
			s.Record(at, "cluster1")
		}
	}
	responses, errs := s.Totals()
	return &Report{
		Scenario: "failover", Target: "sim", Passed: false, Seed: 1, BringUpSeconds: 3.2, DurationSeconds: 11.8,
		Steps: []StepReport{
			{Name: "cluster1 clients reach both clusters", Action: "curl", Passed: true, Seconds: 0.9,
				HeldAfterSeconds: 1.4, Responses: map[string]int{"cluster1": 52, "cluster2": 48}},
			{Name: "steady traffic from cluster2", Action: "traffic", Passed: true, Seconds: 0.01, StartSeconds: 2},
			{Name: "scale cluster2 backends to zero", Action: "scale", Passed: true, Seconds: 0.05,
				HeldAfterSeconds: 2.1, StartSeconds: 4.9},
			{Name: "cluster2 clients fail over to cluster1", Action: "curl", Passed: true, Seconds: 0.4,
				HeldAfterSeconds: 0.4, StartSeconds: 7, Responses: map[string]int{"cluster1": 50}},
			{Name: "no outage while failing over", Action: "stopTraffic", Passed: false, Seconds: 0,
				StartSeconds: 10, Responses: responses, Errors: errs, MaxOutageSeconds: 1.05,
				Message: `maxOutage: 1.05s, want at most 1s; errors: 20 of 160 (12.5%), want "<=5%"`},
		},
		Final:   FinalReport{Passed: true, Seconds: 1.1},
		Streams: []Stream{*s},
	}
}

func TestReportGolden(t *testing.T) {
	r := fixedReport()
	var j, h, p bytes.Buffer
	if err := r.WriteJSON(&j); err != nil {
		t.Fatal(err)
	}
	golden(t, "testdata/report.golden.json", j.Bytes())
	if err := r.WriteHTML(&h); err != nil {
		t.Fatal(err)
	}
	golden(t, "testdata/report.golden.html", h.Bytes())

	sc, err := Load("failover.yaml")
	if err != nil {
		t.Fatal(err)
	}
	pr := NewProgress(&p)
	pr.Begin(sc)
	pr.BringUp(3200*time.Millisecond, nil)
	for i, s := range r.Steps {
		// The report's steps stand for a few of the file's.
		st := sc.Steps[[]int{0, 2, 4, 5, 7}[i]]
		pr.StepStarted(&st)
		pr.StepDone(s)
	}
	pr.Final(r.Final)
	pr.End(r)
	golden(t, "testdata/progress.golden.txt", p.Bytes())
}

func TestProgressBringUpFailure(t *testing.T) {
	var b bytes.Buffer
	NewProgress(&b).BringUp(1500*time.Millisecond, errors.New("create netns: permission denied"))
	want := "bring-up                                                 FAIL  1.50s\n        create netns: permission denied\n"
	if b.String() != want {
		t.Errorf("got %q\nwant %q", b.String(), want)
	}
}

// TestReportJSONFields pins report.json's field names to docs/scenarios.md's,
// plus the documented additions.
func TestReportJSONFields(t *testing.T) {
	var b bytes.Buffer
	if err := fixedReport().WriteJSON(&b); err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Top   map[string]json.RawMessage
		Steps []map[string]json.RawMessage
		Final map[string]json.RawMessage
	}
	if err := json.Unmarshal(b.Bytes(), &doc.Top); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(doc.Top["steps"], &doc.Steps); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(doc.Top["final"], &doc.Final); err != nil {
		t.Fatal(err)
	}
	keys := func(m map[string]json.RawMessage) []string {
		var k []string
		for key := range m {
			k = append(k, key)
		}
		sort.Strings(k)
		return k
	}
	for _, tc := range []struct {
		what string
		got  []string
		want []string
	}{
		{"report", keys(doc.Top), []string{"bringUpSeconds", "durationSeconds", "final", "passed", "scenario", "seed", "steps", "streams", "target"}},
		{"step", keys(doc.Steps[2]), []string{"action", "errors", "heldAfterSeconds", "maxOutageSeconds", "message", "name", "passed", "responses", "seconds", "startSeconds"}},
		{"final", keys(doc.Final), []string{"passed", "seconds"}},
	} {
		if !reflect.DeepEqual(tc.got, tc.want) {
			t.Errorf("%s fields = %v, want %v", tc.what, tc.got, tc.want)
		}
	}
	if string(doc.Steps[2]["responses"]) != "{}" {
		t.Errorf("a scale step's responses = %s, want {}", doc.Steps[2]["responses"])
	}
}

// TestReportReadsDocumentedExample decodes docs/scenarios.md's report.json
// example strictly into Report.
func TestReportReadsDocumentedExample(t *testing.T) {
	const example = `{"scenario":"failover","passed":true,"seed":1,"bringUpSeconds":3.2,"durationSeconds":11.8,
 "steps":[{"name":"...","action":"curl","passed":true,"seconds":0.9,"heldAfterSeconds":1.4,
           "responses":{"cluster1":52,"cluster2":48},"errors":0,"maxOutageSeconds":0,
           "message":""}],
 "final":{"passed":true,"seconds":1.1}}`
	dec := json.NewDecoder(strings.NewReader(example))
	dec.DisallowUnknownFields()
	var r Report
	if err := dec.Decode(&r); err != nil {
		t.Fatal(err)
	}
	if r.Steps[0].Responses["cluster2"] != 48 || r.Final.Seconds != 1.1 || r.BringUpSeconds != 3.2 {
		t.Errorf("decoded %+v", r)
	}
}

func TestReportHTMLSelfContained(t *testing.T) {
	r := fixedReport()
	r.Scenario = `<script>alert("x")</script>`
	r.Steps[0].Name = `</td><img src=x onerror=alert(1)>`
	var b bytes.Buffer
	if err := r.WriteHTML(&b); err != nil {
		t.Fatal(err)
	}
	html := b.String()
	for _, bad := range []string{"<script", "<img", "<link", "<iframe", "@import", "url("} {
		if strings.Contains(html, bad) {
			t.Errorf("report.html contains %q", bad)
		}
	}
	// No tag may load anything.
	if m := regexp.MustCompile(`<[^>]*\s(src|href)=`).FindString(html); m != "" {
		t.Errorf("report.html loads a resource: %s", m)
	}
	for _, want := range []string{"&lt;script&gt;", "<svg", "cluster2-clients", "no outage while failing over", "class=\"failed\""} {
		if !strings.Contains(html, want) {
			t.Errorf("report.html lacks %q", want)
		}
	}
}

func TestStreamRecord(t *testing.T) {
	from := Workload{Cluster: "c1", Namespace: "ns", Deployment: "d"}
	s := NewStream("s", from, "http://x", time.Second, 0)
	if s.From != "c1/ns/d" || s.BucketSeconds != 0.5 {
		t.Fatalf("NewStream: %+v", s)
	}
	for _, r := range []struct {
		at      time.Duration
		cluster string
	}{
		{900 * time.Millisecond, "c1"}, // before the start: first bucket
		{time.Second, "c1"},
		{1499 * time.Millisecond, ""},
		{1500 * time.Millisecond, "c2"},
		{2600 * time.Millisecond, ""}, // leaves an empty bucket at 2.0s
	} {
		s.Record(r.at, r.cluster)
	}
	want := []Bucket{
		{Responses: map[string]int{"c1": 2}, Errors: 1},
		{Responses: map[string]int{"c2": 1}},
		{},
		{Errors: 1},
	}
	if !reflect.DeepEqual(s.Buckets, want) {
		t.Fatalf("buckets = %+v, want %+v", s.Buckets, want)
	}
	responses, errs := s.Totals()
	if !reflect.DeepEqual(responses, map[string]int{"c1": 2, "c2": 1}) || errs != 2 {
		t.Errorf("Totals() = %v, %d", responses, errs)
	}
	if s.EndSeconds() != 3 {
		t.Errorf("EndSeconds() = %v, want 3", s.EndSeconds())
	}
}

// TestWriteDir: a report directory holds report.json (which reads back)
// and report.html, and repro.yaml only for a shrunk failure.
func TestWriteDir(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "out")
	rep := fixedReport()
	rep.Repro = []byte("kind: Scenario\n")
	if err := rep.WriteDir(dir); err != nil {
		t.Fatal(err)
	}
	back, err := ReadReport(filepath.Join(dir, "report.json"))
	if err != nil || back.Scenario != rep.Scenario {
		t.Fatalf("report.json reads back as %+v, %v", back, err)
	}
	for _, f := range []string{"report.html", "repro.yaml"} {
		if fi, err := os.Stat(filepath.Join(dir, f)); err != nil || fi.Size() == 0 {
			t.Errorf("%s: %v", f, err)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "history.jsonl")); err == nil {
		t.Error("history.jsonl written for a report without chaos steps")
	}
}
