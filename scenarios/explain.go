package scenarios

import (
	"fmt"
	"sort"
	"strings"

	"github.com/meshbed/meshbed/mesh/event"
)

// Explanation is one line of report.html's "What happened": a decision of
// the mesh after a step, told from the events the components recorded and
// from the traffic streams.
type Explanation struct {
	// Step is the 1-based index of the step the decision followed.
	Step int `json:"step"`
	// Seconds is when the decision was first recorded, on the run clock.
	Seconds float64 `json:"seconds"`
	Text    string  `json:"text"`
}

// causes lists, per event kind, the actions that can cause it: an event
// is explained under the latest such step that began before it (a
// reconnection that lands after a later scale step still follows the
// heal).
func causes(k event.Kind) map[string]bool {
	faults := map[string]bool{"partition": true, "heal": true, "stop": true, "start": true, "restart": true}
	switch k {
	case event.RemoteLost, event.RemoteRestored, event.BackendsWithdrawn, event.BackendsRestored:
		return faults
	case event.ComponentStopped, event.ComponentStarted:
		return map[string]bool{"stop": true, "start": true, "restart": true}
	}
	all := map[string]bool{"scale": true, "delete": true, "annotate": true, "apply": true}
	for a := range faults {
		all[a] = true
	}
	return all
}

// Explain builds the explanations of r from its events and streams: every
// event after the first step is put under the step that caused it (the
// latest step before it of an action that can cause its kind), and the
// events of one step are told one line per decision and cluster (the
// first node to decide, how many did, how long after the step); a
// withdrawal also says from when the traffic streams of the deciding
// cluster were all answered without the lost cluster, a restoration from
// when they were answered by it again.
func (r *Report) Explain() []Explanation {
	if len(r.Events) == 0 || len(r.Steps) == 0 {
		return nil
	}
	byStep := map[int][]EventRecord{}
	for _, e := range r.Events {
		c := causes(e.Kind)
		for i := len(r.Steps) - 1; i >= 0; i-- {
			if st := r.Steps[i]; st.StartSeconds <= e.Seconds && c[st.Action] {
				byStep[i] = append(byStep[i], e)
				break
			}
		}
	}
	var out []Explanation
	for i, st := range r.Steps {
		for _, g := range groupEvents(byStep[i]) {
			out = append(out, Explanation{Step: i + 1, Seconds: g.first.Seconds, Text: r.explainGroup(g, st)})
		}
	}
	return out
}

// eventGroup is one decision taken by the components of a cluster: the
// same kind about the same remote, service or policy.
type eventGroup struct {
	first, last EventRecord
	nodes       map[string]bool
	components  map[string]bool
	count       int
}

func groupEvents(evs []EventRecord) []*eventGroup {
	type key struct {
		kind                                       event.Kind
		cluster, remote, service, policy, compKind string
	}
	groups := map[key]*eventGroup{}
	var order []key
	for _, e := range evs {
		k := key{e.Kind, e.Cluster, e.Remote, e.Service, e.Policy, ""}
		if e.Kind == event.ComponentStarted || e.Kind == event.ComponentStopped || e.Kind == event.RemoteLost || e.Kind == event.RemoteRestored {
			// kvstoremesh's and the agents' views of a loss are told apart,
			// and so are the components that stop and start.
			k.compKind = e.Component
		}
		g := groups[k]
		if g == nil {
			g = &eventGroup{first: e, nodes: map[string]bool{}, components: map[string]bool{}}
			groups[k] = g
			order = append(order, k)
		}
		g.last = e
		g.count++
		if e.Node != "" {
			g.nodes[e.Node] = true
		}
		g.components[e.Component] = true
	}
	out := make([]*eventGroup, 0, len(order))
	for _, k := range order {
		out = append(out, groups[k])
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].first.Seconds < out[j].first.Seconds })
	return out
}

func (r *Report) explainGroup(g *eventGroup, st StepReport) string {
	e := g.first
	after := fmt.Sprintf("%s after the %s", secs(e.Seconds-st.StartSeconds), stepNoun(st.Action))
	where, nodes := e.Cluster, ""
	if len(g.nodes) > 1 {
		nodes = fmt.Sprintf(" (%d nodes, the last at %s)", len(g.nodes), secs(g.last.Seconds))
	} else if e.Node != "" {
		where = e.Cluster + "/" + e.Node
	}
	var text string
	switch e.Kind {
	case event.RemoteLost:
		text = fmt.Sprintf("%s lost %s at %s, %s (%s: %s)", who(e, g), e.Remote, secs(e.Seconds), after, e.Component, e.Message)
	case event.RemoteRestored:
		text = fmt.Sprintf("%s reconnected to %s at %s, %s (%s)", who(e, g), e.Remote, secs(e.Seconds), after, e.Message)
	case event.BackendsWithdrawn:
		text = fmt.Sprintf("%s's backends of %s withdrawn by %s at %s, %s%s", e.Remote, e.Service, where, secs(e.Seconds), after, nodes)
		text += r.trafficWithout(e.Cluster, e.Remote, g.last.Seconds)
	case event.BackendsRestored:
		text = fmt.Sprintf("%s's backends of %s restored by %s at %s, %s%s", e.Remote, e.Service, where, secs(e.Seconds), after, nodes)
		text += r.trafficBackOn(e.Cluster, e.Remote, g.last.Seconds)
	case event.AffinityFallback:
		text = fmt.Sprintf("%s in %s fell back from its preferred backends at %s, %s%s: %s", e.Service, where, secs(e.Seconds), after, nodes, e.Message)
	case event.AffinityRestored:
		text = fmt.Sprintf("%s in %s back on its preferred backends at %s, %s%s", e.Service, where, secs(e.Seconds), after, nodes)
	case event.PolicyApplied:
		text = fmt.Sprintf("%s applied by %s at %s, %s%s", e.Policy, where, secs(e.Seconds), after, nodes)
	case event.PolicyRejected:
		text = fmt.Sprintf("%s rejected by %s at %s%s: %s", e.Policy, where, secs(e.Seconds), nodes, e.Message)
	case event.ComponentStopped:
		text = fmt.Sprintf("%s stopped at %s", component(e, g), secs(e.Seconds))
	case event.ComponentStarted:
		text = fmt.Sprintf("%s started at %s, %s", component(e, g), secs(e.Seconds), after)
	default:
		text = fmt.Sprintf("%s in %s at %s", e.Kind, where, secs(e.Seconds))
	}
	return text
}

func who(e EventRecord, g *eventGroup) string {
	if e.Component == event.ComponentKVStoreMesh {
		return e.Cluster + "'s kvstoremesh"
	}
	if len(g.nodes) > 1 {
		return fmt.Sprintf("%s's agents (%d nodes)", e.Cluster, len(g.nodes))
	}
	if e.Node != "" {
		return fmt.Sprintf("%s's agent on %s", e.Cluster, e.Node)
	}
	return e.Cluster
}

func component(e EventRecord, g *eventGroup) string {
	if e.Node == "" {
		return e.Cluster + "'s " + e.Component
	}
	if len(g.nodes) > 1 {
		return fmt.Sprintf("%s's %ss (%d nodes)", e.Cluster, e.Component, len(g.nodes))
	}
	return fmt.Sprintf("%s's %s on %s", e.Cluster, e.Component, e.Node)
}

func stepNoun(action string) string {
	switch action {
	case "partition":
		return "partition"
	case "heal":
		return "heal"
	case "stop", "start", "restart":
		return action
	}
	return action + " step"
}

// trafficWithout says from when every stream that starts in cluster was
// answered without errors and without lost, looking from at (the bucket
// that holds at) on.
func (r *Report) trafficWithout(cluster, lost string, at float64) string {
	var parts []string
	for _, s := range r.Streams {
		if !strings.HasPrefix(s.From, cluster+"/") {
			continue
		}
		for i, b := range s.Buckets {
			t0 := s.StartSeconds + float64(i)*s.BucketSeconds
			if t0+s.BucketSeconds <= at || b.Total() == 0 {
				continue
			}
			if b.Errors == 0 && b.Responses[lost] == 0 {
				parts = append(parts, fmt.Sprintf("traffic of %s all on %s from %s", s.Name, strings.Join(sortedKeys(b.Responses), "/"), secs(t0)))
				break
			}
		}
	}
	if len(parts) == 0 {
		return ""
	}
	return "; " + strings.Join(parts, "; ")
}

// trafficBackOn says from when the streams of cluster were answered by
// back again.
func (r *Report) trafficBackOn(cluster, back string, at float64) string {
	var parts []string
	for _, s := range r.Streams {
		if !strings.HasPrefix(s.From, cluster+"/") {
			continue
		}
		for i, b := range s.Buckets {
			t0 := s.StartSeconds + float64(i)*s.BucketSeconds
			if t0+s.BucketSeconds <= at {
				continue
			}
			if b.Responses[back] > 0 {
				parts = append(parts, fmt.Sprintf("traffic of %s answered by %s again from %s", s.Name, back, secs(t0)))
				break
			}
		}
	}
	if len(parts) == 0 {
		return ""
	}
	return "; " + strings.Join(parts, "; ")
}
