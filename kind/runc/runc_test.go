package runc

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func TestSubcommandAndFlags(t *testing.T) {
	args := []string{"--root", "/run/x", "--log", "/l", "--log-format", "json", "--systemd-cgroup", "create", "--bundle", "/b", "--pid-file", "/p", "id"}
	cmd, rest := subcommand(args)
	if cmd != "create" || flagValue(rest, "bundle", "b") != "/b" {
		t.Fatalf("subcommand = %q, bundle = %q", cmd, flagValue(rest, "bundle", "b"))
	}
	cmd, rest = subcommand([]string{"exec", "--process=/tmp/p.json", "--detach", "id"})
	if cmd != "exec" || flagValue(rest, "process", "p") != "/tmp/p.json" {
		t.Fatalf("exec: %q %q", cmd, flagValue(rest, "process", "p"))
	}
}

// TestRewriteDropsUnheldCaps: a capability outside this process's bounding
// set leaves every set; held ones, unknown names and other fields (64-bit
// numbers included) stay exactly.
func TestRewriteDropsUnheldCaps(t *testing.T) {
	held := heldCaps()
	var missing string
	for name := range capNumber {
		if !held(name) {
			missing = name
			break
		}
	}
	dir := t.TempDir()
	caps := []string{"CAP_NET_ADMIN", "CAP_FUTURE_THING"}
	if missing != "" {
		caps = append(caps, missing)
	}
	spec := map[string]any{
		"ociVersion": "1.0.2",
		"process": map[string]any{
			"capabilities": map[string]any{"bounding": caps, "effective": caps},
			"oomScoreAdj":  -999,
		},
		"linux": map[string]any{"resources": map[string]any{"memory": map[string]any{"limit": uint64(1<<63 + 12345)}}},
	}
	b, _ := json.Marshal(spec)
	path := filepath.Join(dir, "config.json")
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := fixup([]string{"--root", "/r", "create", "--bundle", dir, "id"}); err != nil {
		t.Fatal(err)
	}
	out, _ := os.ReadFile(path)
	var got struct {
		Process struct {
			Capabilities map[string][]string
			OOMScoreAdj  int64
		}
	}
	if err := json.Unmarshal(out, &got); err != nil {
		t.Fatal(err)
	}
	for set, list := range got.Process.Capabilities {
		if missing != "" && slices.Contains(list, missing) {
			t.Errorf("%s still lists %s", set, missing)
		}
		if !slices.Contains(list, "CAP_FUTURE_THING") || (held("CAP_NET_ADMIN") && !slices.Contains(list, "CAP_NET_ADMIN")) {
			t.Errorf("%s lost a capability: %v", set, list)
		}
	}
	if cur, err := ownOOMScoreAdj(); err == nil && got.Process.OOMScoreAdj < cur {
		t.Errorf("oomScoreAdj %d below our own %d", got.Process.OOMScoreAdj, cur)
	}
	if !strings.Contains(string(out), "9223372036854788153") {
		t.Errorf("64-bit limit not kept exactly: %s", out)
	}
}
