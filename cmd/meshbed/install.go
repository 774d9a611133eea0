package main

import (
	"github.com/spf13/cobra"

	"github.com/meshbed/meshbed/internal/cmdutil"
	"github.com/meshbed/meshbed/kind"
	"github.com/meshbed/meshbed/mesh/clustermesh"
	"github.com/meshbed/meshbed/mesh/wire"
)

func installCmd(opts *options, clients clustermesh.ClientFactory) *cobra.Command {
	o := &opts.install
	cmd := &cobra.Command{
		Use:   "install --context CTX --cluster-name NAME --cluster-id ID",
		Short: "Install meshbed (agent, CNI, mesh-apiserver) into a cluster",
		Long: `Renders the manifests of kind/manifests for this cluster and applies them:
namespace, CRDs, RBAC, the agent DaemonSet (which installs the CNI plugin on
every node) and the mesh-apiserver. Secrets are only created, never
overwritten, so installing again keeps certificates and connections.
With --dry-run, prints the manifests instead (kubectl apply -f - takes them).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := o.Validate(); err != nil {
				return cmdutil.Invalid(err)
			}
			return clustermesh.Install(cmd.Context(), cmd.OutOrStdout(), clients, *o)
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.Kubeconfig, "kubeconfig", "", "kubeconfig file (default $KUBECONFIG or ~/.kube/config)")
	f.StringVar(&o.Context, "context", "", "kubeconfig context of the cluster")
	f.StringVar(&o.Values.ClusterName, "cluster-name", "", "name of the cluster in the mesh ([a-z0-9-], at most 32 characters)")
	f.Uint32Var(&o.Values.ClusterID, "cluster-id", 0, "ID of the cluster in the mesh (1..255, unique in the mesh)")
	f.Uint32Var(&o.Values.MaxConnectedClusters, "max-connected-clusters", wire.MaxConnectedClusters255, "255 or 511; equal on every cluster of the mesh")
	f.StringVar(&o.Values.Image, "image", kind.DefaultImage, "image with meshbed-agent, meshbed-apiserver and meshbed-cni")
	f.StringVar(&o.Values.ImagePullPolicy, "image-pull-policy", "IfNotPresent", "Always, IfNotPresent or Never")
	f.StringVar(&o.Values.LogLevel, "log-level", "info", "log level of the agent and the mesh-apiserver")
	f.StringVar(&o.Values.Encryption, "encryption", "none", "transparent encryption between nodes: none or wireguard (the kernel module where the nodes have it, else userspace over /dev/net/tun)")
	f.BoolVar(&o.Values.EncryptionStrict, "encryption-strict", false, "with --encryption wireguard: refuse traffic to nodes without a WireGuard key instead of sending it in clear")
	f.BoolVar(&o.DryRun, "dry-run", false, "print the manifests instead of applying them")
	return cmd
}
