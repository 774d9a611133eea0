package netns

import (
	"path/filepath"
	"strings"
	"testing"
)

// FuzzSysctlPath checks that no accepted path escapes /proc/sys/net: sysctl
// paths come from topology and scenario files.
func FuzzSysctlPath(f *testing.F) {
	for _, s := range []string{"net/ipv4/ip_forward", "net/ipv4/conf/eth0.100/rp_filter", "net/../kernel", "kernel/x", "net//a", "net/.", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, p string) {
		if checkSysctlPath(p) != nil {
			return
		}
		full := "/proc/sys/" + p
		if clean := filepath.Clean(full); clean != full || !strings.HasPrefix(clean, "/proc/sys/net/") {
			t.Fatalf("accepted %q, which resolves to %q", p, clean)
		}
	})
}
