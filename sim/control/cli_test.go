package control

import (
	"encoding/json"
	"strings"
	"testing"
	"time"
)

// TestStepFromArgs: every step command's arguments become the step a
// scenario file would write, and bad arguments are refused.
func TestStepFromArgs(t *testing.T) {
	o := StepOptions{Count: 3, Timeout: 2 * time.Second, Namespace: "ns", Plane: "data", OneWay: true}
	for _, tc := range []struct {
		verb string
		args []string
		want string // JSON, or the error's text
	}{
		{"curl", []string{"cluster1/x-wing", "http://rebel-base"}, `{"curl":{"count":3,"from":"cluster1/x-wing","timeout":"2s","url":"http://rebel-base"}}`},
		{"scale", []string{"cluster1", "rebel-base", "0"}, `{"scale":{"cluster":"cluster1","deployment":"rebel-base","namespace":"ns","replicas":0}}`},
		{"scale", []string{"cluster1", "rebel-base", "-1"}, `replicas "-1": want a number ≥ 0`},
		{"annotate", []string{"cluster1", "rebel-base", "a=b", "c-", "d=e-"}, `{"annotate":{"annotations":{"a":"b","c":null,"d":"e-"},"cluster":"cluster1","namespace":"ns","service":"rebel-base"}}`},
		{"annotate", []string{"cluster1", "rebel-base", "a"}, `annotation "a": want KEY=VALUE or KEY-`},
		{"partition", []string{"cluster1", "cluster2/node1,cluster3"}, `{"partition":{"groups":[["cluster1"],["cluster2/node1","cluster3"]],"oneWay":true,"plane":"data"}}`},
		{"heal", nil, `{"heal":{}}`},
		{"stop", []string{"agent", "cluster1", "node1"}, `{"stop":{"cluster":"cluster1","component":"agent","node":"node1"}}`},
		{"restart", []string{"apiserver", "cluster1"}, `{"restart":{"cluster":"cluster1","component":"apiserver"}}`},
	} {
		st, err := StepFromArgs(tc.verb, tc.args, o)
		got := ""
		if err != nil {
			got = err.Error()
		} else {
			b, _ := json.Marshal(st)
			got = string(b)
		}
		if got != tc.want {
			t.Errorf("%s %s:\n got %s\nwant %s", tc.verb, strings.Join(tc.args, " "), got, tc.want)
		}
	}
}
