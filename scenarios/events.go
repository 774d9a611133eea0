package scenarios

import (
	"encoding/json"
	"fmt"
	"strings"

	"github.com/meshbed/meshbed/mesh/event"
)

// EventsExpect counts the mesh's decision events (docs/scenarios.md,
// "Events") recorded since the step began that match every field given:
//
//	events: {cluster: cluster1, kind: BackendsWithdrawn, count: ">=1"}
//	events:
//	  - {cluster: cluster1, node: node-1, kind: RemoteLost, remote: cluster2}
//	  - {cluster: cluster2, kind: ComponentStarted, component: kvstoremesh, count: 1}
//
// cluster and kind are required; node, component, remote and service
// narrow the match; count defaults to ">=1".
type EventsExpect struct {
	Cluster string
	// Node is empty for any node (and the cluster-wide components).
	Node string
	Kind event.Kind
	// Component is "agent", "apiserver" or "kvstoremesh"; empty for any.
	Component string
	// Remote is the remote cluster the event concerns; empty for any.
	Remote string
	// Service is namespace/name; empty for any.
	Service string
	Count   Matcher
}

// Matches reports whether e is one of the events x counts.
func (x EventsExpect) Matches(e event.Event) bool {
	return e.Cluster == x.Cluster && e.Kind == x.Kind &&
		(x.Node == "" || e.Node == x.Node) &&
		(x.Component == "" || e.Component == x.Component) &&
		(x.Remote == "" || e.Remote == x.Remote) &&
		(x.Service == "" || e.Service == x.Service)
}

// String renders x as the file would write it.
func (x EventsExpect) String() string {
	parts := []string{"cluster " + x.Cluster}
	for _, kv := range [][2]string{{"node", x.Node}, {"component", x.Component}, {"remote", x.Remote}, {"service", x.Service}} {
		if kv[1] != "" {
			parts = append(parts, kv[0]+" "+kv[1])
		}
	}
	return fmt.Sprintf("%s events (%s)", x.Kind, strings.Join(parts, ", "))
}

var eventComponents = []string{event.ComponentAgent, event.ComponentAPIServer, event.ComponentKVStoreMesh}

// events decodes one item of expect.events.
func (d *decoder) events(field string, v any, st *state) (EventsExpect, bool) {
	m := d.object(field, v, "cluster", "node", "kind", "component", "remote", "service", "count")
	if m == nil {
		return EventsExpect{}, false
	}
	x := EventsExpect{Count: Matcher{Kind: MatchCount, Op: OpGE, Count: 1}}
	good := true
	if v, ok := d.required(field, m, "cluster"); ok {
		x.Cluster, ok = d.cluster(join(field, "cluster"), v, st)
		good = good && ok
	} else {
		good = false
	}
	if v, ok := d.required(field, m, "kind"); ok {
		if s, ok := d.nonEmpty(join(field, "kind"), v); ok {
			k, err := event.ParseKind(s)
			if err != nil {
				d.errorf(join(field, "kind"), "%v", err)
				good = false
			}
			x.Kind = k
		} else {
			good = false
		}
	} else {
		good = false
	}
	if v, ok := get(m, "node"); ok {
		if s, ok := d.nonEmpty(join(field, "node"), v); ok && x.Cluster != "" {
			good = d.node(join(field, "node"), x.Cluster, s, st) && good
			x.Node = s
		} else {
			good = false
		}
	}
	if v, ok := get(m, "component"); ok {
		if s, ok := d.nonEmpty(join(field, "component"), v); ok {
			if !contains(eventComponents, s) {
				d.errorf(join(field, "component"), "unknown component %q (want %s)", s, strings.Join(eventComponents, ", "))
				good = false
			}
			x.Component = s
		} else {
			good = false
		}
	}
	if v, ok := get(m, "remote"); ok {
		var ok bool
		x.Remote, ok = d.cluster(join(field, "remote"), v, st)
		good = good && ok
	}
	if v, ok := get(m, "service"); ok {
		ns, name, ok := d.serviceRef(join(field, "service"), v)
		x.Service, good = ns+"/"+name, good && ok
	}
	if v, ok := get(m, "count"); ok {
		var s string
		switch cv := v.(type) {
		case json.Number:
			s = cv.String()
		case string:
			s = cv
		default:
			d.errorf(join(field, "count"), "must be a count like 2 or \">=1\", got %s", describe(v))
			return x, false
		}
		mt, err := ParseMatcher(s, false, false)
		if err != nil {
			d.errorf(join(field, "count"), "%v", err)
			return x, false
		}
		x.Count = mt
	}
	return x, good
}
