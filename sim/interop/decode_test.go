//go:build interop

package interop_test

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/meshbed/meshbed/mesh/wire"
)

// TestCiliumDecodesExports hands every key cluster2's mesh-apiserver
// exports to its readers (state, cluster config, canaries, heartbeat) to a
// decoder built with Cilium's own packages (hack/interop/decode.go), which
// applies the types and validators Cilium uses for a remote cluster. Not
// one key may be rejected, and every kind must be present.
func TestCiliumDecodesExports(t *testing.T) {
	ciliumBinary(t)
	decoder := os.Getenv("CILIUM_INTEROP_DECODER")
	if decoder == "" {
		t.Fatal("CILIUM_INTEROP_DECODER is not set (hack/interop.sh builds it)")
	}
	m := startMesh(t)
	deploy(t, m, manifest(2))
	c2, _ := m.Cluster("cluster2")

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	keys := map[string][]byte{}
	for _, prefix := range []string{wire.StateRoot, wire.ClusterConfigKey(c2.Name()), wire.SyncedRoot + c2.Name() + "/", wire.HeartbeatKey} {
		got, err := c2.KVStoreScan(ctx, prefix)
		if err != nil {
			t.Fatal(err)
		}
		for k, v := range got {
			keys[k] = v
		}
	}
	in, err := json.Marshal(map[string]any{"cluster": c2.Name(), "clusterID": c2.Spec().ID, "keys": keys})
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(decoder)
	cmd.Stdin = bytes.NewReader(in)
	out, err := cmd.CombinedOutput()
	t.Logf("Cilium's decoder:\n%s", out)
	if err != nil {
		t.Fatalf("Cilium's decoder rejected keys: %v", err)
	}
	for _, kind := range []string{"node ", "service ", "ip ", "identity ", "cluster config ", "synced canary", "heartbeat"} {
		if !strings.Contains(string(out), ": "+kind) {
			t.Errorf("no key of kind %q was decoded", strings.TrimSpace(kind))
		}
	}
}
