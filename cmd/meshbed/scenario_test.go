package main

import (
	"errors"
	"strings"
	"testing"

	"github.com/meshbed/meshbed/internal/cmdutil"
)

// TestScenarioRunFlagErrors: a target or --context that cannot be used is
// exit 2 with the flag named, before anything starts.
func TestScenarioRunFlagErrors(t *testing.T) {
	for _, v := range []string{"NODE_IMAGE", "MESHBED_IMAGE", "DEMO_IMAGE"} {
		t.Setenv(v, "") // the image flags' defaults
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--target", "docker"}, `--target "docker": want sim or kind`},
		{[]string{"--context", "cluster1=kind-c1"}, "--context: only with --target kind"},
		{[]string{"--target", "kind", "--context", "cluster1"}, `--context "cluster1": want CLUSTER=CONTEXT`},
		{[]string{"--target", "kind", "--context", "cluster1=a", "--context", "cluster1=b"}, "cluster cluster1 given twice"},
		{[]string{"--target", "kind", "--context", "cluster1=kind-c1"}, "cluster cluster2: no --context given for it"},
		{[]string{"--target", "kind"}, "needs the node, meshbed and demo images"},
	} {
		cmd := newRoot(nil)
		cmd.SetArgs(append([]string{"scenario", "run", "../../scenarios/failover.yaml"}, tc.args...))
		cmd.SetOut(&strings.Builder{})
		cmd.SetErr(&strings.Builder{})
		err := cmd.ExecuteContext(t.Context())
		var ee *cmdutil.ExitError
		if !errors.As(err, &ee) || ee.Code != 2 || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("scenario run %v: %v, want exit 2 and %q", tc.args, err, tc.want)
		}
	}
}
