// Command meshbed-apiserver is the mesh-apiserver of one cluster: an
// embedded, ephemeral etcd that exports the cluster's nodes, global services,
// ipcache entries and identities to the other clusters of the mesh over
// mTLS, and (kvstoremesh, on by default) mirrors the remote clusters into it
// for the cluster's own agents.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/meshbed/meshbed/daemon/meshapiserver"
	"github.com/meshbed/meshbed/mesh/apiserver"
	"github.com/meshbed/meshbed/mesh/metrics"
	"github.com/meshbed/meshbed/mesh/wire"
)

// options are the flags of the command and of its kvstoremesh subcommand.
type options struct {
	apiserver   meshapiserver.Options
	kvstoremesh meshapiserver.KVStoreMeshOptions
}

func main() {
	cmd := newCommand(&options{})
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := cmd.ExecuteContext(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "meshbed-apiserver:", err)
		os.Exit(1)
	}
}

func newCommand(opts *options) *cobra.Command {
	o := &opts.apiserver
	// Every default comes from the package, which the simulator uses too.
	d := apiserver.DefaultConfig()
	cmd := &cobra.Command{
		Use:           "meshbed-apiserver",
		Short:         "The meshbed mesh-apiserver of one cluster",
		SilenceUsage:  true,
		SilenceErrors: true,
		Args:          cobra.NoArgs,
		RunE:          func(cmd *cobra.Command, _ []string) error { return meshapiserver.Run(cmd.Context(), *o) },
	}
	cmd.AddCommand(kvstoremeshCmd(&opts.kvstoremesh))
	f := cmd.Flags()
	f.StringVar(&o.ClusterName, "cluster-name", "", "name of this cluster ([a-z0-9-], at most 32 characters)")
	f.Uint32Var(&o.ClusterID, "cluster-id", 0, "ID of this cluster (1..255, or 1..511 with --max-connected-clusters=511)")
	f.Uint32Var(&o.MaxConnected, "max-connected-clusters", d.MaxConnectedClusters, "255 or 511; equal on every cluster of the mesh")
	f.StringVar(&o.Kubeconfig, "kubeconfig", "", "kubeconfig file (default: in-cluster configuration)")
	f.StringVar(&o.Listen, "listen", d.ListenAddress, "host:port of the etcd client listener (mTLS)")
	f.StringVar(&o.TLSDir, "tls-dir", "/var/lib/meshbed/apiserver-tls", "directory with ca.crt, server.crt/.key and admin.crt/.key (user admin-<cluster>)")
	f.StringVar(&o.ConfigDir, "clustermesh-config", "", "directory of remote cluster configs, one file per cluster (kvstoremesh; the file names are also the clusters allowed to read this one)")
	f.BoolVar(&o.KVStoreMesh, "kvstoremesh", true, "mirror the remote clusters of --clustermesh-config into this etcd for the local agents")
	f.StringSliceVar(&o.RemoteClusters, "remote-clusters", nil, "further clusters allowed to read this one (users remote-<name>), besides those of --clustermesh-config")
	f.DurationVar(&o.Heartbeat, "heartbeat-interval", d.HeartbeatInterval, "how often cilium/.heartbeat is rewritten")
	f.DurationVar(&o.ConfigPoll, "config-poll-interval", apiserver.DefaultConfigPollInterval, "how often --clustermesh-config is rescanned for the remote readers' users")
	f.DurationVar(&o.IdentityGCInterval, "identity-gc-interval", d.IdentityGCInterval, "how often identities that no pod uses are looked for (as Cilium's operator flag)")
	f.DurationVar(&o.IdentityHeartbeatTimeout, "identity-heartbeat-timeout", d.IdentityHeartbeatTimeout, "how long an identity must stay unused before it is deleted and withdrawn from the mesh")
	f.StringVar(&o.DataDir, "data-dir", "", "etcd data directory, wiped on start (default: a temporary directory)")
	f.StringVar(&o.LogLevel, "log-level", "info", "debug, info, warn or error")
	f.StringVar(&o.PrometheusAddr, "prometheus-serve-addr", apiserver.DefaultPrometheusServeAddr, fmt.Sprintf("serve the mesh-apiserver's and kvstoremesh's Prometheus metrics at /metrics on this address, e.g. :%d (empty: not served)", metrics.APIServerPort))
	return cmd
}

// kvstoremeshCmd runs kvstoremesh in a process of its own beside the
// cluster's mesh-apiserver (as Cilium runs it in a container of its own),
// so that it can be stopped and restarted alone.
func kvstoremeshCmd(o *meshapiserver.KVStoreMeshOptions) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "kvstoremesh",
		Short: "Mirror the remote clusters into this cluster's mesh-apiserver, from a process of its own",
		Args:  cobra.NoArgs,
		RunE:  func(cmd *cobra.Command, _ []string) error { return meshapiserver.RunKVStoreMesh(cmd.Context(), *o) },
	}
	f := cmd.Flags()
	f.StringVar(&o.ClusterName, "cluster-name", "", "name of this cluster")
	f.Uint32Var(&o.ClusterID, "cluster-id", 0, "ID of this cluster")
	f.Uint32Var(&o.MaxConnected, "max-connected-clusters", wire.MaxConnectedClusters255, "255 or 511; equal on every cluster of the mesh")
	f.StringVar(&o.ConfigDir, "clustermesh-config", "", "directory of remote cluster configs, one file per cluster (required)")
	f.StringVar(&o.LocalEndpoint, "local-endpoint", "", "https://host:port of this cluster's mesh-apiserver (required)")
	f.StringVar(&o.TLSDir, "tls-dir", "/var/lib/meshbed/kvstoremesh-tls", "directory with ca.crt and kvstoremesh's pair for this cluster's mesh-apiserver (kvstoremesh.crt/.key, user kvstoremesh-<cluster>)")
	f.StringVar(&o.LogLevel, "log-level", "info", "debug, info, warn or error")
	f.StringVar(&o.PrometheusAddr, "prometheus-serve-addr", "", fmt.Sprintf("serve kvstoremesh's Prometheus metrics at /metrics on this address, e.g. :%d (empty: not served)", metrics.KVStoreMeshPort))
	return cmd
}
