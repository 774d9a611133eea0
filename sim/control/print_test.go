package control

import (
	"bytes"
	"strings"
	"testing"
)

func TestClustermeshViewProblems(t *testing.T) {
	v := &ClusterMeshView{Cluster: "cluster1", KVStoreMesh: "running", Running: 1, Stopped: []string{"node-2"},
		Cache:  []RemoteView{{Remote: "cluster2", Connected: true, Synced: true, Nodes: 2, Since: "2026-01-01T00:00:00Z", ForSeconds: 3.04}},
		Agents: []RemoteView{{Node: "node-1", Remote: "cluster2", Cached: true, Connected: true, Synced: false, ForSeconds: 1.2, Since: "x", Failures: 1}}}
	got := strings.Join(v.Problems(), "; ")
	want := "the agent on node-2 is stopped; agent on node-1: cluster2 not synced"
	if got != want {
		t.Errorf("problems: %q, want %q", got, want)
	}
	var out bytes.Buffer
	v.Print(&out)
	for _, s := range []string{"KVStoreMesh: running", "3s (synced)", "1.2s (not synced)", "Agents: 1 running, stopped on node-2", "node-1  kvstoremesh"} {
		if !strings.Contains(out.String(), s) {
			t.Errorf("status output lacks %q:\n%s", s, out.String())
		}
	}
}

func TestFilterMetrics(t *testing.T) {
	body := []byte(`# TYPE meshbed_events_total counter
meshbed_events_total{cluster="cluster1",kind="RemoteLost",node=""} 1
meshbed_events_total{cluster="cluster2",kind="RemoteLost",node=""} 2
# TYPE cilium_kvstoremesh_remote_clusters gauge
cilium_kvstoremesh_remote_clusters{cluster="cluster1"} 1
`)
	var out bytes.Buffer
	if err := FilterMetrics(&out, body, []string{"meshbed_"}, map[string]string{"cluster": "cluster2"}); err != nil {
		t.Fatal(err)
	}
	if s := out.String(); !strings.Contains(s, `cluster="cluster2"`) || strings.Contains(s, `cluster="cluster1"`) || strings.Contains(s, "cilium_") {
		t.Errorf("filtered output:\n%s", s)
	}
	err := FilterMetrics(&out, body, []string{"nosuch_"}, map[string]string{"cluster": "cluster9"})
	if err == nil || err.Error() != "no metric matches names beginning with nosuch_, cluster=cluster9" {
		t.Errorf("no match: %v", err)
	}
}
