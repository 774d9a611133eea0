package sim

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/meshbed/meshbed/internal/testenv"
	"github.com/meshbed/meshbed/mesh/agent/cni"
)

// TestIntegrationKubeletAttachesPodsThroughCNI: the simulated kubelet
// attaches every pod through its node agent's CNI server, as meshbed-cni
// does on a Kind node, so the server's sandbox bookkeeping holds every
// pod: its own sandbox finds the endpoint the pod runs with, another
// sandbox of the same pod is refused.
func TestIntegrationKubeletAttachesPodsThroughCNI(t *testing.T) {
	testenv.Privileged(t)
	m, _ := startMesh(t, meshSpec(1, 2))
	deploy(t, m, echoManifest)
	c, _ := m.Cluster("cluster1")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	seen := 0
	for _, n := range c.Nodes() {
		client := cni.NewClient(n.cniSocket())
		for _, p := range n.podsNow() {
			seen++
			pod := cni.Pod{Namespace: p.Namespace, Name: p.Name}
			ep, err := client.Get(ctx, pod, p.sandbox)
			if err != nil {
				t.Fatalf("%s: CNI GET %s for its sandbox: %v", n.Name(), pod, err)
			}
			if ep.IP != p.IP || ep.PodInterface != "eth0" {
				t.Errorf("%s: CNI says %s is %s on %s, the pod runs with %s", n.Name(), pod, ep.IP, ep.PodInterface, p.IP)
			}
			if _, err := client.Get(ctx, pod, "another-sandbox"); !errors.Is(err, cni.ErrNotFound) {
				t.Errorf("%s: CNI GET %s for another sandbox: %v, want the unknown-container error", n.Name(), pod, err)
			}
		}
	}
	if seen == 0 {
		t.Fatal("no pods ran")
	}
}

// podsNow returns the pods running on n.
func (n *Node) podsNow() []*Pod {
	n.mu.Lock()
	defer n.mu.Unlock()
	var out []*Pod
	for _, p := range n.pods {
		out = append(out, p)
	}
	return out
}
