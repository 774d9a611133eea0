// Package meshapiserver assembles the processes of cmd/meshbed-apiserver
// from their flags: the mesh-apiserver of one cluster (Run), with the
// kvstoremesh beside it in the same process, and kvstoremesh in a process
// of its own (RunKVStoreMesh). It is apart from package daemon, which
// assembles the node agent, so that the agent links no etcd server and
// the mesh-apiserver no datapath.
package meshapiserver

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

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

// Options are the flags of cmd/meshbed-apiserver: the mesh-apiserver of
// one cluster and, with KVStoreMesh, the kvstoremesh beside it in the same
// process.
type Options struct {
	ClusterName, Kubeconfig, Listen, TLSDir, ConfigDir, DataDir string
	ClusterID, MaxConnected                                     uint32
	KVStoreMesh                                                 bool
	RemoteClusters                                              []string
	Heartbeat, ConfigPoll                                       time.Duration
	IdentityGCInterval, IdentityHeartbeatTimeout                time.Duration
	LogLevel, PrometheusAddr                                    string
}

// Validate checks every flag and reports all mistakes at once, each naming
// its flag.
func (o Options) Validate() error {
	var errs []error
	errs = append(errs, cmdutil.ClusterFlags(o.ClusterName, o.ClusterID, o.MaxConnected)...)
	if host, port, err := net.SplitHostPort(o.Listen); err != nil {
		errs = append(errs, fmt.Errorf("--listen %q: %w", o.Listen, err))
	} else if net.ParseIP(host) == nil {
		errs = append(errs, fmt.Errorf("--listen %q: host must be an IP address", o.Listen))
	} else if port == "" {
		errs = append(errs, fmt.Errorf("--listen %q: no port", o.Listen))
	}
	if o.Heartbeat <= 0 {
		errs = append(errs, fmt.Errorf("--heartbeat-interval %v: must be positive", o.Heartbeat))
	}
	if o.IdentityGCInterval <= 0 {
		errs = append(errs, fmt.Errorf("--identity-gc-interval %v: must be positive", o.IdentityGCInterval))
	}
	if o.IdentityHeartbeatTimeout <= 0 {
		errs = append(errs, fmt.Errorf("--identity-heartbeat-timeout %v: must be positive", o.IdentityHeartbeatTimeout))
	}
	if o.ConfigPoll <= 0 {
		errs = append(errs, fmt.Errorf("--config-poll-interval %v: must be positive", o.ConfigPoll))
	}
	for _, r := range o.RemoteClusters {
		if err := wire.ValidateClusterName(r); err != nil {
			errs = append(errs, fmt.Errorf("--remote-clusters: %w", err))
		}
	}
	if o.TLSDir == "" {
		errs = append(errs, errors.New("--tls-dir is required"))
	} else {
		d := pki.Dir(o.TLSDir)
		if _, err := d.LoadCA(); err != nil {
			errs = append(errs, fmt.Errorf("--tls-dir: %w", err))
		} else {
			if err := d.Verify(pki.ServerName, x509.ExtKeyUsageServerAuth); err != nil {
				errs = append(errs, fmt.Errorf("--tls-dir: %w", err))
			}
			if err := apiserver.VerifyAdmin(d, o.ClusterName); err != nil {
				errs = append(errs, fmt.Errorf("--tls-dir: %w", err))
			}
		}
	}
	return errors.Join(errs...)
}

// Run runs the mesh-apiserver of o (and its kvstoremesh) until ctx ends
// or one of its parts stops.
func Run(ctx context.Context, o Options) error {
	log, err := cmdutil.Logger(o.LogLevel)
	if err != nil {
		return err
	}
	if err := o.Validate(); err != nil {
		return err
	}
	rest, err := clientcmd.BuildConfigFromFlags("", o.Kubeconfig)
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
	readers, err := apiserver.RemoteReaders(o.ConfigDir, o.RemoteClusters)
	if err != nil {
		return err
	}
	cfg := apiserver.DefaultConfig()
	cfg.ClusterName, cfg.ClusterID, cfg.MaxConnectedClusters = o.ClusterName, o.ClusterID, o.MaxConnected
	cfg.Kube, cfg.Dynamic = kube, dyn
	cfg.ListenAddress, cfg.TLSDir, cfg.DataDir = o.Listen, pki.Dir(o.TLSDir), o.DataDir
	cfg.RemoteClusters = readers
	cfg.HeartbeatInterval = o.Heartbeat
	cfg.IdentityGCInterval, cfg.IdentityHeartbeatTimeout = o.IdentityGCInterval, o.IdentityHeartbeatTimeout
	cfg.Logger = log.With("component", "apiserver")
	reg := metrics.NewProcessRegistry()
	if cfg.Events, err = event.Counted(event.Scope(event.Logger(log), o.ClusterName, "", event.ComponentAPIServer), reg); err != nil {
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
	if err := metrics.Serve(ctx, o.PrometheusAddr, reg, log.With("component", "metrics")); err != nil {
		return err
	}
	log.Info("mesh-apiserver serving", "cluster", o.ClusterName, "id", o.ClusterID, "endpoints", srv.Endpoints(), "remote-readers", readers)

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	errc := make(chan error, 3)
	wg.Go(func() { errc <- srv.Run(ctx) })
	if o.ConfigDir != "" {
		wg.Go(func() { errc <- srv.WatchReaders(ctx, o.ConfigDir, o.RemoteClusters, o.ConfigPoll, readers) })
	}
	switch {
	case !o.KVStoreMesh:
	case o.ConfigDir == "":
		log.Info("kvstoremesh has nothing to mirror: no --clustermesh-config")
	default:
		km, err := kvstoremesh.New(kvstoremesh.Config{
			ClusterName:          o.ClusterName,
			ClusterID:            o.ClusterID,
			MaxConnectedClusters: o.MaxConnected,
			ConfigDir:            o.ConfigDir,
			Local:                srv.Client(),
			Logger:               log.With("component", "kvstoremesh"),
			// The apiserver's counter counts kvstoremesh's events too.
			Events:  event.Scope(cfg.Events, o.ClusterName, "", event.ComponentKVStoreMesh),
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
