package main

import (
	"fmt"
	"testing"

	"github.com/meshbed/meshbed/mesh/apiserver"
)

// TestFlagDefaultsAreThePackageDefaults fails when a flag's default and
// apiserver.DefaultConfig, from which the simulator starts every
// mesh-apiserver, disagree.
func TestFlagDefaultsAreThePackageDefaults(t *testing.T) {
	d := apiserver.DefaultConfig()
	want := map[string]string{
		"max-connected-clusters":     fmt.Sprint(d.MaxConnectedClusters),
		"listen":                     d.ListenAddress,
		"heartbeat-interval":         d.HeartbeatInterval.String(),
		"identity-gc-interval":       d.IdentityGCInterval.String(),
		"identity-heartbeat-timeout": d.IdentityHeartbeatTimeout.String(),
		"config-poll-interval":       apiserver.DefaultConfigPollInterval.String(),
	}
	f := newCommand(&options{}).Flags()
	for name, w := range want {
		fl := f.Lookup(name)
		if fl == nil {
			t.Errorf("no flag --%s", name)
			continue
		}
		if fl.DefValue != w {
			t.Errorf("--%s defaults to %s, apiserver.DefaultConfig to %s", name, fl.DefValue, w)
		}
	}
}
