package main

import (
	"fmt"
	"testing"

	"github.com/meshbed/meshbed/mesh/agent"
	"github.com/meshbed/meshbed/mesh/service"
)

// TestFlagDefaultsAreThePackageDefaults fails when a flag's default and
// agent.DefaultConfig, from which the simulator starts every agent,
// disagree.
func TestFlagDefaultsAreThePackageDefaults(t *testing.T) {
	d := agent.DefaultConfig()
	want := map[string]string{
		"max-connected-clusters": fmt.Sprint(d.MaxConnectedClusters),
		"fail-static":            fmt.Sprint(d.Mode == service.ModeFailStatic),
		"policy-all-clusters":    fmt.Sprint(d.PolicyAllClusters),
		"allow-localhost":        fmt.Sprint(d.PolicyAllowLocalhost),
		"sync-timeout":           d.SyncTimeout.String(),
	}
	f := newCommand().Flags()
	for name, w := range want {
		fl := f.Lookup(name)
		if fl == nil {
			t.Errorf("no flag --%s", name)
			continue
		}
		if fl.DefValue != w {
			t.Errorf("--%s defaults to %s, agent.DefaultConfig to %s", name, fl.DefValue, w)
		}
	}
	// The package's defaults that have no flag must be what New would
	// fill in anyway, so a zero Config and DefaultConfig differ only in
	// the flags above.
	if d.Coalesce != agent.DefaultCoalesce {
		t.Errorf("DefaultConfig().Coalesce = %v, want %v", d.Coalesce, agent.DefaultCoalesce)
	}
	// What the binary always allows by default, the simulator must too.
	if !d.PolicyAllowLocalhost {
		t.Error("DefaultConfig().PolicyAllowLocalhost is false; the binary has always allowed the node to reach its pods by default")
	}
}
