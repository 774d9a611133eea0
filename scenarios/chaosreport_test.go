package scenarios

import (
	"bufio"
	"bytes"
	"encoding/json"
	"strings"
	"testing"
)

func chaosReport() *Report {
	return &Report{Scenario: "c", Seed: 3, DurationSeconds: 30,
		Streams: []Stream{{Name: "s1", From: "c1/x", URL: "http://svc", StartSeconds: 0, BucketSeconds: 1,
			Buckets: []Bucket{{Responses: map[string]int{"c1": 5}}, {Errors: 5}}}},
		Steps: []StepReport{{Name: "chaos", Action: "chaos", StartSeconds: 1, Chaos: &ChaosReport{Seed: 3, Planned: 2,
			Faults: []FaultReport{
				{Index: 1, Kind: "partition", Targets: "[[c1] [c2]] both", StartSeconds: 2, EndSeconds: 5, ConvergeSeconds: 1.5, Passed: true,
					Outages: []OutageReport{{Stream: "s1", Seconds: 0.4, Requests: 60, Errors: 8}}},
				{Index: 2, Kind: "stop", Targets: "apiserver c2", StartSeconds: 8, EndSeconds: 12, ConvergeSeconds: -1,
					Outages: []OutageReport{{Stream: "s1", Seconds: 4, Requests: 80, Errors: 70}}, Message: "too long"},
			},
			Shrink: &ShrinkReport{Replays: 3, Seconds: 40, FaultsBefore: 2, FaultsAfter: 1, Steps: 6, Message: "too long"}}}}}
}

// TestHistory: history.jsonl holds every fault's start and end and every
// observation, one JSON object a line, in time order.
func TestHistory(t *testing.T) {
	var b bytes.Buffer
	if err := chaosReport().WriteHistory(&b); err != nil {
		t.Fatal(err)
	}
	var types []string
	last := -1.0
	sc := bufio.NewScanner(&b)
	for sc.Scan() {
		var e HistoryEntry
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			t.Fatalf("line %q: %v", sc.Text(), err)
		}
		if e.Seconds < last {
			t.Errorf("line %q is before the previous one", sc.Text())
		}
		last = e.Seconds
		types = append(types, e.Type+"/"+string(rune('0'+e.Fault)))
	}
	want := "fault-start/1 fault-end/1 outage/1 converge/1 fault-start/2 fault-end/2 outage/2 converge/2"
	if got := strings.Join(types, " "); got != want {
		t.Errorf("history %s, want %s", got, want)
	}
}

// TestChaosHTML: report.html draws each fault as a band on every
// timeline and lists the faults and the shrinking.
func TestChaosHTML(t *testing.T) {
	var b bytes.Buffer
	if err := chaosReport().WriteHTML(&b); err != nil {
		t.Fatal(err)
	}
	html := b.String()
	for _, want := range []string{`class="band partition"`, `class="band stop failed"`, "Chaos faults",
		"fault 2: stop apiserver c2", "shrunk in 3 replays", "did not converge"} {
		if !strings.Contains(html, want) {
			t.Errorf("report.html lacks %q", want)
		}
	}
}
