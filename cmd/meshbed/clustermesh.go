package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"

	"github.com/meshbed/meshbed/mesh/clustermesh"
)

func defaultCADir() string {
	dir, err := os.UserConfigDir()
	if err != nil {
		return filepath.Join(".meshbed", "ca")
	}
	return filepath.Join(dir, "meshbed", "ca")
}

func clustermeshCmd(clients clustermesh.ClientFactory) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "clustermesh",
		Short: "Connect clusters where meshbed is installed into a mesh",
	}
	var kubeconfig string
	cmd.PersistentFlags().StringVar(&kubeconfig, "kubeconfig", "", "kubeconfig file (default $KUBECONFIG or ~/.kube/config)")

	var enable clustermesh.EnableOptions
	enableCmd := &cobra.Command{
		Use:   "enable --context CTX [--create-ca]",
		Short: "Issue the cluster's mesh certificates from the mesh CA and store them as Secrets",
		Long: `Loads the mesh CA from --ca-dir (or creates it with --create-ca), issues the
mesh-apiserver's server and client certificates (valid for every node address
and the Service's cluster IPs), the agents' client certificate and the
certificate with which this cluster reads the others, and stores them in the
cluster's Secrets. Every cluster of a mesh must be enabled with the same CA.
Certificates that are still valid are kept, so enable can run again.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			enable.Kubeconfig = kubeconfig
			if enable.Context == "" {
				return &exitError{2, errors.New("--context is required")}
			}
			return clustermesh.Enable(cmd.Context(), cmd.OutOrStdout(), clients, enable)
		},
	}
	enableCmd.Flags().StringVar(&enable.Context, "context", "", "kubeconfig context of the cluster")
	enableCmd.Flags().StringVar(&enable.CADir, "ca-dir", defaultCADir(), "directory of the mesh CA (ca.crt, ca.key)")
	enableCmd.Flags().BoolVar(&enable.CreateCA, "create-ca", false, "create the mesh CA in --ca-dir if there is none")
	cmd.AddCommand(enableCmd)

	var connect clustermesh.ConnectOptions
	connectCmd := &cobra.Command{
		Use:   "connect --context A --destination-context B",
		Short: "Connect two enabled clusters, in both directions",
		Long: `Writes into each cluster's Secrets a config file for the other, in Cilium's
etcd config format: for the cluster's kvstoremesh, the other cluster's
mesh-apiserver at every node address and its node port; for the cluster's
agents, the local mesh-apiserver, which caches the other cluster. The pods
pick the files up without a restart once the kubelet has updated the Secrets
(up to about a minute); see clustermesh status --wait.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			connect.Kubeconfig = kubeconfig
			var errs []error
			if connect.Context == "" {
				errs = append(errs, errors.New("--context is required"))
			}
			if connect.Destination == "" {
				errs = append(errs, errors.New("--destination-context is required"))
			} else if connect.Destination == connect.Context {
				errs = append(errs, fmt.Errorf("--destination-context %q: same as --context", connect.Destination))
			}
			if err := errors.Join(errs...); err != nil {
				return &exitError{2, err}
			}
			return clustermesh.Connect(cmd.Context(), cmd.OutOrStdout(), clients, connect)
		},
	}
	connectCmd.Flags().StringVar(&connect.Context, "context", "", "kubeconfig context of one cluster")
	connectCmd.Flags().StringVar(&connect.Destination, "destination-context", "", "kubeconfig context of the other cluster")
	cmd.AddCommand(connectCmd)

	var status clustermesh.StatusOptions
	var probe bool
	var probeCADir string
	statusCmd := &cobra.Command{
		Use:   "status --context CTX [--wait]",
		Short: "Show whether the cluster's meshbed is ready and its remote clusters synced",
		Long: `Checks the agents and the mesh-apiserver, the certificates, the configured
remote clusters and, unless --probe=false, asks the mesh-apiserver (through
its node port, with a short-lived certificate from --ca-dir) whether
kvstoremesh has synced each remote cluster. Exits 1 when something is not
ready; with --wait, retries until everything is or --wait-timeout passes.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			status.Kubeconfig = kubeconfig
			if status.Context == "" {
				return &exitError{2, errors.New("--context is required")}
			}
			if status.WaitTimeout <= 0 {
				return &exitError{2, fmt.Errorf("--wait-timeout %v: must be positive", status.WaitTimeout)}
			}
			var p clustermesh.Probe
			if probe {
				p = clustermesh.KVStoreProbe(probeCADir)
			}
			err := clustermesh.Status(cmd.Context(), cmd.OutOrStdout(), clients, p, status)
			if errors.Is(err, clustermesh.ErrNotReady) {
				return &exitError{1, err}
			}
			return err
		},
	}
	statusCmd.Flags().StringVar(&status.Context, "context", "", "kubeconfig context of the cluster")
	statusCmd.Flags().BoolVar(&status.Wait, "wait", false, "wait until ready")
	statusCmd.Flags().DurationVar(&status.WaitTimeout, "wait-timeout", 5*time.Minute, "how long --wait waits")
	statusCmd.Flags().DurationVar(&status.Interval, "interval", 2*time.Second, "how often --wait checks")
	statusCmd.Flags().BoolVar(&probe, "probe", true, "ask the mesh-apiserver whether remote clusters are synced (needs --ca-dir with ca.key and a route to the node addresses)")
	statusCmd.Flags().StringVar(&probeCADir, "ca-dir", defaultCADir(), "directory of the mesh CA, for --probe")
	cmd.AddCommand(statusCmd)
	return cmd
}
