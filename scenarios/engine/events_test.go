package engine

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/meshbed/meshbed/mesh/event"
	"github.com/meshbed/meshbed/scenarios"
)

// eventTarget is a target whose only working part is its event log.
type eventTarget struct {
	limitedTarget
	events []event.Event
}

func (t *eventTarget) Events(_ context.Context, since time.Time) ([]event.Event, error) {
	var out []event.Event
	for _, e := range t.events {
		if !e.Time.Before(since) {
			out = append(out, e)
		}
	}
	return out, nil
}

func TestCheckEvents(t *testing.T) {
	begin := time.Now()
	tgt := &eventTarget{events: []event.Event{
		{Time: begin.Add(-time.Second), Kind: event.RemoteLost, Cluster: "cluster1", Component: "kvstoremesh", Remote: "cluster2"},
		{Time: begin.Add(time.Second), Kind: event.BackendsWithdrawn, Cluster: "cluster1", Node: "node-1", Component: "agent", Remote: "cluster2", Service: "default/rebel-base"},
		{Time: begin.Add(time.Second), Kind: event.BackendsWithdrawn, Cluster: "cluster1", Node: "node-2", Component: "agent", Remote: "cluster2", Service: "default/rebel-base"},
	}}
	r := &runner{t: tgt}
	atLeast := func(n int) scenarios.Matcher {
		return scenarios.Matcher{Kind: scenarios.MatchCount, Op: scenarios.OpGE, Count: n}
	}
	exactly := func(n int) scenarios.Matcher {
		return scenarios.Matcher{Kind: scenarios.MatchCount, Op: scenarios.OpEq, Count: n}
	}
	for _, tc := range []struct {
		name string
		x    scenarios.EventsExpect
		fail string
	}{
		{"both nodes withdrew", scenarios.EventsExpect{Cluster: "cluster1", Kind: event.BackendsWithdrawn, Remote: "cluster2", Count: exactly(2)}, ""},
		{"one node", scenarios.EventsExpect{Cluster: "cluster1", Node: "node-2", Kind: event.BackendsWithdrawn, Count: exactly(1)}, ""},
		{"an event before the step does not count", scenarios.EventsExpect{Cluster: "cluster1", Kind: event.RemoteLost, Count: atLeast(1)},
			"RemoteLost events (cluster cluster1): 0 since the step began, want >=1 (cluster1 recorded: BackendsWithdrawn 2)"},
		{"another cluster", scenarios.EventsExpect{Cluster: "cluster2", Kind: event.BackendsWithdrawn, Count: atLeast(1)}, "(no events in cluster2)"},
		{"none expected", scenarios.EventsExpect{Cluster: "cluster1", Kind: event.BackendsWithdrawn, Service: "default/other", Count: exactly(0)}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fails := r.checkEvents(context.Background(), begin, []scenarios.EventsExpect{tc.x})
			got := strings.Join(fails, "; ")
			if tc.fail == "" && got != "" || tc.fail != "" && !strings.Contains(got, tc.fail) {
				t.Errorf("checkEvents: %q, want failure %q", got, tc.fail)
			}
		})
	}
	// A target without events cannot check them.
	plain := &runner{t: &limitedTarget{}}
	if fails := plain.checkEvents(context.Background(), begin, []scenarios.EventsExpect{{Cluster: "c", Kind: event.RemoteLost}}); len(fails) != 1 || !strings.Contains(fails[0], "not supported") {
		t.Errorf("target without events: %v", fails)
	}
}
