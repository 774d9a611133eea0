package main

import (
	"errors"
	"time"

	"github.com/spf13/cobra"

	"github.com/meshbed/meshbed/internal/cmdutil"
	"github.com/meshbed/meshbed/mesh/clustermesh"
	"github.com/meshbed/meshbed/sim/control"
)

func clustermeshCmd(o *options, clients clustermesh.ClientFactory) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "clustermesh",
		Short: "Connect clusters where meshbed is installed into a mesh",
	}
	cmd.PersistentFlags().StringVar(&o.kubeconfig, "kubeconfig", "", "kubeconfig file (default $KUBECONFIG or ~/.kube/config)")

	enable := &o.enable
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
			enable.Kubeconfig = o.kubeconfig
			if err := enable.Validate(); err != nil {
				return err
			}
			return clustermesh.Enable(cmd.Context(), cmd.OutOrStdout(), clients, *enable)
		},
	}
	enableCmd.Flags().StringVar(&enable.Context, "context", "", "kubeconfig context of the cluster")
	enableCmd.Flags().StringVar(&enable.CADir, "ca-dir", clustermesh.DefaultCADir(), "directory of the mesh CA (ca.crt, ca.key)")
	enableCmd.Flags().BoolVar(&enable.CreateCA, "create-ca", false, "create the mesh CA in --ca-dir if there is none")
	cmd.AddCommand(enableCmd)

	connect := &o.connect
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
			connect.Kubeconfig = o.kubeconfig
			if err := connect.Validate(); err != nil {
				return err
			}
			return clustermesh.Connect(cmd.Context(), cmd.OutOrStdout(), clients, *connect)
		},
	}
	connectCmd.Flags().StringVar(&connect.Context, "context", "", "kubeconfig context of one cluster")
	connectCmd.Flags().StringVar(&connect.Destination, "destination-context", "", "kubeconfig context of the other cluster")
	cmd.AddCommand(connectCmd)

	status := &o.status
	statusCmd := &cobra.Command{
		Use:   "status --context CTX [--wait] | --cluster C [--name MESH]",
		Short: "Show whether the cluster's meshbed is ready and its remote clusters synced",
		Long: `Checks the agents and the mesh-apiserver, the certificates, the configured
remote clusters and, unless --probe=false, asks the mesh-apiserver (through
its node port, with a short-lived certificate from --ca-dir) whether
kvstoremesh has synced each remote cluster. Exits 1 when something is not
ready; with --wait, retries until everything is or --wait-timeout passes.

With --cluster, reads a running simulated mesh (meshbed sim up, --name)
instead: for kvstoremesh and for every agent of the cluster, each remote
cluster, whether it is connected and synced, how many nodes, services,
identities and endpoints came from it, and for how long it has been synced
(or not). Exits 1 when a remote is not synced or a component is stopped.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if o.statusCluster != "" {
				if status.Context != "" {
					return cmdutil.Invalid(errors.New("--cluster (a simulated mesh) and --context (a real cluster) exclude each other"))
				}
				return control.NewClient(o.statusMesh).PrintClusterMesh(cmd.Context(), cmd.OutOrStdout(), o.statusCluster, o.statusOutput)
			}
			status.Kubeconfig = o.kubeconfig
			return clustermesh.StatusCommand(cmd.Context(), cmd.OutOrStdout(), clients, *status, o.statusProbe, o.statusCADir)
		},
	}
	statusCmd.Flags().StringVar(&status.Context, "context", "", "kubeconfig context of the cluster")
	statusCmd.Flags().BoolVar(&status.Wait, "wait", false, "wait until ready")
	statusCmd.Flags().DurationVar(&status.WaitTimeout, "wait-timeout", 5*time.Minute, "how long --wait waits")
	statusCmd.Flags().DurationVar(&status.Interval, "interval", 2*time.Second, "how often --wait checks")
	statusCmd.Flags().BoolVar(&o.statusProbe, "probe", true, "ask the mesh-apiserver whether remote clusters are synced (needs --ca-dir with ca.key and a route to the node addresses)")
	statusCmd.Flags().StringVar(&o.statusCADir, "ca-dir", clustermesh.DefaultCADir(), "directory of the mesh CA, for --probe")
	statusCmd.Flags().StringVar(&o.statusCluster, "cluster", "", "a cluster of a running simulated mesh (instead of --context)")
	statusCmd.Flags().StringVar(&o.statusMesh, "name", "default", "with --cluster: the name of the simulated mesh")
	statusCmd.Flags().StringVarP(&o.statusOutput, "output", "o", "summary", "with --cluster: summary or json")
	cmd.AddCommand(statusCmd)
	return cmd
}
