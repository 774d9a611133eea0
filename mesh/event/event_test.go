package event

import (
	"strings"
	"testing"
	"time"
)

func TestScopeAndLog(t *testing.T) {
	l := NewLog(3)
	r := Scope(l, "cluster1", "node-1", ComponentAgent)
	t0 := time.Now()
	r.Record(Event{Kind: BackendsWithdrawn, Remote: "cluster2"})
	r.Record(Event{Kind: RemoteLost, Cluster: "other", Time: t0.Add(-time.Hour)})
	got := l.Since(t0)
	if len(got) != 1 {
		t.Fatalf("Since: %v, want the one event after t0", got)
	}
	e := got[0]
	if e.Cluster != "cluster1" || e.Node != "node-1" || e.Component != ComponentAgent || e.Time.Before(t0) {
		t.Errorf("scoped event %+v: want cluster1/node-1 agent, stamped now", e)
	}
	if all := l.Since(time.Time{}); len(all) != 2 || all[0].Cluster != "other" {
		t.Errorf("Since(zero) = %v: want both, oldest (the explicit cluster kept) first", all)
	}
	for range 3 {
		r.Record(Event{Kind: PolicyApplied})
	}
	if n := len(l.Since(time.Time{})); n != 3 || l.Dropped() != 2 {
		t.Errorf("a full log holds %d events and dropped %d, want 3 and 2", n, l.Dropped())
	}
	Scope(nil, "c", "", "").Record(Event{}) // a nil recorder discards
}

func TestParseKind(t *testing.T) {
	for _, k := range Kinds {
		if got, err := ParseKind(string(k)); err != nil || got != k {
			t.Errorf("ParseKind(%q) = %q, %v", k, got, err)
		}
	}
	if _, err := ParseKind("remotelost"); err == nil || !strings.Contains(err.Error(), "RemoteLost") {
		t.Errorf("ParseKind of a wrong case: %v, want an error listing the kinds", err)
	}
}
