package engine

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/meshbed/meshbed/mesh/event"
	"github.com/meshbed/meshbed/scenarios"
)

// CapExpectEvents: the target collects the mesh's decision events (it
// implements EventSource), for the events expectation.
const CapExpectEvents Capability = "expect/events"

// EventSource is implemented by a target that collects the decision events
// its mesh's components record (docs/scenarios.md, "Events"). A target
// without it runs scenarios without events in the report; a step with an
// events expectation needs CapExpectEvents.
type EventSource interface {
	// Events returns the events recorded at or after since, in time order.
	Events(ctx context.Context, since time.Time) ([]event.Event, error)
}

// checkEvents counts, for each expectation, the events recorded since the
// step began.
func (r *runner) checkEvents(ctx context.Context, since time.Time, exps []scenarios.EventsExpect) []string {
	src, ok := r.t.(EventSource)
	if !ok {
		return []string{fmt.Sprintf("events: %v %q", ErrUnsupported, r.t.Name())}
	}
	evs, err := src.Events(ctx, since)
	if err != nil {
		return []string{fmt.Sprintf("events: %v", err)}
	}
	var fails []string
	for _, x := range exps {
		n := 0
		for _, e := range evs {
			if x.Matches(e) {
				n++
			}
		}
		if !x.Count.Match(n, n) {
			fails = append(fails, fmt.Sprintf("%s: %d since the step began, want %s%s", x, n, x.Count, seen(evs, x)))
		}
	}
	return fails
}

// seen lists, for a failed events expectation, the kinds the cluster did
// record, so that the message shows what happened instead.
func seen(evs []event.Event, x scenarios.EventsExpect) string {
	counts := map[event.Kind]int{}
	for _, e := range evs {
		if e.Cluster == x.Cluster {
			counts[e.Kind]++
		}
	}
	if len(counts) == 0 {
		return fmt.Sprintf(" (no events in %s)", x.Cluster)
	}
	var parts []string
	for _, k := range event.Kinds {
		if counts[k] > 0 {
			parts = append(parts, fmt.Sprintf("%s %d", k, counts[k]))
		}
	}
	return fmt.Sprintf(" (%s recorded: %s)", x.Cluster, strings.Join(parts, ", "))
}

// collectEvents puts every event recorded since the run began into the
// report, on the run clock.
func (r *runner) collectEvents(ctx context.Context) {
	src, ok := r.t.(EventSource)
	if !ok {
		return
	}
	evs, err := src.Events(ctx, r.start)
	if err != nil {
		return
	}
	r.report.Events = make([]scenarios.EventRecord, 0, len(evs))
	for _, e := range evs {
		r.report.Events = append(r.report.Events, scenarios.EventRecord{Seconds: seconds(e.Time.Sub(r.start)), Event: e})
	}
}

// explain adds the explanations of the finished report.
func (r *runner) explain() {
	r.report.Explanations = r.report.Explain()
}
