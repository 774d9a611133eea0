package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/meshbed/meshbed/daemon"
	"github.com/meshbed/meshbed/mesh/clustermesh"
	"github.com/meshbed/meshbed/mesh/flow"
)

// flowFlags are the flags of `sim observe` and `observe`, Hubble's names
// where Hubble has the filter.
func flowFlags(cmd *cobra.Command, o *flow.Options, withCluster bool) {
	f := cmd.Flags()
	if withCluster {
		f.StringVar(&o.Cluster, "cluster", "", "only flows observed by the agents of this cluster")
	}
	f.StringVar(&o.Node, "node", "", "only flows observed on this node")
	f.StringVar(&o.FromCluster, "from-cluster", "", "only flows whose source is in this cluster")
	f.StringVar(&o.ToService, "to-service", "", "only flows through this service (namespace/name)")
	f.StringVar(&o.Verdict, "verdict", "", "only flows with this verdict: FORWARDED or DROPPED")
	f.IntVar(&o.Last, "last", 0, fmt.Sprintf("show the last N flows first (default %d without --follow)", flow.DefaultLast))
	f.BoolVarP(&o.Follow, "follow", "f", false, "keep showing new flows until interrupted")
	f.StringVarP(&o.Output, "output", "o", flow.OutputCompact, "compact or json (one record a line)")
}

// observeCmd reads the flows of a real cluster's agents (or of the agent
// of this node, through its socket).
func observeCmd(opts *options, clients clustermesh.ClientFactory) *cobra.Command {
	o := &opts.observe
	cmd := &cobra.Command{
		Use:   "observe --context CTX | --socket PATH",
		Short: "Show the flows meshbed's agents observe, as hubble observe",
		Long: "Reads the flow stream of every agent of the cluster of a kubeconfig context through a " +
			"Kubernetes port-forward to each agent pod (the agents serve it on their loopback, --flows-listen-address), " +
			"or of the agent of this node through its local socket (--socket).",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			o.SocketSet, o.Flows.LastSet = cmd.Flags().Changed("socket"), cmd.Flags().Changed("last")
			return clustermesh.Observe(cmd.Context(), cmd.OutOrStdout(), clients, *o)
		},
	}
	flowFlags(cmd, &o.Flows, false)
	cmd.Flags().StringVar(&o.Kubeconfig, "kubeconfig", "", "kubeconfig file (default $KUBECONFIG or ~/.kube/config)")
	cmd.Flags().StringVar(&o.Context, "context", "", "kubeconfig context of the cluster")
	// meshbed-agent's --state-socket default, its local control socket,
	// where it serves flows too.
	cmd.Flags().StringVar(&o.Socket, "socket", daemon.DefaultStateSocket, "without --context: the socket of the agent of this node")
	return cmd
}
