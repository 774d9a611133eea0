// Command meshbed-apiserver is the mesh-apiserver of one cluster: an
// embedded, ephemeral etcd that exports the cluster's nodes, global services,
// ipcache entries and identities to the other clusters of the mesh over
// mTLS, and (kvstoremesh, on by default) mirrors the remote clusters into it
// for the cluster's own agents.
package main

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/meshbed/meshbed/internal/cmdutil"
	"github.com/meshbed/meshbed/mesh/apiserver"
	"github.com/meshbed/meshbed/mesh/event"
	"github.com/meshbed/meshbed/mesh/kvstoremesh"
	"github.com/meshbed/meshbed/mesh/metrics"
	"github.com/meshbed/meshbed/mesh/pki"
	"github.com/meshbed/meshbed/mesh/wire"
)

type options struct {
	clusterName, kubeconfig, listen, tlsDir, configDir, dataDir string
	clusterID, maxConnected                                     uint32
	kvstoremesh                                                 bool
	remoteClusters                                              []string
	heartbeat, configPoll                                       time.Duration
	identityGCInterval, identityHeartbeatTimeout                time.Duration
	logLevel, prometheusAddr                                    string
}

func main() {
	cmd := newCommand()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := cmd.ExecuteContext(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "meshbed-apiserver:", err)
		os.Exit(1)
	}
}

func newCommand() *cobra.Command {
	var o options
	// Every default comes from the package, which the simulator uses too.
	d := apiserver.DefaultConfig()
	cmd := &cobra.Command{
		Use:           "meshbed-apiserver",
		Short:         "The meshbed mesh-apiserver of one cluster",
		SilenceUsage:  true,
		SilenceErrors: true,
		Args:          cobra.NoArgs,
		RunE:          func(cmd *cobra.Command, _ []string) error { return run(cmd.Context(), o) },
	}
	cmd.AddCommand(kvstoremeshCmd())
	f := cmd.Flags()
	f.StringVar(&o.clusterName, "cluster-name", "", "name of this cluster ([a-z0-9-], at most 32 characters)")
	f.Uint32Var(&o.clusterID, "cluster-id", 0, "ID of this cluster (1..255, or 1..511 with --max-connected-clusters=511)")
	f.Uint32Var(&o.maxConnected, "max-connected-clusters", d.MaxConnectedClusters, "255 or 511; equal on every cluster of the mesh")
	f.StringVar(&o.kubeconfig, "kubeconfig", "", "kubeconfig file (default: in-cluster configuration)")
	f.StringVar(&o.listen, "listen", d.ListenAddress, "host:port of the etcd client listener (mTLS)")
	f.StringVar(&o.tlsDir, "tls-dir", "/var/lib/meshbed/apiserver-tls", "directory with ca.crt, server.crt/.key and admin.crt/.key (user admin-<cluster>)")
	f.StringVar(&o.configDir, "clustermesh-config", "", "directory of remote cluster configs, one file per cluster (kvstoremesh; the file names are also the clusters allowed to read this one)")
	f.BoolVar(&o.kvstoremesh, "kvstoremesh", true, "mirror the remote clusters of --clustermesh-config into this etcd for the local agents")
	f.StringSliceVar(&o.remoteClusters, "remote-clusters", nil, "further clusters allowed to read this one (users remote-<name>), besides those of --clustermesh-config")
	f.DurationVar(&o.heartbeat, "heartbeat-interval", d.HeartbeatInterval, "how often cilium/.heartbeat is rewritten")
	f.DurationVar(&o.configPoll, "config-poll-interval", apiserver.DefaultConfigPollInterval, "how often --clustermesh-config is rescanned for the remote readers' users")
	f.DurationVar(&o.identityGCInterval, "identity-gc-interval", d.IdentityGCInterval, "how often identities that no pod uses are looked for (as Cilium's operator flag)")
	f.DurationVar(&o.identityHeartbeatTimeout, "identity-heartbeat-timeout", d.IdentityHeartbeatTimeout, "how long an identity must stay unused before it is deleted and withdrawn from the mesh")
	f.StringVar(&o.dataDir, "data-dir", "", "etcd data directory, wiped on start (default: a temporary directory)")
	f.StringVar(&o.logLevel, "log-level", "info", "debug, info, warn or error")
	f.StringVar(&o.prometheusAddr, "prometheus-serve-addr", apiserver.DefaultPrometheusServeAddr, fmt.Sprintf("serve the mesh-apiserver's and kvstoremesh's Prometheus metrics at /metrics on this address, e.g. :%d (empty: not served)", metrics.APIServerPort))
	return cmd
}

// validate checks every flag and reports all mistakes at once, each naming
// its flag.
func (o options) validate() error {
	var errs []error
	errs = append(errs, cmdutil.ClusterFlags(o.clusterName, o.clusterID, o.maxConnected)...)
	if host, port, err := net.SplitHostPort(o.listen); err != nil {
		errs = append(errs, fmt.Errorf("--listen %q: %w", o.listen, err))
	} else if net.ParseIP(host) == nil {
		errs = append(errs, fmt.Errorf("--listen %q: host must be an IP address", o.listen))
	} else if port == "" {
		errs = append(errs, fmt.Errorf("--listen %q: no port", o.listen))
	}
	if o.heartbeat <= 0 {
		errs = append(errs, fmt.Errorf("--heartbeat-interval %v: must be positive", o.heartbeat))
	}
	if o.identityGCInterval <= 0 {
		errs = append(errs, fmt.Errorf("--identity-gc-interval %v: must be positive", o.identityGCInterval))
	}
	if o.identityHeartbeatTimeout <= 0 {
		errs = append(errs, fmt.Errorf("--identity-heartbeat-timeout %v: must be positive", o.identityHeartbeatTimeout))
	}
	if o.configPoll <= 0 {
		errs = append(errs, fmt.Errorf("--config-poll-interval %v: must be positive", o.configPoll))
	}
	for _, r := range o.remoteClusters {
		if err := wire.ValidateClusterName(r); err != nil {
			errs = append(errs, fmt.Errorf("--remote-clusters: %w", err))
		}
	}
	if o.tlsDir == "" {
		errs = append(errs, errors.New("--tls-dir is required"))
	} else {
		d := pki.Dir(o.tlsDir)
		if _, err := d.LoadCA(); err != nil {
			errs = append(errs, fmt.Errorf("--tls-dir: %w", err))
		} else {
			if err := d.Verify(pki.ServerName, x509.ExtKeyUsageServerAuth); err != nil {
				errs = append(errs, fmt.Errorf("--tls-dir: %w", err))
			}
			if err := apiserver.VerifyAdmin(d, o.clusterName); err != nil {
				errs = append(errs, fmt.Errorf("--tls-dir: %w", err))
			}
		}
	}
	return errors.Join(errs...)
}

func run(ctx context.Context, o options) error {
	var level slog.Level
	if err := level.UnmarshalText([]byte(o.logLevel)); err != nil {
		return fmt.Errorf("--log-level: %w", err)
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	if err := o.validate(); err != nil {
		return err
	}
	rest, err := clientcmd.BuildConfigFromFlags("", o.kubeconfig)
	if err != nil {
		return fmt.Errorf("--kubeconfig: %w", err)
	}
	kube, err := kubernetes.NewForConfig(rest)
	if err != nil {
		return fmt.Errorf("kubernetes client: %w", err)
	}
	dyn, err := dynamic.NewForConfig(rest)
	if err != nil {
		return fmt.Errorf("kubernetes dynamic client: %w", err)
	}
	readers, err := apiserver.RemoteReaders(o.configDir, o.remoteClusters)
	if err != nil {
		return err
	}
	cfg := apiserver.DefaultConfig()
	cfg.ClusterName, cfg.ClusterID, cfg.MaxConnectedClusters = o.clusterName, o.clusterID, o.maxConnected
	cfg.Kube, cfg.Dynamic = kube, dyn
	cfg.ListenAddress, cfg.TLSDir, cfg.DataDir = o.listen, pki.Dir(o.tlsDir), o.dataDir
	cfg.RemoteClusters = readers
	cfg.HeartbeatInterval = o.heartbeat
	cfg.IdentityGCInterval, cfg.IdentityHeartbeatTimeout = o.identityGCInterval, o.identityHeartbeatTimeout
	cfg.Logger = log.With("component", "apiserver")
	reg := metrics.NewProcessRegistry()
	if cfg.Events, err = event.Counted(event.Scope(event.Logger(log), o.clusterName, "", event.ComponentAPIServer), reg); err != nil {
		return err
	}
	cfg.Metrics = reg
	srv, err := apiserver.New(cfg)
	if err != nil {
		return err
	}
	if err := srv.Start(ctx); err != nil {
		return err
	}
	defer srv.Close()
	if err := metrics.Serve(ctx, o.prometheusAddr, reg, log.With("component", "metrics")); err != nil {
		return err
	}
	log.Info("mesh-apiserver serving", "cluster", o.clusterName, "id", o.clusterID, "endpoints", srv.Endpoints(), "remote-readers", readers)

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	errc := make(chan error, 3)
	wg.Go(func() { errc <- srv.Run(ctx) })
	if o.configDir != "" {
		wg.Go(func() { errc <- srv.WatchReaders(ctx, o.configDir, o.remoteClusters, o.configPoll, readers) })
	}
	switch {
	case !o.kvstoremesh:
	case o.configDir == "":
		log.Info("kvstoremesh has nothing to mirror: no --clustermesh-config")
	default:
		km, err := kvstoremesh.New(kvstoremesh.Config{
			ClusterName:          o.clusterName,
			ClusterID:            o.clusterID,
			MaxConnectedClusters: o.maxConnected,
			ConfigDir:            o.configDir,
			Local:                srv.Client(),
			Logger:               log.With("component", "kvstoremesh"),
			// The apiserver's counter counts kvstoremesh's events too.
			Events:  event.Scope(cfg.Events, o.clusterName, "", event.ComponentKVStoreMesh),
			Metrics: reg,
		})
		if err != nil {
			cancel()
			wg.Wait()
			return err
		}
		wg.Go(func() { errc <- km.Run(ctx) })
	}
	// The first component to stop (with or without error) stops the rest.
	err = <-errc
	cancel()
	wg.Wait()
	if ctx.Err() != nil && err == nil {
		log.Info("mesh-apiserver stopped")
	}
	return err
}
