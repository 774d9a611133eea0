package engine

import (
	"context"
	"strings"
	"testing"

	"github.com/meshbed/meshbed/scenarios"
)

// kvTarget serves a fixed etcd and answers KVList as etcdctl get --prefix
// does.
type kvTarget struct {
	Target
	kvs map[string][]byte
}

func (k *kvTarget) KVList(_ context.Context, _, prefix string) (map[string][]byte, error) {
	out := map[string][]byte{}
	for key, v := range k.kvs {
		if strings.HasPrefix(key, prefix) {
			out[key] = v
		}
	}
	return out, nil
}

// TestKVStorePrefixIsPlain: a kvstore expectation's prefix is a plain key
// prefix (SCENARIOS.md), so part of an address counts the addresses that
// begin with it and no "/" is added.
func TestKVStorePrefixIsPlain(t *testing.T) {
	tgt := &kvTarget{kvs: map[string][]byte{
		"cilium/state/ip/v1/default/10.20.1.2":   nil,
		"cilium/state/ip/v1/default/10.20.2.7":   nil,
		"cilium/state/ip/v1/default/10.2.0.9":    nil,
		"cilium/state/ip/v1/default/10.10.1.2":   nil,
		"cilium/state/nodes/v1/cluster1/node-1":  nil,
		"cilium/state/nodes/v1/cluster10/node-1": nil,
	}}
	r := &runner{t: tgt}
	tests := []struct {
		prefix string
		count  string
		fails  string
	}{
		{prefix: "cilium/state/ip/v1/default/10.20.", count: "2"},
		{prefix: "cilium/state/ip/v1/default/10.2", count: "3"},
		{prefix: "cilium/state/ip/v1/default/", count: "4"},
		{prefix: "cilium/state/nodes/v1/cluster1", count: "2"},
		{prefix: "cilium/state/nodes/v1/cluster1/", count: "1"},
		{prefix: "cilium/state/ip/v1/default/10.20.", count: "0", fails: "2 keys begin with cilium/state/ip/v1/default/10.20., want 0"},
	}
	for _, tt := range tests {
		t.Run(tt.prefix+"="+tt.count, func(t *testing.T) {
			m, err := scenarios.ParseMatcher(tt.count, false, false)
			if err != nil {
				t.Fatal(err)
			}
			err = r.checkKVStore(context.Background(), scenarios.KVStoreExpect{Cluster: "cluster1", Prefix: tt.prefix, Count: &m})
			switch {
			case tt.fails == "" && err != nil:
				t.Errorf("%v", err)
			case tt.fails != "" && (err == nil || !strings.Contains(err.Error(), tt.fails)):
				t.Errorf("error %v, want one saying %q", err, tt.fails)
			}
		})
	}
}
