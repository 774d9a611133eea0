package meshapiserver

import (
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
	// The defaults of every other flag, as cmd/meshbed-apiserver sets
	// them (its test checks that they are the package's).
	d := apiserver.DefaultConfig()
	good := Options{ClusterName: "cluster1", ClusterID: 1, MaxConnected: d.MaxConnectedClusters, Listen: d.ListenAddress,
		TLSDir: tlsDir, Heartbeat: d.HeartbeatInterval, ConfigPoll: apiserver.DefaultConfigPollInterval, KVStoreMesh: true,
		IdentityGCInterval: identity.DefaultGCInterval, IdentityHeartbeatTimeout: identity.DefaultHeartbeatTimeout}
	tests := []struct {
		name   string
		mutate func(*Options)
		want   []string
	}{
		{"valid", func(*Options) {}, nil},
		{"cluster name", func(o *Options) { o.ClusterName = "Cluster_1" }, []string{"--cluster-name"}},
		{"empty cluster name", func(o *Options) { o.ClusterName = "" }, []string{"--cluster-name"}},
		{"cluster ID 0", func(o *Options) { o.ClusterID = 0 }, []string{"--cluster-id"}},
		{"cluster ID 256", func(o *Options) { o.ClusterID = 256 }, []string{"--cluster-id"}},
		{"cluster ID 300 with 511", func(o *Options) { o.ClusterID = 300; o.MaxConnected = 511 }, nil},
		{"max connected", func(o *Options) { o.MaxConnected = 128 }, []string{"--max-connected-clusters"}},
		{"listen without port", func(o *Options) { o.Listen = "10.0.0.1" }, []string{"--listen"}},
		{"listen on a name", func(o *Options) { o.Listen = "apiserver:2379" }, []string{"--listen"}},
		{"heartbeat", func(o *Options) { o.Heartbeat = 0 }, []string{"--heartbeat-interval"}},
		{"identity gc", func(o *Options) { o.IdentityGCInterval = 0; o.IdentityHeartbeatTimeout = -time.Second },
			[]string{"--identity-gc-interval", "--identity-heartbeat-timeout"}},
		{"remote clusters", func(o *Options) { o.RemoteClusters = []string{"ok", "-bad"} }, []string{"--remote-clusters"}},
		{"no TLS dir", func(o *Options) { o.TLSDir = "" }, []string{"--tls-dir"}},
		{"TLS dir without files", func(o *Options) { o.TLSDir = t.TempDir() }, []string{"--tls-dir"}},
		{"everything at once", func(o *Options) { o.ClusterName = ""; o.ClusterID = 0; o.Listen = "x" },
			[]string{"--cluster-name", "--cluster-id", "--listen"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := good
			tt.mutate(&o)
			err := o.Validate()
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
