package run

import (
	"io"
	"strings"
	"testing"

	"github.com/meshbed/meshbed/internal/cmdutil"
)

// TestInvalidInput: what cannot run is exit 2 with the flag named, before
// any target starts.
func TestInvalidInput(t *testing.T) {
	const file = "../../scenarios/failover.yaml"
	sim := Options{Target: "sim"}
	for _, tc := range []struct {
		name string
		err  error
		want string
	}{
		{"target", Scenario(t.Context(), io.Discard, io.Discard, file, Options{Target: "docker"}), `--target "docker": want sim or kind`},
		{"context on sim", Scenario(t.Context(), io.Discard, io.Discard, file, Options{Target: "sim", Contexts: []string{"cluster1=c1"}}), "--context: only with --target kind"},
		{"no such file", Scenario(t.Context(), io.Discard, io.Discard, "nope.yaml", sim), "nope.yaml"},
		{"chaos without file", Chaos(t.Context(), io.Discard, io.Discard, ChaosOptions{}, sim), "-f FILE is required"},
		{"chaos interval", Chaos(t.Context(), io.Discard, io.Discard, ChaosOptions{File: file, Interval: "1s"}, sim), "--interval"},
		{"chaos hold", Chaos(t.Context(), io.Discard, io.Discard, ChaosOptions{File: file, Hold: "1s..x"}, sim), "--hold"},
	} {
		if cmdutil.ExitCode(tc.err, 0) != 2 || !strings.Contains(tc.err.Error(), tc.want) {
			t.Errorf("%s: %v (exit %d), want exit 2 and %q", tc.name, tc.err, cmdutil.ExitCode(tc.err, 0), tc.want)
		}
	}
}
