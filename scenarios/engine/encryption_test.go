package engine

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/meshbed/meshbed/datapath/state"
	"github.com/meshbed/meshbed/scenarios"
)

const (
	keyA = "2ZYyxfKd1q6XxjRjFo0xzEyo3RbNX1Fz5YcK0ZPfcmc="
	keyB = "UIg1Sm2+blkAH/Oaa92+XUnb6WAQ0e/FbYbjAE3htn0="
	keyC = "MmXKFla6BwbdEjcqRM6je3Fvb7M8mNOWUZC9kP1EmR0="
)

func encTopology() *scenarios.Topology {
	return &scenarios.Topology{Encryption: scenarios.EncryptionWireGuard,
		Clusters: []scenarios.Cluster{{Name: "c1", ID: 1, Nodes: 2}}}
}

// twoNodes is c1's node-1 and node-2, each peered with the other.
func twoNodes() map[string][]NodeState {
	n1 := state.Node{Name: "node-1", Cluster: "c1", IP: netip.MustParseAddr("172.20.1.2"), PodCIDR: netip.MustParsePrefix("10.1.1.0/24"), WireguardPubKey: keyA}
	n2 := state.Node{Name: "node-2", Cluster: "c1", IP: netip.MustParseAddr("172.20.1.3"), PodCIDR: netip.MustParsePrefix("10.1.2.0/24"), WireguardPubKey: keyB}
	desired := &state.State{Nodes: []state.Node{n1, n2}}
	peer := func(n state.Node) EncryptionPeer {
		return EncryptionPeer{PublicKey: n.WireguardPubKey, Endpoint: n.IP, AllowedIPs: []netip.Prefix{n.PodCIDR, netip.PrefixFrom(n.IP, 32)}}
	}
	return map[string][]NodeState{"c1": {
		{Node: "node-1", Running: true, Desired: desired, Encryption: &NodeEncryption{PublicKey: keyA, Peers: []EncryptionPeer{peer(n2)}}},
		{Node: "node-2", Running: true, Desired: desired, Encryption: &NodeEncryption{PublicKey: keyB, Peers: []EncryptionPeer{peer(n1)}}},
	}}
}

func TestCheckEncryption(t *testing.T) {
	for _, tc := range []struct {
		name   string
		break_ func(map[string][]NodeState)
		want   string
	}{
		{"converged", func(map[string][]NodeState) {}, ""},
		{"stale peer", func(n map[string][]NodeState) {
			e := n["c1"][0].Encryption
			e.Peers = append(e.Peers, EncryptionPeer{PublicKey: keyC, Endpoint: netip.MustParseAddr("172.20.1.9")})
		}, "node-1: stale WireGuard peer"},
		{"missing peer", func(n map[string][]NodeState) { n["c1"][1].Encryption.Peers = nil }, "node-2: no WireGuard peer for c1/node-1"},
		{"wrong allowed IPs", func(n map[string][]NodeState) {
			n["c1"][1].Encryption.Peers[0].AllowedIPs = []netip.Prefix{netip.MustParsePrefix("10.1.1.0/24")}
		}, "node-2: WireGuard peer"},
		{"stale key", func(n map[string][]NodeState) { n["c1"][1].Encryption.PublicKey = keyC }, "knows c1/node-2 by key"},
		{"not encrypting", func(n map[string][]NodeState) { n["c1"][0].Encryption = nil }, "c1/node-1: no WireGuard device"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n := twoNodes()
			tc.break_(n)
			err := checkEncryption(encTopology(), n)
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("converged mesh: %v", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("got %v, want an error with %q", err, tc.want)
			}
		})
	}
}

func TestCheckEncrypted(t *testing.T) {
	clear := &CaptureResult{Packets: 40, ClearCount: 2, Clear: []string{"a → b TCP carried x"}}
	sealed := &CaptureResult{Packets: 40}
	for _, tc := range []struct {
		name string
		want bool
		out  outcome
		ok   bool
	}{
		{"true, sealed, crossed", true, outcome{requests: 10, crossNode: 5, capture: sealed}, true},
		{"true, in clear", true, outcome{requests: 10, crossNode: 5, capture: clear}, false},
		{"true, nothing crossed", true, outcome{requests: 10, crossNode: 0, capture: sealed}, false},
		{"false, in clear", false, outcome{requests: 10, crossNode: 5, capture: clear}, true},
		{"false, sealed", false, outcome{requests: 10, crossNode: 5, capture: sealed}, false},
		{"no capture", true, outcome{requests: 10, crossNode: 5}, false},
	} {
		fails := checkEncrypted(tc.want, tc.out)
		if (len(fails) == 0) != tc.ok {
			t.Errorf("%s: fails %v, want ok %v", tc.name, fails, tc.ok)
		}
	}
}
