// Package testenv gates tests on what the machine offers. Tests that need
// root, network namespaces or BPF call Privileged; they skip with the reason
// when the machine lacks it, and fail instead when MESHBED_REQUIRE_PRIVILEGED=1
// (as CI sets it), so a green CI always means they ran.
package testenv

import (
	"errors"
	"flag"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"go.uber.org/goleak"
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

// update is the one -update flag of every test binary that imports
// testenv: golden files are rewritten from the current output.
var update = flag.Bool("update", false, "rewrite golden files from the current output")

// Updating reports whether the test binary runs with -update.
func Updating() bool { return *update }

// Golden compares got with the golden file at path, or, under -update,
// writes got there (creating its directory).
func Golden(tb testing.TB, path string, got []byte) {
	tb.Helper()
	if *update {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			tb.Fatal(err)
		}
		if err := os.WriteFile(path, got, 0o644); err != nil {
			tb.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		tb.Fatalf("%v (run with -update to create it)", err)
	}
	if string(want) != string(got) {
		tb.Errorf("%s differs (run with -update to accept):\n--- want\n%s\n--- got\n%s", path, want, got)
	}
}

// Eventually polls cond until it returns nil, failing tb with cond's last
// error once timeout has passed. The poll interval starts at 5 ms and
// backs off to 100 ms.
func Eventually(tb testing.TB, timeout time.Duration, cond func() error) {
	tb.Helper()
	deadline := time.Now().Add(timeout)
	wait := 5 * time.Millisecond
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			tb.Fatalf("after %v: %v", timeout, err)
		}
		time.Sleep(wait)
		wait = min(2*wait, 100*time.Millisecond)
	}
}

// Consistently checks cond every 10 ms for d and fails tb at its first
// error.
func Consistently(tb testing.TB, d time.Duration, cond func() error) {
	tb.Helper()
	start := time.Now()
	for {
		if err := cond(); err != nil {
			tb.Fatalf("condition broke after %v of %v: %v", time.Since(start).Round(time.Millisecond), d, err)
		}
		if time.Since(start) >= d {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// SkipIfUnsupported turns an error that says the kernel lacks a feature
// (cilium/ebpf's ErrNotSupported, ENOTSUP, EOPNOTSUPP, ENOSYS,
// EAFNOSUPPORT, EPROTONOSUPPORT) into a skip with the error as its reason,
// or a failure under MESHBED_REQUIRE_PRIVILEGED=1. Other errors, and nil,
// return.
func SkipIfUnsupported(tb testing.TB, err error) {
	tb.Helper()
	if err == nil {
		return
	}
	if errors.Is(err, ebpf.ErrNotSupported) || errors.Is(err, errors.ErrUnsupported) ||
		errors.Is(err, syscall.ENOTSUP) || errors.Is(err, syscall.EOPNOTSUPP) || errors.Is(err, syscall.ENOSYS) ||
		errors.Is(err, syscall.EAFNOSUPPORT) || errors.Is(err, syscall.EPROTONOSUPPORT) {
		Unavailable(tb, "kernel lacks a feature: "+err.Error())
	}
}

// CheckGoroutines fails tb at cleanup if goroutines it started are still
// running then (after a grace period for those that are ending), comparing
// stacks with those running when it was called.
func CheckGoroutines(tb testing.TB) {
	tb.Helper()
	ignore := goleak.IgnoreCurrent()
	tb.Cleanup(func() {
		if err := goleak.Find(ignore); err != nil {
			tb.Errorf("goroutines left behind: %v", err)
		}
	})
}
