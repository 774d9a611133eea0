// Package event defines the decision events of the mesh: what a component
// decided and when (a remote cluster lost, its backends withdrawn, an
// affinity fallback, a policy rejected, a component stopped), with the
// cluster and node it happened on.
//
// The components record them themselves, through a Recorder handed to
// their constructor (agent.Config.Events, remote.Config.Events,
// kvstoremesh.Config.Events, apiserver.Config.Events): the binaries log
// them and count them in their metrics, the simulator collects every
// component's events in one Log for its reports. Nothing outside the
// component infers them. The kinds and their fields are those of
// docs/scenarios.md, "Events".
package event

import (
	"fmt"
	"log/slog"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Kind names a decision.
type Kind string

// The decision kinds.
const (
	// RemoteLost: a remote cluster became unreachable after it had been
	// synced (Remote names it; Message says how it was noticed).
	RemoteLost Kind = "RemoteLost"
	// RemoteRestored: a lost remote cluster is reachable again, its state
	// resynced.
	RemoteRestored Kind = "RemoteRestored"
	// BackendsWithdrawn: an unreachable cluster's backends of a service
	// take no new connections on this node (Remote, Service, Backends).
	BackendsWithdrawn Kind = "BackendsWithdrawn"
	// BackendsRestored: they take new connections again.
	BackendsRestored Kind = "BackendsRestored"
	// AffinityFallback: a service with affinity has no active backend on
	// its preferred side and uses the other side.
	AffinityFallback Kind = "AffinityFallback"
	// AffinityRestored: the preferred side has active backends again.
	AffinityRestored Kind = "AffinityRestored"
	// PolicyApplied: a policy (Policy, "CiliumNetworkPolicy ns/name") was
	// accepted and is enforced.
	PolicyApplied Kind = "PolicyApplied"
	// PolicyRejected: a policy failed to decode or validate; its last good
	// version, if any, stays in force (Message says why).
	PolicyRejected Kind = "PolicyRejected"
	// ComponentStopped and ComponentStarted: a component's own life cycle
	// (Component says which).
	ComponentStopped Kind = "ComponentStopped"
	ComponentStarted Kind = "ComponentStarted"
)

// Kinds lists every kind, in the order of docs/scenarios.md.
var Kinds = []Kind{RemoteLost, RemoteRestored, BackendsWithdrawn, BackendsRestored,
	AffinityFallback, AffinityRestored, PolicyApplied, PolicyRejected,
	ComponentStopped, ComponentStarted}

// ParseKind returns the kind named s (exactly as written in Kinds).
func ParseKind(s string) (Kind, error) {
	for _, k := range Kinds {
		if string(k) == s {
			return k, nil
		}
	}
	names := make([]string, len(Kinds))
	for i, k := range Kinds {
		names[i] = string(k)
	}
	return "", fmt.Errorf("unknown event kind %q (want one of %s)", s, strings.Join(names, ", "))
}

// Components, as Event.Component names them.
const (
	ComponentAgent       = "agent"
	ComponentAPIServer   = "apiserver"
	ComponentKVStoreMesh = "kvstoremesh"
)

// Event is one decision.
type Event struct {
	Time time.Time `json:"time"`
	Kind Kind      `json:"kind"`
	// Cluster and Node are where the decision was made (Node is empty for
	// the cluster-wide apiserver and kvstoremesh).
	Cluster   string `json:"cluster"`
	Node      string `json:"node,omitempty"`
	Component string `json:"component"`
	// Remote is the remote cluster a decision concerns.
	Remote string `json:"remote,omitempty"`
	// Service is the namespace/name of the service concerned.
	Service string `json:"service,omitempty"`
	// Policy is the policy concerned ("CiliumNetworkPolicy ns/name").
	Policy string `json:"policy,omitempty"`
	// Backends is how many backends the decision moved.
	Backends int    `json:"backends,omitempty"`
	Message  string `json:"message,omitempty"`
}

// String is a one-line rendering, for logs and errors.
func (e Event) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s", e.Time.Format("15:04:05.000"), e.Kind)
	where := e.Cluster
	if e.Node != "" {
		where += "/" + e.Node
	}
	fmt.Fprintf(&b, " %s %s", where, e.Component)
	for _, kv := range [][2]string{{"remote", e.Remote}, {"service", e.Service}, {"policy", e.Policy}} {
		if kv[1] != "" {
			fmt.Fprintf(&b, " %s=%s", kv[0], kv[1])
		}
	}
	if e.Backends > 0 {
		fmt.Fprintf(&b, " backends=%d", e.Backends)
	}
	if e.Message != "" {
		fmt.Fprintf(&b, ": %s", e.Message)
	}
	return b.String()
}

// Recorder receives events. Record must not block for long and must be
// safe for concurrent use; components call it with their locks held.
type Recorder interface {
	Record(Event)
}

// RecorderFunc adapts a function to Recorder.
type RecorderFunc func(Event)

// Record calls f.
func (f RecorderFunc) Record(e Event) { f(e) }

// Discard drops every event.
var Discard Recorder = RecorderFunc(func(Event) {})

// Scope returns a Recorder that stamps every event with the time (when it
// has none), cluster, node and component (when the event does not set
// them) and passes it to r. A nil r gives Discard.
func Scope(r Recorder, cluster, node, component string) Recorder {
	if r == nil {
		return Discard
	}
	return RecorderFunc(func(e Event) {
		if e.Time.IsZero() {
			e.Time = time.Now()
		}
		if e.Cluster == "" {
			e.Cluster = cluster
		}
		if e.Node == "" {
			e.Node = node
		}
		if e.Component == "" {
			e.Component = component
		}
		r.Record(e)
	})
}

// OrDiscard returns r, or Discard when r is nil.
func OrDiscard(r Recorder) Recorder {
	if r == nil {
		return Discard
	}
	return r
}

// Multi passes every event to each of rs (nil ones skipped).
func Multi(rs ...Recorder) Recorder {
	return RecorderFunc(func(e Event) {
		for _, r := range rs {
			if r != nil {
				r.Record(e)
			}
		}
	})
}

// LogMessage is the message of the log line Logger writes for an event;
// ParseLogLine reads such lines back.
const LogMessage = "Decision event"

// Logger returns a Recorder that writes every event as one log line (what
// the binaries do, besides counting them in their metrics). The line
// carries every field of the event, its time as "at" (RFC 3339 with
// nanoseconds, which the record's own time may round), so that a reader of
// the component's log (the Kind target) gets the event back whole with
// ParseLogLine.
func Logger(log *slog.Logger) Recorder {
	if log == nil {
		return Discard
	}
	return RecorderFunc(func(e Event) {
		attrs := []any{"kind", string(e.Kind), "cluster", e.Cluster}
		if !e.Time.IsZero() {
			attrs = append(attrs, "at", e.Time.UTC().Format(time.RFC3339Nano))
		}
		for _, kv := range [][2]string{{"node", e.Node}, {"component", e.Component}, {"remote", e.Remote},
			{"service", e.Service}, {"policy", e.Policy}, {"detail", e.Message}} {
			if kv[1] != "" {
				attrs = append(attrs, kv[0], kv[1])
			}
		}
		if e.Backends > 0 {
			attrs = append(attrs, "backends", e.Backends)
		}
		log.Info(LogMessage, attrs...)
	})
}

// DefaultLogSize bounds a Log made by NewLog(0).
const DefaultLogSize = 100_000

// Log collects events in memory, in the order recorded, up to a size;
// beyond it the oldest are dropped and counted. The simulator keeps one
// for the whole mesh.
type Log struct {
	mu      sync.Mutex
	max     int
	events  []Event
	dropped int
}

// NewLog returns a Log of at most size events (DefaultLogSize when size
// is 0 or less).
func NewLog(size int) *Log {
	if size <= 0 {
		size = DefaultLogSize
	}
	return &Log{max: size}
}

// Record appends e (stamped with the time now when it has none).
func (l *Log) Record(e Event) {
	if e.Time.IsZero() {
		e.Time = time.Now()
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.events) >= l.max {
		n := len(l.events) - l.max + 1
		l.events = append(l.events[:0], l.events[n:]...)
		l.dropped += n
	}
	l.events = append(l.events, e)
}

// Since returns the events whose time is not before t, sorted by time
// (stable: events of one component keep their order).
func (l *Log) Since(t time.Time) []Event {
	l.mu.Lock()
	var out []Event
	for _, e := range l.events {
		if !e.Time.Before(t) {
			out = append(out, e)
		}
	}
	l.mu.Unlock()
	sort.SliceStable(out, func(i, j int) bool { return out[i].Time.Before(out[j].Time) })
	return out
}

// Dropped is how many events the Log dropped for lack of room.
func (l *Log) Dropped() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.dropped
}

// Counted returns a Recorder that counts every event in
// meshbed_events_total{kind} of reg, then passes it to r. A nil reg
// returns r itself.
func Counted(r Recorder, reg prometheus.Registerer) (Recorder, error) {
	if reg == nil {
		return OrDiscard(r), nil
	}
	c := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "meshbed_events_total",
		Help: "Decision events recorded, by kind",
	}, []string{"kind"})
	if err := reg.Register(c); err != nil {
		return nil, err
	}
	for _, k := range Kinds {
		c.WithLabelValues(string(k)) // every kind has a series, 0 until it happens
	}
	r = OrDiscard(r)
	return RecorderFunc(func(e Event) {
		c.WithLabelValues(string(e.Kind)).Inc()
		r.Record(e)
	}), nil
}
