// Package testenv gates tests on what the machine offers. Tests that need
// root, network namespaces or BPF call Privileged; they skip with the reason
// when the machine lacks it, and fail instead when MESHBED_REQUIRE_PRIVILEGED=1
// (as CI sets it), so a green CI always means they ran.
package testenv

import (
	"os"
	"testing"
)

// RequirePrivilegedEnv is the environment variable that turns a privileged
// skip into a failure.
const RequirePrivilegedEnv = "MESHBED_REQUIRE_PRIVILEGED"

// Privileged skips (or fails, under MESHBED_REQUIRE_PRIVILEGED=1) unless the
// test runs as root.
func Privileged(tb testing.TB) {
	tb.Helper()
	if os.Geteuid() != 0 {
		Unavailable(tb, "needs root (network namespaces, BPF)")
	}
}

// Unavailable skips tb with reason, or fails it when privileged tests are
// required. Use it for any missing kernel feature a test depends on.
func Unavailable(tb testing.TB, reason string) {
	tb.Helper()
	if os.Getenv(RequirePrivilegedEnv) == "1" {
		tb.Fatalf("%s=1 but test cannot run: %s", RequirePrivilegedEnv, reason)
	}
	tb.Skip(reason)
}
