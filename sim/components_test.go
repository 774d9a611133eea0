package sim

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/meshbed/meshbed/internal/testenv"
)

// TestIntegrationComponents: Components reports what runs, and follows
// stops and starts (a stopped apiserver takes its kvstoremesh with it).
func TestIntegrationComponents(t *testing.T) {
	testenv.Privileged(t)
	m, _ := startMesh(t, meshSpec(2, 2))
	c, _ := m.Cluster("cluster1")
	state := func() string {
		s := ""
		for _, cs := range c.Components() {
			s += fmt.Sprintf("%s%s=%t ", cs.Component, cs.Node, cs.Running)
			if cs.Exited != nil {
				t.Errorf("%s %s exited: %v", cs.Component, cs.Node, cs.Exited)
			}
		}
		return s
	}
	all := "apiserver=true kvstoremesh=true agentnode-1=true agentnode-2=true "
	if got := state(); got != all {
		t.Fatalf("components %s, want %s", got, all)
	}
	for _, step := range []struct {
		comp       Component
		node, verb string
		want       string
	}{
		{ComponentAPIServer, "", "stop", "apiserver=false kvstoremesh=false agentnode-1=true agentnode-2=true "},
		{ComponentAPIServer, "", "start", all},
		{ComponentAgent, "node-2", "stop", "apiserver=true kvstoremesh=true agentnode-1=true agentnode-2=false "},
		{ComponentAgent, "node-2", "start", all},
		{ComponentKVStoreMesh, "", "restart", all},
	} {
		if err := c.Process(step.comp, step.node, step.verb); err != nil {
			t.Fatalf("%s %s %s: %v", step.verb, step.comp, step.node, err)
		}
		if got := state(); got != step.want {
			t.Errorf("after %s %s %s: %s, want %s", step.verb, step.comp, step.node, got, step.want)
		}
	}
	// Components started again sync before the mesh closes.
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := m.Settle(ctx); err != nil {
		t.Fatal(err)
	}
}
