package target_test

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"testing"
	"time"

	"github.com/meshbed/meshbed/internal/testenv"
	"github.com/meshbed/meshbed/scenarios"
	"github.com/meshbed/meshbed/scenarios/engine"
	"github.com/meshbed/meshbed/sim/target"
)

// encryptedScenario has the same curl twice, once expecting encrypted:
// true and once false, in a topology with the given encryption.
const encryptedScenario = `
apiVersion: meshbed.io/v1alpha1
kind: Scenario
metadata: {name: encrypted-%[1]s-%[2]s}
spec:
  topology:
    routing: %[2]s
    encryption: %[1]s
    clusters:
      - {name: cluster1, id: 1}
      - {name: cluster2, id: 2}
  manifests:
    - clusters: [cluster1, cluster2]
      inline: |
        apiVersion: v1
        kind: Service
        metadata:
          name: echo
          annotations: {service.cilium.io/global: "true"}
        spec:
          selector: {name: echo}
          ports: [{name: http, port: 80}]
        ---
        apiVersion: apps/v1
        kind: Deployment
        metadata: {name: echo}
        spec:
          replicas: 2
          selector: {matchLabels: {name: echo}}
          template:
            metadata: {labels: {name: echo}}
            spec:
              containers: [{name: echo, image: meshbed/echo}]
        ---
        apiVersion: apps/v1
        kind: Deployment
        metadata: {name: client}
        spec:
          replicas: 1
          selector: {matchLabels: {name: client}}
          template:
            metadata: {labels: {name: client}}
            spec:
              containers: [{name: client, image: busybox}]
  steps:
    - name: expect encrypted
      curl: {from: cluster1/client, url: http://echo, count: 20}
      expect: {encrypted: true}
    - name: expect clear
      curl: {from: cluster1/client, url: http://echo, count: 20}
      expect: {encrypted: false}
    - name: requests that never cross the underlay prove nothing
      curl: {from: cluster1/client, url: http://%[3]s, count: 5}
      expect: {encrypted: true}
`

// TestIntegrationEncryptedExpectation shows that the encrypted expectation
// can fail, both ways: without encryption, encrypted: true fails (the
// capture sees requests and answers in clear) and false passes; with
// WireGuard the reverse. A curl whose answers all come from the client's
// own node proves nothing, so encrypted: true fails there too.
func TestIntegrationEncryptedExpectation(t *testing.T) {
	testenv.Privileged(t)
	for _, routing := range []string{"tunnel", "native"} {
		for _, enc := range []string{"none", "wireguard"} {
			t.Run(enc+"/"+routing, func(t *testing.T) {
				// The third step curls the client pod itself (no server
				// there: its requests fail on the pod, never on the wire).
				sc, err := scenarios.Parse("inline.yaml", fmt.Appendf(nil, encryptedScenario, enc, routing, "127.0.0.1:9"))
				if err != nil {
					t.Fatal(err)
				}
				var logs bytes.Buffer
				ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
				defer cancel()
				rep, err := engine.Run(ctx, sc, target.New(target.Options{Logger: slog.New(slog.NewTextHandler(&logs, nil))}), engine.Options{})
				if err != nil {
					t.Fatalf("run: %v\n%s", err, logs.String())
				}
				want := map[string]bool{"expect encrypted": enc == "wireguard", "expect clear": enc == "none",
					"requests that never cross the underlay prove nothing": false}
				for _, st := range rep.Steps {
					if st.Passed != want[st.Name] {
						t.Errorf("%s: passed %v, want %v (%s; responses %v, errors %d)", st.Name, st.Passed, want[st.Name], st.Message, st.Responses, st.Errors)
					} else {
						t.Logf("%s: passed %v as expected: %s", st.Name, st.Passed, st.Message)
					}
				}
				if !rep.Final.Passed {
					t.Errorf("final check: %s", rep.Final.Message)
				}
			})
		}
	}
}
