package scenarios

import (
	"bytes"
	"strings"
	"testing"
)

func TestCompare(t *testing.T) {
	sim := &Report{Scenario: "failover", Target: "sim", Passed: true, BringUpSeconds: 1.5, DurationSeconds: 7.2,
		Steps: []StepReport{
			{Name: "clients reach both", Action: "curl", Passed: true, HeldAfterSeconds: 0.02, Responses: map[string]int{"cluster1": 54, "cluster2": 46}},
			{Name: "scale to zero", Action: "scale", Passed: true, HeldAfterSeconds: 1.1},
		}, Final: FinalReport{Passed: true, Seconds: 0.3}}
	kind := &Report{Scenario: "failover", Target: "kind", Passed: false, BringUpSeconds: 20, DurationSeconds: 31,
		Steps: []StepReport{
			{Name: "clients reach both", Action: "curl", Passed: true, HeldAfterSeconds: 0.5, Responses: map[string]int{"cluster1": 50, "cluster2": 49}, Errors: 1, MaxOutageSeconds: 0.5},
			{Name: "scale to zero", Action: "scale", Passed: false, HeldAfterSeconds: 10},
		}, Final: FinalReport{Passed: true, Seconds: 2}}
	var b bytes.Buffer
	if err := Compare(&b, sim, kind); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	for _, want := range []string{"sim", "kind", "bring-up", "1.50s", "20.00s", "[1] clients reach both (curl)",
		"pass 0.02s, 100 req, 0 err", "pass 0.50s, 100 req, 1 err, outage 0.50s", "FAIL 10.00s", "FAIL 31.00s"} {
		if !strings.Contains(out, want) {
			t.Errorf("comparison lacks %q:\n%s", want, out)
		}
	}
	if err := Compare(&b, sim); err == nil {
		t.Error("one report compared")
	}
	other := *kind
	other.Steps = other.Steps[:1]
	if err := Compare(&b, sim, &other); err == nil || !strings.Contains(err.Error(), "steps") {
		t.Errorf("reports with other steps: %v", err)
	}
	other = *kind
	other.Scenario = "affinity"
	if err := Compare(&b, sim, &other); err == nil {
		t.Error("reports of two scenarios compared")
	}
}
