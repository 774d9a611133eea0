package scenarios

import (
	"fmt"
	"sort"
	"strings"

	"github.com/meshbed/meshbed/mesh/event"
)

// eventMark is one marker of decision events on a timeline: the events of
// one kind recorded within a few pixels of each other.
type eventMark struct {
	X, Y, Kind, Class, Title string
	Path                     string
}

// eventClass sorts the kinds into what the marker says: a loss (the mesh
// moves traffic away), a recovery, or a change of policy or affinity.
func eventClass(k event.Kind) string {
	switch k {
	case event.RemoteLost, event.BackendsWithdrawn, event.ComponentStopped, event.PolicyRejected:
		return "loss"
	case event.RemoteRestored, event.BackendsRestored, event.ComponentStarted:
		return "recovery"
	}
	return "change"
}

// streamEvents are the events drawn on a stream's timeline: those of the
// cluster its requests start in (whose agents choose the backends), and
// every component's stop and start; bring-up (before the first step) is
// left out.
func streamEvents(s Stream, steps []StepReport, events []EventRecord) []EventRecord {
	if len(steps) == 0 {
		return nil
	}
	cluster, _, _ := strings.Cut(s.From, "/")
	var out []EventRecord
	for _, e := range events {
		if e.Seconds < steps[0].StartSeconds {
			continue
		}
		if e.Cluster == cluster || e.Kind == event.ComponentStopped || e.Kind == event.ComponentStarted {
			out = append(out, e)
		}
	}
	return out
}

// eventMarks places the events of a stream on its timeline: diamonds in
// the upper band of the plot, losses on the first row, recoveries on the
// second, changes on the third; events of one kind closer than 4 units
// share a marker whose tooltip lists them.
func eventMarks(s Stream, steps []StepReport, events []EventRecord, span float64) []eventMark {
	x := func(t float64) float64 { return plotLeft + t/span*plotWidth }
	rows := map[string]float64{"loss": plotTop + 7, "recovery": plotTop + 19, "change": plotTop + 31}
	type key struct {
		kind event.Kind
		slot int
	}
	groups := map[key][]EventRecord{}
	var order []key
	for _, e := range streamEvents(s, steps, events) {
		k := key{e.Kind, int(x(e.Seconds) / 4)}
		if _, ok := groups[k]; !ok {
			order = append(order, k)
		}
		groups[k] = append(groups[k], e)
	}
	sort.SliceStable(order, func(i, j int) bool { return groups[order[i]][0].Seconds < groups[order[j]][0].Seconds })
	var out []eventMark
	for _, k := range order {
		evs := groups[k]
		cl := eventClass(k.kind)
		mx, my := x(evs[0].Seconds), rows[cl]
		var tip []string
		for i, e := range evs {
			if i == 8 {
				tip = append(tip, fmt.Sprintf("… and %d more", len(evs)-i))
				break
			}
			tip = append(tip, describeEvent(e))
		}
		out = append(out, eventMark{
			X: num(mx), Y: num(my), Kind: string(k.kind), Class: cl,
			Path:  fmt.Sprintf("M%s %sl5 5l-5 5l-5 -5z", num(mx), num(my-5)),
			Title: strings.Join(tip, "\n"),
		})
	}
	return out
}

// describeEvent is one line of a marker's tooltip and of the events table.
func describeEvent(e EventRecord) string {
	where := e.Cluster
	if e.Node != "" {
		where += "/" + e.Node
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s: %s %s", secs(e.Seconds), e.Kind, where, e.Component)
	for _, kv := range [][2]string{{"remote", e.Remote}, {"service", e.Service}, {"policy", e.Policy}} {
		if kv[1] != "" {
			fmt.Fprintf(&b, ", %s %s", kv[0], kv[1])
		}
	}
	if e.Message != "" {
		fmt.Fprintf(&b, " — %s", e.Message)
	}
	return b.String()
}

// explanationRow is a line of "What happened".
type explanationRow struct {
	Step       int
	StepName   string
	Text, When string
}

func explanationRows(r *Report) []explanationRow {
	exps := r.Explanations
	if exps == nil {
		exps = r.Explain()
	}
	var out []explanationRow
	for _, e := range exps {
		name := ""
		if e.Step >= 1 && e.Step <= len(r.Steps) {
			name = r.Steps[e.Step-1].Name
		}
		out = append(out, explanationRow{Step: e.Step, StepName: name, Text: e.Text, When: secs(e.Seconds)})
	}
	return out
}

// eventRow is a row of the events table.
type eventRow struct {
	When, Kind, Class, Where, Component, About, Message string
}

func eventRows(r *Report) []eventRow {
	var out []eventRow
	for _, e := range r.Events {
		where := e.Cluster
		if e.Node != "" {
			where += "/" + e.Node
		}
		var about []string
		for _, kv := range [][2]string{{"remote", e.Remote}, {"service", e.Service}, {"policy", e.Policy}} {
			if kv[1] != "" {
				about = append(about, kv[0]+" "+kv[1])
			}
		}
		if e.Backends > 0 {
			about = append(about, fmt.Sprintf("%d backends", e.Backends))
		}
		out = append(out, eventRow{When: secs(e.Seconds), Kind: string(e.Kind), Class: eventClass(e.Kind), Where: where,
			Component: e.Component, About: strings.Join(about, ", "), Message: e.Message})
	}
	return out
}
