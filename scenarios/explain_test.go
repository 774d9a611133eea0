package scenarios

import (
	"bytes"
	"encoding/json"
	"os"
	"strings"
	"testing"
)

// TestExplainPartition explains a recorded partition run
// (testdata/report-partition.json, a real run of partition-recovery.yaml
// trimmed): the withdrawal, the traffic moving, and the recovery.
func TestExplainPartition(t *testing.T) {
	data, err := os.ReadFile("testdata/report-partition.json")
	if err != nil {
		t.Fatal(err)
	}
	var r Report
	if err := json.Unmarshal(data, &r); err != nil {
		t.Fatal(err)
	}
	var lines []string
	for _, e := range r.Explain() {
		lines = append(lines, e.Text)
	}
	all := strings.Join(lines, "\n")
	for _, want := range []string{
		"cluster2's backends of default/rebel-base withdrawn by cluster1 at 7.80s, 2.03s after the partition (2 nodes, the last at 7.80s); traffic of cluster1-clients all on cluster1 from 8.27s",
		"cluster2's kvstoremesh reconnected to cluster1 at 11.88s, 0.90s after the heal",
		"cluster1's kvstoremesh lost cluster2 at 7.79s",
		"cluster1's kvstoremesh reconnected to cluster2 at 11.13s",
	} {
		if !strings.Contains(all, want) {
			t.Errorf("explanations lack %q; got:\n%s", want, all)
		}
	}
}

// TestReportHTMLEvents renders the recorded partition run: the stream's
// timeline carries the decision events of its cluster as markers, the
// explanations and the events table are there, and the page is the
// golden one.
func TestReportHTMLEvents(t *testing.T) {
	data, err := os.ReadFile("testdata/report-partition.json")
	if err != nil {
		t.Fatal(err)
	}
	var r Report
	if err := json.Unmarshal(data, &r); err != nil {
		t.Fatal(err)
	}
	var h bytes.Buffer
	if err := r.WriteHTML(&h); err != nil {
		t.Fatal(err)
	}
	page := h.String()
	for _, want := range []string{
		`<g class="ev loss" data-kind="BackendsWithdrawn">`,
		`<g class="ev loss" data-kind="RemoteLost">`,
		`<g class="ev recovery" data-kind="RemoteRestored">`,
		`<g class="ev change" data-kind="AffinityFallback">`,
		`<h2>What happened</h2>`,
		`withdrawn by cluster1 at 7.80s, 2.03s after the partition`,
		`<h2>Decision events</h2>`,
	} {
		if !strings.Contains(page, want) {
			t.Errorf("report.html lacks %s", want)
		}
	}
	// Only cluster1's decisions are drawn on cluster1's stream: cluster2
	// withdrew cluster1's backends, which does not move this stream.
	if n := strings.Count(page, `data-kind="BackendsWithdrawn"`); n != 1 {
		t.Errorf("%d BackendsWithdrawn markers on the one stream of cluster1, want 1 (both nodes' events share it)", n)
	}
	golden(t, "testdata/report-partition.golden.html", h.Bytes())
}
