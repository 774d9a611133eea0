package agent

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/meshbed/meshbed/datapath/state"
	"github.com/meshbed/meshbed/mesh/identity"
	"github.com/meshbed/meshbed/mesh/service"
)

// A corrupt endpoints file does not stop the agent: it is moved aside and
// reported, and the endpoints are rebuilt from Kubernetes (the node's pods
// and their addresses) and the datapath (their endpoint IDs and
// interfaces); a pod the datapath does not hold is not invented.
func TestAgentRebuildsCorruptEndpointState(t *testing.T) {
	for name, content := range map[string]string{
		"truncated":        `[{"ID":7,"Namespace":"default","Pod":"tie`,
		"outside the CIDR": `[{"ID":7,"Namespace":"default","Pod":"tie","IP":"10.9.9.9","Identity":65537,"Interface":"lxc7"}]`,
		"duplicate ID":     `[{"ID":7,"Namespace":"default","Pod":"a","IP":"10.1.1.7","Interface":"lxc7"},{"ID":7,"Namespace":"default","Pod":"b","IP":"10.1.1.8","Interface":"lxc8"}]`,
		"not JSON":         "\x00\x01garbage",
	} {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, endpointsFile)
			if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
				t.Fatal(err)
			}
			pod := func(name, ip string) *corev1.Pod {
				return &corev1.Pod{
					ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default", Labels: map[string]string{"app": name}},
					Spec:       corev1.PodSpec{NodeName: "node-1"},
					Status:     corev1.PodStatus{Phase: corev1.PodRunning, PodIP: ip},
				}
			}
			other := pod("elsewhere", "10.1.2.9")
			other.Spec.NodeName = "node-2"
			restored := &state.State{Endpoints: []state.Endpoint{
				{ID: 7, IP: netip.MustParseAddr("10.1.1.7"), Identity: 65537, Interface: "lxc7"},
			}}
			a, dp, _, _ := setupState(t, service.ModeWithdraw, restored, dir,
				pod("tie", "10.1.1.7"), pod("unplumbed", "10.1.1.8"), pod("pending", ""), other)

			eps := a.Endpoints()
			if len(eps) != 1 {
				t.Fatalf("rebuilt endpoints %+v, want only default/tie", eps)
			}
			ep := eps[0]
			wantID, ok := a.ids.LookupLabels(identity.PodLabels("cluster1", "default", map[string]string{"app": "tie"}))
			if !ok || ep.ID != 7 || ep.IP != netip.MustParseAddr("10.1.1.7") || ep.Interface != "lxc7" || ep.Identity != wantID || ep.Pod != "tie" {
				t.Fatalf("rebuilt endpoint %+v, want ID 7, 10.1.1.7, lxc7, identity %d", ep, wantID)
			}
			eventually(t, "the datapath keeps the endpoint", func() error {
				s := dp.get()
				if s == nil || len(s.Endpoints) != 1 || s.Endpoints[0].ID != 7 {
					return fmt.Errorf("programmed endpoints %+v", s)
				}
				return nil
			})
			if got, err := os.ReadFile(path + ".corrupt"); err != nil || string(got) != content {
				t.Errorf("corrupt file not kept aside: %v", err)
			}
			data, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("rebuilt state not saved: %v", err)
			}
			if saved, err := decodeEndpoints(data, netip.MustParsePrefix("10.1.1.0/24")); err != nil || len(saved) != 1 || saved[0] != ep {
				t.Errorf("saved state %s (%v), want the rebuilt endpoint", data, err)
			}
			// The rebuilt address and ID are not handed out again.
			a.mu.Lock()
			defer a.mu.Unlock()
			if !a.ipam.used[ep.IP] || !a.ipam.ids[ep.ID] {
				t.Error("rebuilt endpoint's address or ID not reserved")
			}
		})
	}
}

func TestDecodeEndpoints(t *testing.T) {
	cidr := netip.MustParsePrefix("10.1.1.0/24")
	good := []Endpoint{
		{ID: 1, Namespace: "default", Pod: "a", IP: netip.MustParseAddr("10.1.1.2"), Identity: 65537, Interface: "lxc1"},
		{ID: 2, Namespace: "default", Pod: "b", IP: netip.MustParseAddr("10.1.1.3"), Identity: 65538, Interface: "lxc2"},
	}
	data, _ := json.Marshal(good)
	if got, err := decodeEndpoints(data, cidr); err != nil || len(got) != 2 || got[1] != good[1] {
		t.Fatalf("decode of a good file = %+v, %v", got, err)
	}
	if got, err := decodeEndpoints([]byte("[]"), cidr); err != nil || len(got) != 0 {
		t.Fatalf("empty list = %+v, %v", got, err)
	}
	for _, bad := range []string{
		`{}`, `null x`, `[{"ID":0,"Namespace":"d","Pod":"a","IP":"10.1.1.2","Interface":"l"}]`,
		`[{"ID":1,"Namespace":"","Pod":"a","IP":"10.1.1.2","Interface":"l"}]`,
		`[{"ID":1,"Namespace":"d","Pod":"a","IP":"","Interface":"l"}]`,
		`[{"ID":1,"Namespace":"d","Pod":"a","IP":"10.1.1.2","Interface":"l"},{"ID":2,"Namespace":"d","Pod":"a","IP":"10.1.1.3","Interface":"m"}]`,
		`[{"ID":70000,"Namespace":"d","Pod":"a","IP":"10.1.1.2","Interface":"l"}]`,
	} {
		if got, err := decodeEndpoints([]byte(bad), cidr); err == nil {
			t.Errorf("decode %s = %+v, want an error", bad, got)
		} else if !errors.Is(err, errCorruptState) {
			t.Errorf("decode %s: %v is not errCorruptState", bad, err)
		}
	}
}

// FuzzDecodeEndpoints: whatever the file holds, decoding does not panic,
// and what it accepts satisfies the invariants restore relies on and
// survives a save and a reload unchanged.
func FuzzDecodeEndpoints(f *testing.F) {
	f.Add([]byte(`[{"ID":1,"Namespace":"default","Pod":"a","IP":"10.1.1.2","Identity":65537,"Interface":"lxc1"}]`))
	f.Add([]byte(`[]`))
	f.Add([]byte(`null`))
	f.Add([]byte(`[{"ID":7,"Namespace":"default","Pod":"tie`))
	f.Add([]byte(`[{"ID":1,"IP":"10.1.1.2"},{"ID":1,"IP":"10.1.1.2"}]`))
	f.Add([]byte(`[{"ID":65535,"Namespace":"x","Pod":"y","IP":"10.1.1.255","Identity":4294967295,"Interface":"i"}]`))
	cidr := netip.MustParsePrefix("10.1.1.0/24")
	f.Fuzz(func(t *testing.T, data []byte) {
		eps, err := decodeEndpoints(data, cidr)
		if err != nil {
			if !errors.Is(err, errCorruptState) {
				t.Fatalf("error %v is not errCorruptState", err)
			}
			return
		}
		ips, ids := map[netip.Addr]bool{}, map[uint16]bool{}
		for _, ep := range eps {
			if !cidr.Contains(ep.IP) || ep.ID == 0 || ep.Interface == "" || ep.Pod == "" || ips[ep.IP] || ids[ep.ID] {
				t.Fatalf("accepted endpoint %+v breaks an invariant", ep)
			}
			ips[ep.IP], ids[ep.ID] = true, true
		}
		again, err := json.Marshal(eps)
		if err != nil {
			t.Fatal(err)
		}
		back, err := decodeEndpoints(again, cidr)
		if err != nil || len(back) != len(eps) {
			t.Fatalf("saved form %s does not reload: %v", again, err)
		}
		for i := range eps {
			if back[i] != eps[i] {
				t.Fatalf("reload changed %+v to %+v", eps[i], back[i])
			}
		}
	})
}
