// Command meshbed-agent is the per-node mesh agent: it watches the local
// Kubernetes API and the remote clusters of the mesh and programs this
// node's eBPF datapath.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/meshbed/meshbed/daemon"
	"github.com/meshbed/meshbed/datapath/node"
	"github.com/meshbed/meshbed/mesh/metrics"
	"github.com/meshbed/meshbed/mesh/service"
)

// options are the flags of the command and of its state subcommand.
type options struct {
	agent       daemon.AgentOptions
	stateSocket string
}

func main() {
	cmd := newCommand(&options{})
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := cmd.ExecuteContext(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "meshbed-agent:", err)
		os.Exit(1)
	}
}

func newCommand(opts *options) *cobra.Command {
	// Every default comes from the package, which the simulator uses too.
	o := &opts.agent
	o.Agent = daemon.DefaultAgentConfig()
	d := &o.Agent
	cmd := &cobra.Command{
		Use:           "meshbed-agent",
		Short:         "The meshbed node agent",
		SilenceUsage:  true,
		SilenceErrors: true,
		Args:          cobra.NoArgs,
		RunE:          func(cmd *cobra.Command, _ []string) error { return daemon.RunAgent(cmd.Context(), *o) },
	}
	cmd.AddCommand(stateCmd(&opts.stateSocket))
	f := cmd.Flags()
	f.StringVar(&o.ClusterName, "cluster-name", "", "name of this cluster ([a-z0-9-], at most 32 characters)")
	f.Uint32Var(&o.ClusterID, "cluster-id", 0, "ID of this cluster (1..255, or 1..511 with --max-connected-clusters=511)")
	f.Uint32Var(&o.MaxConnected, "max-connected-clusters", d.MaxConnectedClusters, "255 or 511; equal on every cluster of the mesh")
	f.StringVar(&o.NodeName, "node-name", os.Getenv("NODE_NAME"), "this node's name in Kubernetes (default $NODE_NAME)")
	f.StringVar(&o.Kubeconfig, "kubeconfig", "", "kubeconfig file (default: in-cluster configuration)")
	f.StringVar(&d.RemoteDir, "clustermesh-config", "/var/lib/meshbed/clustermesh", "directory of remote cluster configs, one file per cluster")
	f.StringVar(&d.StateDir, "state-dir", "/var/run/meshbed/state", "where endpoints are kept across agent restarts")
	f.StringVar(&o.BPFPinDir, "bpf-pin-dir", "/sys/fs/bpf/meshbed", "BPF filesystem directory where maps and program attachments are pinned, so established connections survive agent restarts (empty: no pinning)")
	f.StringVar(&o.NodeIP, "node-ip", "", "this node's IPv4 address on the node network (the tunnel endpoint)")
	f.StringVar(&o.UnderlayIf, "underlay-interface", "eth0", "interface of the node network (native routing)")
	f.StringVar(&o.Routing, "routing", "tunnel", "tunnel (VXLAN) or native")
	f.BoolVar(&o.Masquerade, "enable-ipv4-masquerade", node.DefaultMasquerade, "masquerade what pods send outside the mesh's pod networks to the node's address (needed to reach other nodes' host network through kube-proxy)")
	f.BoolVar(&o.FailStatic, "fail-static", d.Mode == service.ModeFailStatic, "keep an unreachable cluster's backends (Cilium's behaviour) instead of withdrawing them")
	f.BoolVar(&d.PolicyAllClusters, "policy-all-clusters", d.PolicyAllClusters, "CiliumNetworkPolicy selectors without a cluster label match every cluster (the pre-1.19 default)")
	f.BoolVar(&d.PolicyAllowLocalhost, "allow-localhost", d.PolicyAllowLocalhost, "the node may always reach its pods whatever the policy (kubelet probes)")
	f.DurationVar(&d.HealthInterval, "health-interval", 0, "loss detection: interval of remote health probes (default 500ms)")
	f.DurationVar(&d.HealthTimeout, "health-timeout", 0, "loss detection: a remote is lost after this long without an answer (default 2s; interval+timeout is the bound)")
	f.DurationVar(&d.SyncTimeout, "sync-timeout", d.SyncTimeout, "how long to wait for remote services before programming services")
	f.StringVar(&o.Encryption, "encryption", string(node.EncryptionNone), "transparent encryption of pod traffic between nodes: none or wireguard (the key is kept in --state-dir and published with the node)")
	f.BoolVar(&o.EncryptionStrict, "encryption-strict", false, "with --encryption=wireguard: refuse traffic to nodes that publish no usable WireGuard key (older agents) instead of sending it in clear")
	f.StringVar(&o.WireguardImpl, "wireguard-impl", "auto", "auto (the kernel module where it exists, else userspace over /dev/net/tun), kernel or userspace")
	f.StringVar(&o.LogLevel, "log-level", "info", "debug, info, warn or error")
	f.StringVar(&d.CNISocket, "cni-socket", d.CNISocket,
		"unix socket on which the CNI plugin (meshbed-cni) reaches this agent; empty: no CNI server")
	f.StringVar(&d.StateSocket, "state-socket", d.StateSocket,
		"unix socket on which the agent reports what it wants and what the node's BPF maps hold (meshbed-agent state); empty: none")
	f.StringVar(&d.FlowsAddress, "flows-listen-address", d.FlowsAddress,
		"TCP address on which the agent serves its flow stream (also served on --state-socket), for `meshbed observe --context` through a port-forward; loopback only by default; empty: none")
	f.StringVar(&d.PrometheusAddress, "prometheus-serve-addr", d.PrometheusAddress, fmt.Sprintf("serve Prometheus metrics at /metrics on this address, e.g. :%d (empty: not served)", metrics.AgentPort))
	return cmd
}

// stateCmd is `meshbed-agent state`: it prints the running agent's report
// of its node as JSON (what the Kind target execs in the agent's pod).
func stateCmd(socket *string) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "state",
		Short: "Print the running agent's report of its node (desired state, BPF maps) as JSON",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return daemon.CopyState(cmd.Context(), *socket, cmd.OutOrStdout())
		},
	}
	cmd.Flags().StringVar(socket, "socket", daemon.DefaultStateSocket, "the agent's state socket")
	return cmd
}
