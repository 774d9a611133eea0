package event

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"
	"time"
)

// TestLogLineRoundTrip: what Logger writes through the text handler the
// binaries use, ParseLogLine reads back whole, quoting and all.
func TestLogLineRoundTrip(t *testing.T) {
	at := time.Date(2026, 12, 2, 10, 11, 12, 123456789, time.UTC)
	events := []Event{
		{Time: at, Kind: RemoteLost, Cluster: "cluster1", Component: ComponentKVStoreMesh, Remote: "cluster2",
			Message: `no answer to "health" for 1.2s = lost`},
		{Time: at, Kind: BackendsWithdrawn, Cluster: "cluster1", Node: "c1-worker", Component: ComponentAgent,
			Remote: "cluster2", Service: "default/rebel-base", Backends: 2},
		{Time: at, Kind: PolicyApplied, Cluster: "cluster2", Node: "n", Component: ComponentAgent,
			Policy: "CiliumNetworkPolicy default/allow x"},
		{Time: at, Kind: ComponentStarted, Cluster: "c", Component: ComponentAPIServer, Message: "line\nbreak\ttab ü"},
	}
	var buf bytes.Buffer
	r := Logger(slog.New(slog.NewTextHandler(&buf, nil)))
	for _, e := range events {
		r.Record(e)
	}
	slog.New(slog.NewTextHandler(&buf, nil)).Info("another line", "kind", "RemoteLost", "cluster", "x")
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != len(events)+1 {
		t.Fatalf("%d lines, want %d:\n%s", len(lines), len(events)+1, buf.String())
	}
	for i, e := range events {
		// A container runtime's timestamp before the line is ignored.
		got, ok, err := ParseLogLine("2026-12-02T10:11:12.5Z " + lines[i])
		if !ok || err != nil {
			t.Fatalf("line %q: ok %v, err %v", lines[i], ok, err)
		}
		if got != e {
			t.Errorf("line %q\n got %+v\nwant %+v", lines[i], got, e)
		}
	}
	if _, ok, _ := ParseLogLine(lines[len(events)]); ok {
		t.Errorf("another message was taken for an event: %q", lines[len(events)])
	}
}

func TestParseLogLineBad(t *testing.T) {
	for _, line := range []string{
		`time=2026-12-02T10:11:12Z level=INFO msg="Decision event" kind=Nope cluster=c at=2026-12-02T10:11:12Z`,
		`time=2026-12-02T10:11:12Z level=INFO msg="Decision event" kind=RemoteLost cluster=c at=yesterday`,
		`time=2026-12-02T10:11:12Z level=INFO msg="Decision event" kind=RemoteLost at=2026-12-02T10:11:12Z`,
		`time=2026-12-02T10:11:12Z level=INFO msg="Decision event" kind=RemoteLost cluster=c backends=x at=2026-12-02T10:11:12Z`,
	} {
		if _, ok, err := ParseLogLine(line); !ok || err == nil {
			t.Errorf("%q: ok %v, err %v; want a decision line that does not decode", line, ok, err)
		}
	}
	for _, line := range []string{"", "Decision event", `msg="Decision event`, `time=x msg="Decision event" kind`} {
		if _, ok, _ := ParseLogLine(line); ok {
			t.Errorf("%q taken for a decision line", line)
		}
	}
}

func FuzzParseLogLine(f *testing.F) {
	f.Add(`time=2026-12-02T10:11:12Z level=INFO msg="Decision event" kind=RemoteLost cluster=c remote=d at=2026-12-02T10:11:12.5Z`)
	f.Add(`msg="Decision event" detail="a \"b\""`)
	f.Fuzz(func(t *testing.T, line string) {
		e, ok, err := ParseLogLine(line)
		if ok && err == nil && (e.Cluster == "" || e.Time.IsZero()) {
			t.Fatalf("%q decoded to an event without cluster or time: %+v", line, e)
		}
	})
}
