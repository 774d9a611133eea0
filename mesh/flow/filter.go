package flow

import (
	"errors"
	"fmt"
	"net/url"
	"slices"
	"strconv"
	"strings"
)

// Filter selects flows; every field set must match (empty matches all).
type Filter struct {
	// Cluster and Node: where the flow was observed (Node is a node name,
	// or cluster/node).
	Cluster string
	Node    string
	// FromCluster: the source's cluster.
	FromCluster string
	// ToService: the service (namespace/name) the flow went through.
	ToService string
	// Verdict: FORWARDED or DROPPED.
	Verdict string
}

// Match reports whether f selects fl.
func (f Filter) Match(fl *Flow) bool {
	switch {
	case f.Cluster != "" && fl.Cluster != f.Cluster:
		return false
	case f.Node != "" && fl.Node != f.Node && fl.Node != fl.Cluster+"/"+f.Node:
		return false
	case f.FromCluster != "" && fl.Source.Cluster != f.FromCluster:
		return false
	case f.ToService != "" && (fl.Service == nil || fl.Service.Namespace+"/"+fl.Service.Name != f.ToService):
		return false
	case f.Verdict != "" && fl.Verdict != f.Verdict:
		return false
	}
	return true
}

// MatchLost reports whether a loss report concerns the observers f selects.
func (f Filter) MatchLost(l *Lost) bool {
	switch {
	case f.Cluster != "" && l.Cluster != "" && l.Cluster != f.Cluster:
		return false
	case f.Node != "" && l.Node != "" && l.Node != f.Node && l.Node != l.Cluster+"/"+f.Node:
		return false
	}
	return true
}

// Request is what a reader of flows asks for.
type Request struct {
	Filter
	// Last is how many of the most recent matching flows to send first.
	Last int
	// Follow keeps the stream open for new flows.
	Follow bool
}

// DefaultLast is Last when a request names neither Last nor Follow (as
// hubble observe shows the last 20 flows).
const DefaultLast = 20

// Query parameter names of a flow request.
const (
	ParamCluster     = "cluster"
	ParamNode        = "node"
	ParamFromCluster = "from-cluster"
	ParamToService   = "to-service"
	ParamVerdict     = "verdict"
	ParamLast        = "last"
	ParamFollow      = "follow"
)

var params = []string{ParamCluster, ParamNode, ParamFromCluster, ParamToService, ParamVerdict, ParamLast, ParamFollow}

// Query encodes r as URL query parameters (ParseRequest's input).
func (r Request) Query() url.Values {
	q := url.Values{}
	set := func(k, v string) {
		if v != "" {
			q.Set(k, v)
		}
	}
	set(ParamCluster, r.Cluster)
	set(ParamNode, r.Node)
	set(ParamFromCluster, r.FromCluster)
	set(ParamToService, r.ToService)
	set(ParamVerdict, r.Verdict)
	if r.Last > 0 {
		q.Set(ParamLast, strconv.Itoa(r.Last))
	}
	if r.Follow {
		q.Set(ParamFollow, "true")
	}
	return q
}

// ParseRequest decodes and checks a flow request's query parameters. An
// unknown parameter or a bad value is an error that names it.
func ParseRequest(q url.Values) (Request, error) {
	var r Request
	var errs []error
	for k, vs := range q {
		if !slices.Contains(params, k) {
			errs = append(errs, fmt.Errorf("unknown filter %q (known: %s)", k, strings.Join(params, ", ")))
			continue
		}
		if len(vs) != 1 {
			errs = append(errs, fmt.Errorf("filter %q given %d times", k, len(vs)))
		}
	}
	get := q.Get
	r.Cluster, r.Node, r.FromCluster = get(ParamCluster), get(ParamNode), get(ParamFromCluster)
	if s := get(ParamToService); s != "" {
		if ns, name, ok := strings.Cut(s, "/"); !ok || ns == "" || name == "" || strings.Contains(name, "/") {
			errs = append(errs, fmt.Errorf("%s %q: want namespace/name", ParamToService, s))
		}
		r.ToService = s
	}
	if v := get(ParamVerdict); v != "" {
		var err error
		if r.Verdict, err = ParseVerdict(v); err != nil {
			errs = append(errs, err)
		}
	}
	if s := get(ParamLast); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 0 {
			errs = append(errs, fmt.Errorf("%s %q: want a number ≥ 0", ParamLast, s))
		}
		r.Last = n
	}
	if s := get(ParamFollow); s != "" {
		b, err := strconv.ParseBool(s)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s %q: want true or false", ParamFollow, s))
		}
		r.Follow = b
	}
	if r.Last == 0 && !r.Follow && !q.Has(ParamLast) {
		r.Last = DefaultLast
	}
	if len(errs) == 0 {
		return r, nil
	}
	// One line: the messages sorted (map order is random), joined.
	msgs := make([]string, len(errs))
	for i, err := range errs {
		msgs[i] = err.Error()
	}
	slices.Sort(msgs)
	return r, errors.New(strings.Join(msgs, "; "))
}

// ParseVerdict accepts FORWARDED or DROPPED in any case.
func ParseVerdict(s string) (string, error) {
	switch v := strings.ToUpper(s); v {
	case VerdictForwarded, VerdictDropped:
		return v, nil
	}
	return "", fmt.Errorf("%s %q: want %s or %s", ParamVerdict, s, VerdictForwarded, VerdictDropped)
}
