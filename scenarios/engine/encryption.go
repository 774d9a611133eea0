package engine

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"sort"
	"strings"

	"github.com/meshbed/meshbed/scenarios"
)

// Capabilities of encryption and node life cycle.
const (
	// CapEncryptionWireGuard: the target can build a topology with
	// encryption: wireguard.
	CapEncryptionWireGuard Capability = "topology/encryption/wireguard"
	// CapExpectEncrypted: the target can capture the underlay (Capturer).
	CapExpectEncrypted Capability = "expect/encrypted"
	// CapAddNode: a node can join a cluster (NodeAdder).
	CapAddNode Capability = "addNode"
)

// Capturer is implemented by a target that can watch the underlay between
// nodes, as a capture on the wire would (CapExpectEncrypted).
type Capturer interface {
	// StartCapture starts capturing every packet on the underlay between
	// the nodes of the mesh, looking for needles in clear.
	StartCapture(ctx context.Context, needles []string) (Capture, error)
}

// Capture is a running capture.
type Capture interface {
	// Stop ends the capture once every packet sent before the call has
	// been seen, and reports.
	Stop() (CaptureResult, error)
}

// CaptureResult is what a capture saw.
type CaptureResult struct {
	// Packets between nodes seen.
	Packets int
	// Clear describes the packets that carried a needle in clear (the
	// first few).
	Clear []string
	// ClearCount counts them all.
	ClearCount int
}

// NodeAdder is implemented by a target where a node can join a cluster
// (CapAddNode).
type NodeAdder interface {
	// AddNode adds the next node to the cluster (node-N+1), starts its
	// agent, and returns its name once its agent has programmed its
	// datapath.
	AddNode(ctx context.Context, cluster string) (string, error)
}

// SourceNoder is implemented by a Client that knows the node its pod runs
// on, for the encrypted expectation: a request answered on another node
// crossed the underlay.
type SourceNoder interface {
	SourceNode() string
}

// probeParam is the query parameter that marks the requests of one curl
// step, so a capture can tell them from any other traffic.
const probeParam = "meshbed-probe"

// answerNeedle is in every answer of meshbed's echo server (and of the
// seed demo's json-mock); the token is in every request.
const answerNeedle = `"Galaxy":"Alderaan"`

// capturedCurl runs a curl action under a capture of the underlay.
func (a curlAction) runCaptured(ctx context.Context, t Target) (outcome, error) {
	cp, ok := t.(Capturer)
	if !ok || !t.Supports(CapExpectEncrypted) {
		return outcome{}, fmt.Errorf("encrypted: %w %q", ErrUnsupported, t.Name())
	}
	tok := make([]byte, 12)
	_, _ = rand.Read(tok)
	token := "mbprobe" + hex.EncodeToString(tok)
	u := *a.URL
	q := u.Query()
	q.Set(probeParam, token)
	u.RawQuery = q.Encode()
	capt, err := cp.StartCapture(ctx, []string{token, answerNeedle})
	if err != nil {
		return outcome{}, fmt.Errorf("encrypted: start capture: %w", err)
	}
	out, runErr := a.requests(ctx, t, u.String())
	res, err := capt.Stop()
	if runErr != nil {
		return out, runErr
	}
	if err != nil {
		return out, fmt.Errorf("encrypted: capture: %w", err)
	}
	out.capture = &res
	return out, nil
}

// checkEncrypted judges the encrypted expectation on a curl's outcome.
func checkEncrypted(want bool, out outcome) []string {
	res := out.capture
	if res == nil {
		return []string{"encrypted: no capture was taken"}
	}
	clear := ""
	if res.ClearCount > 0 {
		clear = fmt.Sprintf("%d packet(s) on the underlay in clear, e.g. %s", res.ClearCount, strings.Join(res.Clear, "; "))
	}
	if !want {
		if res.ClearCount == 0 {
			return []string{fmt.Sprintf("encrypted: false: no request or answer seen in clear among %d underlay packets (%d of %d requests answered on another node)",
				res.Packets, out.crossNode, out.requests)}
		}
		return nil
	}
	var fails []string
	if res.ClearCount > 0 {
		fails = append(fails, "encrypted: true: "+clear)
	}
	if out.crossNode == 0 {
		// Nothing crossed the underlay: the capture proves nothing.
		fails = append(fails, fmt.Sprintf("encrypted: true: none of %d requests was answered on another node, so none crossed the underlay", out.requests))
	}
	return fails
}

// addNodeAction adds a node to a cluster.
type addNodeAction struct{ *scenarios.AddNode }

func (a addNodeAction) Run(ctx context.Context, t Target) (outcome, error) {
	na, ok := t.(NodeAdder)
	if !ok {
		return outcome{}, fmt.Errorf("addNode: %w %q", ErrUnsupported, t.Name())
	}
	_, err := na.AddNode(ctx, a.Cluster)
	return outcome{}, err
}
func (addNodeAction) needs() []Capability { return []Capability{CapAddNode} }

// checkTopology lists what the topology needs of a target.
func checkTopology(sc *scenarios.Scenario, t Target) error {
	if sc.Topology.Encryption == scenarios.EncryptionWireGuard && !t.Supports(CapEncryptionWireGuard) {
		return fmt.Errorf("%s: spec.topology.encryption: wireguard: %s: %w %q", sc.File, CapEncryptionWireGuard, ErrUnsupported, t.Name())
	}
	return nil
}

// checkEncryption: every node encrypts, publishes its current key (the
// key every agent's desired state holds for it is the one its device
// has), and its device's peers are exactly the other nodes it knows with
// a usable key: endpoint the node's address, allowed IPs its pod CIDR and
// address. A peer left from a node gone or re-keyed is stale.
func checkEncryption(tp *scenarios.Topology, nodes map[string][]NodeState) error {
	var errs []error
	actual := map[string]string{} // cluster/node → its device's key
	for _, c := range tp.Clusters {
		for _, n := range nodes[c.Name] {
			where := c.Name + "/" + n.Node
			if n.Encryption == nil || n.Encryption.PublicKey == "" {
				errs = append(errs, fmt.Errorf("%s: no WireGuard device", where))
				continue
			}
			actual[where] = n.Encryption.PublicKey
		}
	}
	for _, c := range tp.Clusters {
		for _, n := range nodes[c.Name] {
			where := c.Name + "/" + n.Node
			if n.Desired == nil || n.Encryption == nil {
				continue
			}
			want := map[string]string{} // key → description
			for _, sn := range n.Desired.Nodes {
				other := sn.Cluster + "/" + sn.Name
				if other == where {
					continue
				}
				if key, ok := actual[other]; ok && sn.WireguardPubKey != key {
					errs = append(errs, fmt.Errorf("%s: knows %s by key %q, but its device has %q (stale key)", where, other, sn.WireguardPubKey, key))
				}
				if !usableKey(sn.WireguardPubKey) {
					continue
				}
				cidrs := []string{netip.PrefixFrom(sn.IP, 32).String()}
				if sn.PodCIDR.IsValid() {
					cidrs = append(cidrs, sn.PodCIDR.Masked().String())
				}
				sort.Strings(cidrs)
				want[sn.WireguardPubKey] = fmt.Sprintf("%s %s %v", other, sn.IP, cidrs)
			}
			got := map[string]string{}
			for _, p := range n.Encryption.Peers {
				var cidrs []string
				for _, a := range p.AllowedIPs {
					cidrs = append(cidrs, a.String())
				}
				sort.Strings(cidrs)
				desc := fmt.Sprintf("%s %v", p.Endpoint, cidrs)
				if w, ok := want[p.PublicKey]; ok {
					desc = w[:strings.Index(w, " ")] + " " + desc
				}
				got[p.PublicKey] = desc
			}
			for k, w := range want {
				if g, ok := got[k]; !ok {
					errs = append(errs, fmt.Errorf("%s: no WireGuard peer for %s", where, w))
				} else if g != w {
					errs = append(errs, fmt.Errorf("%s: WireGuard peer %s, want %s", where, g, w))
				}
			}
			for k, g := range got {
				if _, ok := want[k]; !ok {
					errs = append(errs, fmt.Errorf("%s: stale WireGuard peer %s (key %s): no node it knows has that key", where, g, k))
				}
			}
		}
	}
	return errors.Join(errs...)
}

// usableKey is what the datapath accepts: standard base64 of 32 bytes, not
// all zeros.
func usableKey(s string) bool {
	b, err := base64.StdEncoding.DecodeString(s)
	return err == nil && len(b) == 32 && !bytes.Equal(b, make([]byte, 32))
}
