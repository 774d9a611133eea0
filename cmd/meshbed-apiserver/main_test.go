package main

import (
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/meshbed/meshbed/mesh/apiserver"
	"github.com/meshbed/meshbed/mesh/identity"
	"github.com/meshbed/meshbed/mesh/pki"
)

func TestValidateNamesTheFlag(t *testing.T) {
	ca, err := pki.NewCA("test", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	tlsDir := t.TempDir()
	if err := pki.IssueServerTLS(pki.Dir(tlsDir), ca, "cluster1", []net.IP{net.ParseIP("10.0.0.1")}, time.Hour); err != nil {
		t.Fatal(err)
	}
	cmd := newCommand()
	if err := cmd.ParseFlags([]string{"--cluster-name=cluster1", "--cluster-id=1", "--tls-dir=" + tlsDir}); err != nil {
		t.Fatal(err)
	}
	// The defaults of every other flag, as the command sets them.
	good := options{clusterName: "cluster1", clusterID: 1, maxConnected: 255, listen: "0.0.0.0:2379",
		tlsDir: tlsDir, heartbeat: apiserver.DefaultHeartbeatInterval, configPoll: 10 * time.Second, kvstoremesh: true,
		identityGCInterval: identity.DefaultGCInterval, identityHeartbeatTimeout: identity.DefaultHeartbeatTimeout}
	if got, _ := cmd.Flags().GetString("listen"); got != good.listen {
		t.Fatalf("--listen default %q, test assumes %q", got, good.listen)
	}
	tests := []struct {
		name   string
		mutate func(*options)
		want   []string
	}{
		{"valid", func(*options) {}, nil},
		{"cluster name", func(o *options) { o.clusterName = "Cluster_1" }, []string{"--cluster-name"}},
		{"empty cluster name", func(o *options) { o.clusterName = "" }, []string{"--cluster-name"}},
		{"cluster ID 0", func(o *options) { o.clusterID = 0 }, []string{"--cluster-id"}},
		{"cluster ID 256", func(o *options) { o.clusterID = 256 }, []string{"--cluster-id"}},
		{"cluster ID 300 with 511", func(o *options) { o.clusterID = 300; o.maxConnected = 511 }, nil},
		{"max connected", func(o *options) { o.maxConnected = 128 }, []string{"--max-connected-clusters"}},
		{"listen without port", func(o *options) { o.listen = "10.0.0.1" }, []string{"--listen"}},
		{"listen on a name", func(o *options) { o.listen = "apiserver:2379" }, []string{"--listen"}},
		{"heartbeat", func(o *options) { o.heartbeat = 0 }, []string{"--heartbeat-interval"}},
		{"identity gc", func(o *options) { o.identityGCInterval = 0; o.identityHeartbeatTimeout = -time.Second },
			[]string{"--identity-gc-interval", "--identity-heartbeat-timeout"}},
		{"remote clusters", func(o *options) { o.remoteClusters = []string{"ok", "-bad"} }, []string{"--remote-clusters"}},
		{"no TLS dir", func(o *options) { o.tlsDir = "" }, []string{"--tls-dir"}},
		{"TLS dir without files", func(o *options) { o.tlsDir = t.TempDir() }, []string{"--tls-dir"}},
		{"everything at once", func(o *options) { o.clusterName = ""; o.clusterID = 0; o.listen = "x" },
			[]string{"--cluster-name", "--cluster-id", "--listen"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := good
			tt.mutate(&o)
			err := o.validate()
			if len(tt.want) == 0 {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil {
				t.Fatal("accepted")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not name %s", err, w)
				}
			}
		})
	}
}

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
	f := newCommand().Flags()
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
