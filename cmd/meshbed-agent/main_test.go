package main

import (
	"fmt"
	"strings"
	"testing"

	"github.com/meshbed/meshbed/daemon"
	"github.com/meshbed/meshbed/mesh/agent"
	"github.com/meshbed/meshbed/mesh/service"
)

// TestFlagDefaultsAreThePackageDefaults fails when a flag's default and
// agent.DefaultConfig, from which the simulator starts every agent,
// disagree.
func TestFlagDefaultsAreThePackageDefaults(t *testing.T) {
	d := agent.DefaultConfig()
	dd := daemon.DefaultAgentConfig()
	want := map[string]string{
		"max-connected-clusters": fmt.Sprint(d.MaxConnectedClusters),
		"fail-static":            fmt.Sprint(d.Mode == service.ModeFailStatic),
		"policy-all-clusters":    fmt.Sprint(d.PolicyAllClusters),
		"allow-localhost":        fmt.Sprint(d.PolicyAllowLocalhost),
		"sync-timeout":           d.SyncTimeout.String(),
		"cni-socket":             dd.CNISocket,
		"state-socket":           dd.StateSocket,
		"flows-listen-address":   dd.FlowsAddress,
		"prometheus-serve-addr":  dd.PrometheusAddress,
	}
	f := newCommand(&options{}).Flags()
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

func TestEncryptionFlags(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string // "" valid, else part of the error
	}{
		{nil, ""},
		{[]string{"--encryption=wireguard"}, ""},
		{[]string{"--encryption=wireguard", "--encryption-strict", "--wireguard-impl=userspace"}, ""},
		{[]string{"--encryption=ipsec"}, `--encryption: unknown encryption "ipsec"`},
		{[]string{"--encryption-strict"}, "--encryption-strict needs --encryption=wireguard"},
		{[]string{"--encryption=wireguard", "--wireguard-impl=boringtun"}, `--wireguard-impl "boringtun"`},
		{[]string{"--encryption=wireguard", "--state-dir="}, "needs --state-dir"},
	} {
		var o options
		cmd := newCommand(&o)
		if err := cmd.ParseFlags(tc.args); err != nil {
			t.Fatal(err)
		}
		_, err := o.agent.EncryptionConfig()
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%v: %v", tc.args, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("%v: got %v, want an error with %q", tc.args, err, tc.want)
		}
	}
}
