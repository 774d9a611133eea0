package meshapiserver

import (
	"context"
	"errors"
	"fmt"
	"net/url"

	"github.com/meshbed/meshbed/internal/cmdutil"
	"github.com/meshbed/meshbed/mesh/apiserver"
	"github.com/meshbed/meshbed/mesh/event"
	"github.com/meshbed/meshbed/mesh/kvstore"
	"github.com/meshbed/meshbed/mesh/kvstoremesh"
	"github.com/meshbed/meshbed/mesh/metrics"
	"github.com/meshbed/meshbed/mesh/pki"
)

// KVStoreMeshOptions are the flags of `meshbed-apiserver kvstoremesh`:
// kvstoremesh in a process of its own beside the cluster's mesh-apiserver
// (as Cilium runs it in a container of its own), so that it can be stopped
// and restarted alone.
type KVStoreMeshOptions struct {
	ClusterName, ConfigDir, LocalEndpoint, TLSDir string
	ClusterID, MaxConnected                       uint32
	LogLevel, PrometheusAddr                      string
}

// Validate checks every flag and reports all mistakes at once, each naming
// its flag.
func (o KVStoreMeshOptions) Validate() error {
	var errs []error
	errs = append(errs, cmdutil.ClusterFlags(o.ClusterName, o.ClusterID, o.MaxConnected)...)
	if o.ConfigDir == "" {
		errs = append(errs, errors.New("--clustermesh-config is required"))
	}
	if u, err := url.Parse(o.LocalEndpoint); err != nil || u.Scheme != "https" || u.Host == "" || u.Port() == "" {
		errs = append(errs, fmt.Errorf("--local-endpoint %q: want https://host:port", o.LocalEndpoint))
	}
	if err := apiserver.VerifyPair(pki.Dir(o.TLSDir), pki.KVStoreMeshPair, pki.KVStoreMeshUser(o.ClusterName)); err != nil {
		errs = append(errs, fmt.Errorf("--tls-dir: %w", err))
	}
	return errors.Join(errs...)
}

// RunKVStoreMesh connects to the local mesh-apiserver of o and mirrors the
// remote clusters into it until ctx ends.
func RunKVStoreMesh(ctx context.Context, o KVStoreMeshOptions) error {
	log, err := cmdutil.Logger(o.LogLevel)
	if err != nil {
		return err
	}
	if err := o.Validate(); err != nil {
		return err
	}
	lc, err := apiserver.ClientConfig(pki.Dir(o.TLSDir), pki.KVStoreMeshPair, o.LocalEndpoint)
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
	events, err := event.Counted(event.Scope(event.Logger(log), o.ClusterName, "", event.ComponentKVStoreMesh), reg)
	if err != nil {
		return err
	}
	km, err := kvstoremesh.New(kvstoremesh.Config{
		ClusterName: o.ClusterName, ClusterID: o.ClusterID, MaxConnectedClusters: o.MaxConnected,
		ConfigDir: o.ConfigDir, Local: local,
		Logger: log.With("component", "kvstoremesh"), Events: events, Metrics: reg,
	})
	if err != nil {
		return err
	}
	if err := metrics.Serve(ctx, o.PrometheusAddr, reg, log.With("component", "metrics")); err != nil {
		return err
	}
	log.Info("kvstoremesh running", "cluster", o.ClusterName, "local", o.LocalEndpoint)
	return km.Run(ctx)
}
