package main

import (
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"os"

	"github.com/spf13/cobra"

	"github.com/meshbed/meshbed/internal/cmdutil"
	"github.com/meshbed/meshbed/mesh/apiserver"
	"github.com/meshbed/meshbed/mesh/event"
	"github.com/meshbed/meshbed/mesh/kvstore"
	"github.com/meshbed/meshbed/mesh/kvstoremesh"
	"github.com/meshbed/meshbed/mesh/metrics"
	"github.com/meshbed/meshbed/mesh/pki"
	"github.com/meshbed/meshbed/mesh/wire"
)

// kvstoremeshOptions are the flags of `meshbed-apiserver kvstoremesh`.
type kvstoremeshOptions struct {
	clusterName, configDir, localEndpoint, tlsDir string
	clusterID, maxConnected                       uint32
	logLevel, prometheusAddr                      string
}

// kvstoremeshCmd runs kvstoremesh in a process of its own beside the
// cluster's mesh-apiserver (as Cilium runs it in a container of its own),
// so that it can be stopped and restarted alone.
func kvstoremeshCmd() *cobra.Command {
	var o kvstoremeshOptions
	cmd := &cobra.Command{
		Use:   "kvstoremesh",
		Short: "Mirror the remote clusters into this cluster's mesh-apiserver, from a process of its own",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runKVStoreMesh(cmd, o)
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.clusterName, "cluster-name", "", "name of this cluster")
	f.Uint32Var(&o.clusterID, "cluster-id", 0, "ID of this cluster")
	f.Uint32Var(&o.maxConnected, "max-connected-clusters", wire.MaxConnectedClusters255, "255 or 511; equal on every cluster of the mesh")
	f.StringVar(&o.configDir, "clustermesh-config", "", "directory of remote cluster configs, one file per cluster (required)")
	f.StringVar(&o.localEndpoint, "local-endpoint", "", "https://host:port of this cluster's mesh-apiserver (required)")
	f.StringVar(&o.tlsDir, "tls-dir", "/var/lib/meshbed/kvstoremesh-tls", "directory with ca.crt and kvstoremesh's pair for this cluster's mesh-apiserver (kvstoremesh.crt/.key, user kvstoremesh-<cluster>)")
	f.StringVar(&o.logLevel, "log-level", "info", "debug, info, warn or error")
	f.StringVar(&o.prometheusAddr, "prometheus-serve-addr", "", fmt.Sprintf("serve kvstoremesh's Prometheus metrics at /metrics on this address, e.g. :%d (empty: not served)", metrics.KVStoreMeshPort))
	return cmd
}

func (o kvstoremeshOptions) validate() error {
	var errs []error
	errs = append(errs, cmdutil.ClusterFlags(o.clusterName, o.clusterID, o.maxConnected)...)
	if o.configDir == "" {
		errs = append(errs, errors.New("--clustermesh-config is required"))
	}
	if u, err := url.Parse(o.localEndpoint); err != nil || u.Scheme != "https" || u.Host == "" || u.Port() == "" {
		errs = append(errs, fmt.Errorf("--local-endpoint %q: want https://host:port", o.localEndpoint))
	}
	if err := apiserver.VerifyPair(pki.Dir(o.tlsDir), pki.KVStoreMeshPair, pki.KVStoreMeshUser(o.clusterName)); err != nil {
		errs = append(errs, fmt.Errorf("--tls-dir: %w", err))
	}
	return errors.Join(errs...)
}

func runKVStoreMesh(cmd *cobra.Command, o kvstoremeshOptions) error {
	ctx := cmd.Context()
	var level slog.Level
	if err := level.UnmarshalText([]byte(o.logLevel)); err != nil {
		return fmt.Errorf("--log-level: %w", err)
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	if err := o.validate(); err != nil {
		return err
	}
	lc, err := apiserver.ClientConfig(pki.Dir(o.tlsDir), pki.KVStoreMeshPair, o.localEndpoint)
	if err != nil {
		return fmt.Errorf("--tls-dir: %w", err)
	}
	lc.Logger = log.With("component", "local")
	local, err := kvstore.Connect(ctx, lc)
	if err != nil {
		return err
	}
	defer local.Close()
	reg := metrics.NewProcessRegistry()
	events, err := event.Counted(event.Scope(event.Logger(log), o.clusterName, "", event.ComponentKVStoreMesh), reg)
	if err != nil {
		return err
	}
	km, err := kvstoremesh.New(kvstoremesh.Config{
		ClusterName: o.clusterName, ClusterID: o.clusterID, MaxConnectedClusters: o.maxConnected,
		ConfigDir: o.configDir, Local: local,
		Logger: log.With("component", "kvstoremesh"), Events: events, Metrics: reg,
	})
	if err != nil {
		return err
	}
	if err := metrics.Serve(ctx, o.prometheusAddr, reg, log.With("component", "metrics")); err != nil {
		return err
	}
	log.Info("kvstoremesh running", "cluster", o.clusterName, "local", o.localEndpoint)
	return km.Run(ctx)
}
