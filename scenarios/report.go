package scenarios

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"sort"
	"time"

	"github.com/meshbed/meshbed/mesh/event"
)

// Report is the result of a scenario run, written as report.json. The field
// names are those of docs/scenarios.md; fields beyond it are marked below.
//
// Times: BringUpSeconds and DurationSeconds are wall-clock lengths.
// StepReport.StartSeconds and the Stream times are on the run clock, which
// starts (at 0) when the first step starts, after bring-up.
type Report struct {
	Scenario string `json:"scenario"`
	// Target is where it ran: "sim" or "kind".
	Target          string       `json:"target"`
	Passed          bool         `json:"passed"`
	Seed            int64        `json:"seed"`
	BringUpSeconds  float64      `json:"bringUpSeconds"`
	DurationSeconds float64      `json:"durationSeconds"`
	Steps           []StepReport `json:"steps"`
	Final           FinalReport  `json:"final"`
	// Streams is not in docs/scenarios.md: the bucketed record of every traffic
	// stream, which report.html draws. Omitted when there are none.
	Streams []Stream `json:"streams,omitempty"`
	// Warnings is not in docs/scenarios.md: limitations the mesh reported while
	// the scenario ran, such as a policy enforced with less than it says
	// (DNS rules enforced at L4 only). Omitted when there are none.
	Warnings []string `json:"warnings,omitempty"`
	// Repro is not in report.json: repro.yaml, the shrunk schedule of a
	// failed chaos step as a scenario file (nil when nothing was shrunk).
	Repro []byte `json:"-"`
	// Substitutions are the images a target replaced by meshbed's own
	// (Kind: no registry), one line each. Omitted when there are none.
	Substitutions []string `json:"substitutions,omitempty"`
	// Events are the mesh's decision events recorded during the run
	// (docs/scenarios.md, "Events"), in time order; omitted when the
	// target collects none.
	Events []EventRecord `json:"events,omitempty"`
	// Explanations is not in docs/scenarios.md: one line per decision after
	// each fault, recovery or change step, built from Events and Streams
	// (Explain); omitted when there are no events.
	Explanations []Explanation `json:"explanations,omitempty"`
}

// EventRecord is one decision event of the run: the event as the
// component recorded it, and its time on the run clock.
type EventRecord struct {
	Seconds float64 `json:"seconds"`
	event.Event
}

// StepReport is the result of one step.
type StepReport struct {
	Name string `json:"name"`
	// Action is the action's key ("curl", "stopTraffic").
	Action string `json:"action"`
	Passed bool   `json:"passed"`
	// Seconds is how long the action took (its last attempt, when retried
	// under within).
	Seconds float64 `json:"seconds"`
	// HeldAfterSeconds is the time from the step's start until every
	// expectation held (for a failed step: how long it tried).
	HeldAfterSeconds float64 `json:"heldAfterSeconds"`
	// Responses counts successful responses by answering cluster (curl,
	// stopTraffic); written as {} for other actions.
	Responses map[string]int `json:"responses"`
	// Errors counts failed requests.
	Errors           int     `json:"errors"`
	MaxOutageSeconds float64 `json:"maxOutageSeconds"`
	// Message says why the step failed, with the measured figures; empty
	// when it passed.
	Message string `json:"message"`
	// StartSeconds is not in docs/scenarios.md: when the step started, on the
	// run clock, for the step markers of report.html's timelines.
	StartSeconds float64 `json:"startSeconds"`
	// Chaos is a chaos step's faults and observations (chaosreport.go).
	Chaos *ChaosReport `json:"chaos,omitempty"`
}

// FinalReport is the result of the final convergence check.
type FinalReport struct {
	Passed  bool    `json:"passed"`
	Seconds float64 `json:"seconds"`
	// Message is not in docs/scenarios.md: what was lost or stale when the check
	// failed. Omitted when empty.
	Message string `json:"message,omitempty"`
}

// Stream is the timeline of one traffic stream: requests counted in
// fixed-width buckets by the time they were sent.
type Stream struct {
	Name string `json:"name"`
	// From is the source workload as written (cluster/deployment).
	From string `json:"from"`
	URL  string `json:"url"`
	// StartSeconds is when the first bucket begins, on the run clock.
	StartSeconds  float64  `json:"startSeconds"`
	BucketSeconds float64  `json:"bucketSeconds"`
	Buckets       []Bucket `json:"buckets"`
}

// Bucket counts the requests of one time slice of a stream.
type Bucket struct {
	// Responses counts successful responses by answering cluster.
	Responses map[string]int `json:"responses,omitempty"`
	Errors    int            `json:"errors,omitempty"`
}

// Total is the number of requests in the bucket.
func (b Bucket) Total() int {
	n := b.Errors
	for _, c := range b.Responses {
		n += c
	}
	return n
}

// NewStream begins the record of a stream that starts at start on the run
// clock, counting requests in buckets of width bucket (500ms if zero).
// A Stream is not safe for concurrent use.
func NewStream(name string, from Workload, url string, start, bucket time.Duration) *Stream {
	if bucket <= 0 {
		bucket = 500 * time.Millisecond
	}
	return &Stream{Name: name, From: from.String(), URL: url,
		StartSeconds: start.Seconds(), BucketSeconds: bucket.Seconds()}
}

// Record counts one request sent at offset at on the run clock; cluster is
// the cluster that answered, or "" when the request failed. Requests sent
// before the stream's start count in the first bucket.
func (s *Stream) Record(at time.Duration, cluster string) {
	i := 0
	if rel := at.Seconds() - s.StartSeconds; rel > 0 {
		i = int(math.Floor(rel / s.BucketSeconds))
	}
	for len(s.Buckets) <= i {
		s.Buckets = append(s.Buckets, Bucket{})
	}
	b := &s.Buckets[i]
	if cluster == "" {
		b.Errors++
		return
	}
	if b.Responses == nil {
		b.Responses = map[string]int{}
	}
	b.Responses[cluster]++
}

// Totals sums the stream's buckets.
func (s *Stream) Totals() (responses map[string]int, errors int) {
	responses = map[string]int{}
	for _, b := range s.Buckets {
		for c, n := range b.Responses {
			responses[c] += n
		}
		errors += b.Errors
	}
	return responses, errors
}

// EndSeconds is when the stream's last bucket ends, on the run clock.
func (s *Stream) EndSeconds() float64 {
	return s.StartSeconds + float64(len(s.Buckets))*s.BucketSeconds
}

// WriteJSON writes r as report.json: indented, with empty lists and maps
// written as [] and {} rather than null.
func (r *Report) WriteJSON(w io.Writer) error {
	out := *r
	if out.Steps == nil {
		out.Steps = []StepReport{}
	}
	out.Steps = append([]StepReport(nil), out.Steps...)
	for i := range out.Steps {
		if out.Steps[i].Responses == nil {
			out.Steps[i].Responses = map[string]int{}
		}
	}
	out.Streams = append([]Stream(nil), out.Streams...)
	for i := range out.Streams {
		if out.Streams[i].Buckets == nil {
			out.Streams[i].Buckets = []Bucket{}
		}
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	if err := enc.Encode(&out); err != nil {
		return fmt.Errorf("write report.json: %w", err)
	}
	return nil
}

// clusters lists every cluster named in r's steps and streams, sorted, so
// that each keeps one colour across the report.
func (r *Report) clusters() []string {
	seen := map[string]bool{}
	for _, s := range r.Steps {
		for c := range s.Responses {
			seen[c] = true
		}
	}
	for _, s := range r.Streams {
		for _, b := range s.Buckets {
			for c := range b.Responses {
				seen[c] = true
			}
		}
	}
	names := make([]string, 0, len(seen))
	for c := range seen {
		names = append(names, c)
	}
	sort.Strings(names)
	return names
}

// WriteDir writes the report into dir: report.json and report.html, and
// history.jsonl for chaos steps and repro.yaml for a shrunk failure.
func (rep *Report) WriteDir(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	files := map[string]func(io.Writer) error{"report.json": rep.WriteJSON, "report.html": rep.WriteHTML}
	if rep.HasChaos() {
		files["history.jsonl"] = rep.WriteHistory
	}
	if rep.Repro != nil {
		files["repro.yaml"] = func(w io.Writer) error { _, err := w.Write(rep.Repro); return err }
	}
	for name, write := range files {
		f, err := os.Create(filepath.Join(dir, name))
		if err != nil {
			return err
		}
		werr := write(f)
		if err := errors.Join(werr, f.Close()); err != nil {
			return fmt.Errorf("write %s: %w", name, err)
		}
	}
	return nil
}
