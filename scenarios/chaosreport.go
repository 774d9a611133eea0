package scenarios

import (
	"encoding/json"
	"fmt"
	"io"
	"sort"
)

// ChaosReport is the result of a chaos step (StepReport.Chaos): the
// schedule as it ran, every fault with what was observed during it.
// Times are on the run clock, like StepReport.StartSeconds.
type ChaosReport struct {
	Seed int64 `json:"seed"`
	// Planned is the number of faults in the schedule; Faults holds those
	// that ran (the step stops at the first broken promise).
	Planned int           `json:"planned"`
	Faults  []FaultReport `json:"faults"`
	// Shrink is set when the step failed and the schedule was shrunk.
	Shrink *ShrinkReport `json:"shrink,omitempty"`
}

// FaultReport is one fault of a chaos step and what it caused.
type FaultReport struct {
	// Index counts the schedule's faults from 1.
	Index   int    `json:"index"`
	Kind    string `json:"kind"`
	Targets string `json:"targets"`
	// Clusters are the clusters the fault acted on.
	Clusters []string `json:"clusters"`
	// PlannedSeconds is the start the schedule drew, from the step's
	// start; HoldSeconds the drawn hold.
	PlannedSeconds float64 `json:"plannedSeconds"`
	HoldSeconds    float64 `json:"holdSeconds"`
	// StartSeconds and EndSeconds: when the fault was injected and healed.
	StartSeconds float64 `json:"startSeconds"`
	EndSeconds   float64 `json:"endSeconds"`
	// ConvergeSeconds is the time from the heal until the final check
	// passed (with faults overlapping: from the last of them healed); -1
	// when it did not within the bound.
	ConvergeSeconds float64 `json:"convergeSeconds"`
	// Outages holds, per traffic stream running during the fault, the
	// longest stretch in which every request failed, from the fault's
	// start until the mesh converged.
	Outages []OutageReport `json:"outages"`
	Passed  bool           `json:"passed"`
	Message string         `json:"message,omitempty"`
}

// OutageReport is what one traffic stream saw during one fault.
type OutageReport struct {
	Stream   string  `json:"stream"`
	From     string  `json:"from"`
	Seconds  float64 `json:"seconds"`
	Requests int     `json:"requests"`
	Errors   int     `json:"errors"`
	// Excused says why the outage does not count against maxOutage (the
	// client's cluster was cut off from every backend); empty when it
	// counts.
	Excused string `json:"excused,omitempty"`
	// BackendsChangedSeconds is the time from the fault's start until the
	// clusters backing the stream's service, in the datapath of its
	// client's cluster, first changed (a withdrawal, polled every 100ms);
	// omitted when they did not change before the mesh converged.
	BackendsChangedSeconds *float64 `json:"backendsChangedSeconds,omitempty"`
}

// ShrinkReport is the shrinking of a failed chaos step's schedule.
type ShrinkReport struct {
	// Replays counts the candidate schedules run, each on a fresh mesh;
	// Seconds is the time they took.
	Replays int     `json:"replays"`
	Seconds float64 `json:"seconds"`
	// FaultsBefore is the failing prefix of the schedule; FaultsAfter
	// the faults of the smallest schedule that still failed.
	FaultsBefore int `json:"faultsBefore"`
	FaultsAfter  int `json:"faultsAfter"`
	// Steps is the number of steps of repro.yaml.
	Steps int `json:"steps"`
	// Message is the failure the smallest schedule reproduced.
	Message string `json:"message"`
	// BudgetSpent is true when shrinking stopped at its time budget.
	BudgetSpent bool `json:"budgetSpent"`
}

// HistoryEntry is one line of history.jsonl: a fault injected or healed,
// or an observation, in time order.
type HistoryEntry struct {
	// Seconds is on the run clock.
	Seconds float64 `json:"t"`
	// Type is "fault-start", "withdraw", "fault-end", "outage" or
	// "converge".
	Type    string `json:"type"`
	Step    int    `json:"step"`
	Fault   int    `json:"fault"`
	Kind    string `json:"kind"`
	Targets string `json:"targets"`
	// Stream and the figures of an outage.
	Stream   string   `json:"stream,omitempty"`
	Outage   *float64 `json:"outageSeconds,omitempty"`
	Requests int      `json:"requests,omitempty"`
	Errors   int      `json:"errors,omitempty"`
	Excused  string   `json:"excused,omitempty"`
	// Converge is the time to converge after the heal, -1 when it did
	// not within the bound.
	Converge *float64 `json:"convergeSeconds,omitempty"`
	Passed   *bool    `json:"passed,omitempty"`
	Message  string   `json:"message,omitempty"`
}

// History lists every fault and observation of r's chaos steps in time
// order.
func (r *Report) History() []HistoryEntry {
	var out []HistoryEntry
	for i, st := range r.Steps {
		if st.Chaos == nil {
			continue
		}
		for _, f := range st.Chaos.Faults {
			base := HistoryEntry{Step: i + 1, Fault: f.Index, Kind: f.Kind, Targets: f.Targets}
			e := base
			e.Seconds, e.Type = f.StartSeconds, "fault-start"
			out = append(out, e)
			for _, o := range f.Outages {
				if o.BackendsChangedSeconds != nil {
					e = base
					e.Seconds, e.Type, e.Stream = f.StartSeconds+*o.BackendsChangedSeconds, "withdraw", o.Stream
					out = append(out, e)
				}
			}
			e = base
			e.Seconds, e.Type = f.EndSeconds, "fault-end"
			out = append(out, e)
			conv := f.EndSeconds + max(f.ConvergeSeconds, 0)
			for _, o := range f.Outages {
				e = base
				sec := o.Seconds
				e.Seconds, e.Type, e.Stream, e.Outage = conv, "outage", o.Stream, &sec
				e.Requests, e.Errors, e.Excused = o.Requests, o.Errors, o.Excused
				out = append(out, e)
			}
			e = base
			c, passed := f.ConvergeSeconds, f.Passed
			e.Seconds, e.Type, e.Converge, e.Passed, e.Message = conv, "converge", &c, &passed, f.Message
			out = append(out, e)
		}
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].Seconds < out[j].Seconds })
	return out
}

// WriteHistory writes History as JSON lines (history.jsonl).
func (r *Report) WriteHistory(w io.Writer) error {
	enc := json.NewEncoder(w)
	for _, e := range r.History() {
		if err := enc.Encode(e); err != nil {
			return fmt.Errorf("write history.jsonl: %w", err)
		}
	}
	return nil
}

// HasChaos reports whether any step of r is a chaos step.
func (r *Report) HasChaos() bool {
	for _, st := range r.Steps {
		if st.Chaos != nil {
			return true
		}
	}
	return false
}

// Note prints one indented line of a running step (a chaos step's faults).
func (p *Progress) Note(line string) { p.printf("        %s\n", line) }
