package control

import (
	"strings"
	"testing"
)

// stepScenario is a scenario file as `meshbed sim up -f` keeps it: its
// objects are what /step requests may refer to.
const stepScenario = `apiVersion: meshbed.io/v1alpha1
kind: Scenario
metadata: {name: control}
spec:
  topology:
    clusters: [{name: cluster1, id: 1}, {name: cluster2, id: 2}]
  manifests:
    - clusters: [cluster1, cluster2]
      inline: |
        apiVersion: apps/v1
        kind: Deployment
        metadata: {name: x-wing}
        spec:
          selector: {matchLabels: {app: x-wing}}
          template:
            metadata: {labels: {app: x-wing}}
            spec: {containers: [{name: c, image: busybox}]}
        ---
        apiVersion: v1
        kind: Service
        metadata: {name: rebel-base}
        spec: {selector: {app: rebel-base}, ports: [{port: 80}]}
  steps:
    - wait: 1s
`

func TestParseStep(t *testing.T) {
	for _, tt := range []struct {
		body, action, wantErr string
	}{
		{body: `{"curl": {"from": "cluster1/x-wing", "url": "http://rebel-base", "count": 5}}`, action: "curl"},
		{body: `{"scale": {"cluster": "cluster2", "deployment": "x-wing", "replicas": 0, "gracePeriodSeconds": 0}}`, action: "scale"},
		{body: `{"name": "cut", "partition": {"groups": [["cluster1"], ["cluster2"]]}}`, action: "partition"},
		{body: `null`, wantErr: "got null"},
		{body: `[]`, wantErr: "cannot unmarshal"},
		{body: `{"heal": {}} {"heal": {}}`, wantErr: "more than one"},
		{body: `{"heal": {}} x`, wantErr: "more than one"},
		{body: `{"curl": {"from": "cluster3/x-wing", "url": "http://x"}}`, wantErr: `unknown cluster "cluster3"`},
		{body: `{"scale": {"cluster": "cluster1", "deployment": "x-wing", "replicas": 1e400}}`, wantErr: "replicas"},
		{body: strings.Repeat(" ", maxStepRequest+1), wantErr: "larger than"},
	} {
		st, err := ParseStep("control.yaml", []byte(stepScenario), []byte(tt.body))
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("%.60s: error %v, want %q", tt.body, err, tt.wantErr)
			}
			continue
		}
		if err != nil {
			t.Errorf("%s: %v", tt.body, err)
			continue
		}
		if got := st.Action().ActionName(); got != tt.action {
			t.Errorf("%s: action %s, want %s", tt.body, got, tt.action)
		}
	}
}

// FuzzParseStep: whatever a client sends to the control socket, the
// simulator answers with a step or an error, never a panic; an accepted
// body is exactly one step with exactly one action.
func FuzzParseStep(f *testing.F) {
	for _, s := range []string{
		`{"curl": {"from": "cluster1/x-wing", "url": "http://rebel-base", "count": 5}}`,
		`{"traffic": {"name": "t", "from": "cluster1/default/x-wing", "url": "http://rebel-base.default", "rate": "10/s"}}`,
		`{"stopTraffic": "t"}`,
		`{"scale": {"cluster": "cluster2", "deployment": "x-wing", "replicas": 0, "gracePeriodSeconds": 0}}`,
		`{"partition": {"groups": [["cluster1"], ["cluster2/node-1"]], "plane": "data", "oneWay": true}}`,
		`{"heal": {}}`, `{"wait": "1s", "expect": {"within": "2s", "backends": {"cluster": "cluster1", "service": "rebel-base", "from": ["cluster1"]}}}`,
		`{"apply": {"cluster": "cluster1", "inline": "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\n"}}`,
		`{"delete": {"cluster": "cluster1", "kind": "Service", "name": "rebel-base"}}`,
		`{"restart": {"component": "agent", "cluster": "cluster1", "node": "node-1"}}`,
		`{"annotate": {"cluster": "cluster1", "service": "rebel-base", "annotations": {"a": null}}}`,
		`null`, `{}`, `{"curl": 1e999}`, `{"wait": "1s", "curl": {}}`,
	} {
		f.Add([]byte(s))
	}
	raw := []byte(stepScenario)
	f.Fuzz(func(t *testing.T, body []byte) {
		st, err := ParseStep("control.yaml", raw, body)
		if err != nil {
			return
		}
		if st == nil || st.Action() == nil {
			t.Fatalf("accepted %q as a step without an action", body)
		}
	})
}
