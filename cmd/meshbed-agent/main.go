// Command meshbed-agent is the per-node mesh agent: it watches the local
// Kubernetes API and the remote clusters of the mesh and programs this
// node's eBPF datapath.
package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/meshbed/meshbed/daemon"
	"github.com/meshbed/meshbed/datapath/netns"
	"github.com/meshbed/meshbed/datapath/node"
	"github.com/meshbed/meshbed/datapath/state"
	"github.com/meshbed/meshbed/datapath/wireguard"
	"github.com/meshbed/meshbed/internal/cmdutil"
	"github.com/meshbed/meshbed/mesh/event"
	"github.com/meshbed/meshbed/mesh/metrics"
	"github.com/meshbed/meshbed/mesh/service"
)

// options are the command's flags: the agent's own (agentConfig, whose
// defaults are the package's) and those of the datapath and the process.
type options struct {
	agentConfig                         daemon.AgentConfig
	clusterName, nodeName, kubeconfig   string
	bpfPinDir                           string
	clusterID, maxConnected             uint32
	nodeIP, underlayIf, routing         string
	failStatic, masquerade              bool
	logLevel, encryption, wireguardImpl string
	encryptionStrict                    bool
}

func main() {
	cmd := newCommand()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := cmd.ExecuteContext(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "meshbed-agent:", err)
		os.Exit(1)
	}
}

func newCommand() *cobra.Command {
	// Every default comes from the package, which the simulator uses too.
	o := options{agentConfig: daemon.DefaultAgentConfig()}
	d := &o.agentConfig
	cmd := &cobra.Command{
		Use:           "meshbed-agent",
		Short:         "The meshbed node agent",
		SilenceUsage:  true,
		SilenceErrors: true,
		Args:          cobra.NoArgs,
		RunE:          func(cmd *cobra.Command, _ []string) error { return run(cmd.Context(), o) },
	}
	cmd.AddCommand(stateCmd())
	f := cmd.Flags()
	f.StringVar(&o.clusterName, "cluster-name", "", "name of this cluster ([a-z0-9-], at most 32 characters)")
	f.Uint32Var(&o.clusterID, "cluster-id", 0, "ID of this cluster (1..255, or 1..511 with --max-connected-clusters=511)")
	f.Uint32Var(&o.maxConnected, "max-connected-clusters", d.MaxConnectedClusters, "255 or 511; equal on every cluster of the mesh")
	f.StringVar(&o.nodeName, "node-name", os.Getenv("NODE_NAME"), "this node's name in Kubernetes (default $NODE_NAME)")
	f.StringVar(&o.kubeconfig, "kubeconfig", "", "kubeconfig file (default: in-cluster configuration)")
	f.StringVar(&d.RemoteDir, "clustermesh-config", "/var/lib/meshbed/clustermesh", "directory of remote cluster configs, one file per cluster")
	f.StringVar(&d.StateDir, "state-dir", "/var/run/meshbed/state", "where endpoints are kept across agent restarts")
	f.StringVar(&o.bpfPinDir, "bpf-pin-dir", "/sys/fs/bpf/meshbed", "BPF filesystem directory where maps and program attachments are pinned, so established connections survive agent restarts (empty: no pinning)")
	f.StringVar(&o.nodeIP, "node-ip", "", "this node's IPv4 address on the node network (the tunnel endpoint)")
	f.StringVar(&o.underlayIf, "underlay-interface", "eth0", "interface of the node network (native routing)")
	f.StringVar(&o.routing, "routing", "tunnel", "tunnel (VXLAN) or native")
	f.BoolVar(&o.masquerade, "enable-ipv4-masquerade", node.DefaultMasquerade, "masquerade what pods send outside the mesh's pod networks to the node's address (needed to reach other nodes' host network through kube-proxy)")
	f.BoolVar(&o.failStatic, "fail-static", d.Mode == service.ModeFailStatic, "keep an unreachable cluster's backends (Cilium's behaviour) instead of withdrawing them")
	f.BoolVar(&d.PolicyAllClusters, "policy-all-clusters", d.PolicyAllClusters, "CiliumNetworkPolicy selectors without a cluster label match every cluster (the pre-1.19 default)")
	f.BoolVar(&d.PolicyAllowLocalhost, "allow-localhost", d.PolicyAllowLocalhost, "the node may always reach its pods whatever the policy (kubelet probes)")
	f.DurationVar(&d.HealthInterval, "health-interval", 0, "loss detection: interval of remote health probes (default 500ms)")
	f.DurationVar(&d.HealthTimeout, "health-timeout", 0, "loss detection: a remote is lost after this long without an answer (default 2s; interval+timeout is the bound)")
	f.DurationVar(&d.SyncTimeout, "sync-timeout", d.SyncTimeout, "how long to wait for remote services before programming services")
	f.StringVar(&o.encryption, "encryption", string(node.EncryptionNone), "transparent encryption of pod traffic between nodes: none or wireguard (the key is kept in --state-dir and published with the node)")
	f.BoolVar(&o.encryptionStrict, "encryption-strict", false, "with --encryption=wireguard: refuse traffic to nodes that publish no usable WireGuard key (older agents) instead of sending it in clear")
	f.StringVar(&o.wireguardImpl, "wireguard-impl", "auto", "auto (the kernel module where it exists, else userspace over /dev/net/tun), kernel or userspace")
	f.StringVar(&o.logLevel, "log-level", "info", "debug, info, warn or error")
	f.StringVar(&d.CNISocket, "cni-socket", d.CNISocket,
		"unix socket on which the CNI plugin (meshbed-cni) reaches this agent; empty: no CNI server")
	f.StringVar(&d.StateSocket, "state-socket", d.StateSocket,
		"unix socket on which the agent reports what it wants and what the node's BPF maps hold (meshbed-agent state); empty: none")
	f.StringVar(&d.FlowsAddress, "flows-listen-address", d.FlowsAddress,
		"TCP address on which the agent serves its flow stream (also served on --state-socket), for `meshbed observe --context` through a port-forward; loopback only by default; empty: none")
	f.StringVar(&d.PrometheusAddress, "prometheus-serve-addr", d.PrometheusAddress, fmt.Sprintf("serve Prometheus metrics at /metrics on this address, e.g. :%d (empty: not served)", metrics.AgentPort))
	return cmd
}

// encryptionConfig is the datapath's encryption from the flags.
func (o options) encryptionConfig() (node.Encryption, error) {
	var errs []error
	mode, err := node.ParseEncryptionMode(o.encryption)
	if err != nil {
		errs = append(errs, fmt.Errorf("--encryption: %w", err))
	}
	enc := node.Encryption{Mode: mode, Strict: o.encryptionStrict, StateDir: o.agentConfig.StateDir}
	switch o.wireguardImpl {
	case "auto":
	case string(wireguard.Kernel), string(wireguard.Userspace):
		enc.Impl = wireguard.Impl(o.wireguardImpl)
	default:
		errs = append(errs, fmt.Errorf("--wireguard-impl %q: want auto, kernel or userspace", o.wireguardImpl))
	}
	if o.encryptionStrict && mode != node.EncryptionWireGuard {
		errs = append(errs, errors.New("--encryption-strict needs --encryption=wireguard"))
	}
	if mode == node.EncryptionWireGuard && o.agentConfig.StateDir == "" {
		errs = append(errs, errors.New("--encryption=wireguard needs --state-dir (the private key is kept there)"))
	}
	return enc, errors.Join(errs...)
}

func (o options) validate() (routing state.RoutingMode, nodeIP netip.Addr, err error) {
	var errs []error
	if _, err := o.encryptionConfig(); err != nil {
		errs = append(errs, err)
	}
	errs = append(errs, cmdutil.ClusterFlags(o.clusterName, o.clusterID, o.maxConnected)...)
	if o.nodeName == "" {
		errs = append(errs, errors.New("--node-name is required (or set $NODE_NAME)"))
	}
	if nodeIP, err = netip.ParseAddr(o.nodeIP); err != nil || !nodeIP.Is4() {
		errs = append(errs, fmt.Errorf("--node-ip %q: want this node's IPv4 address", o.nodeIP))
	}
	switch o.routing {
	case "tunnel":
		routing = state.Tunnel
	case "native":
		routing = state.Native
	default:
		errs = append(errs, fmt.Errorf("--routing %q: want tunnel or native", o.routing))
	}
	return routing, nodeIP, errors.Join(errs...)
}

func run(ctx context.Context, o options) error {
	var level slog.Level
	if err := level.UnmarshalText([]byte(o.logLevel)); err != nil {
		return fmt.Errorf("--log-level: %w", err)
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	routing, nodeIP, err := o.validate()
	if err != nil {
		return err
	}
	enc, _ := o.encryptionConfig() // validated above
	rest, err := clientcmd.BuildConfigFromFlags("", o.kubeconfig)
	if err != nil {
		return fmt.Errorf("--kubeconfig: %w", err)
	}
	kube, err := kubernetes.NewForConfig(rest)
	if err != nil {
		return err
	}
	dyn, err := dynamic.NewForConfig(rest)
	if err != nil {
		return err
	}
	host, err := netns.Host()
	if err != nil {
		return err
	}
	defer host.Close()
	dp, err := node.New(node.Config{NS: host, NodeIP: nodeIP, UnderlayIf: o.underlayIf,
		ClusterID: o.clusterID, Routing: routing, PinPath: o.bpfPinDir, Masquerade: o.masquerade, Encryption: enc,
		Logger: log.With("component", "datapath")})
	if err != nil {
		return err
	}
	defer dp.Close()
	reg := metrics.NewProcessRegistry()
	if err := reg.Register(dp.Datapath().Collector(nil)); err != nil {
		return err
	}
	events, err := event.Counted(event.Scope(event.Logger(log), o.clusterName, o.nodeName, event.ComponentAgent), reg)
	if err != nil {
		return err
	}
	cfg := o.agentConfig
	cfg.ClusterName, cfg.ClusterID, cfg.MaxConnectedClusters = o.clusterName, o.clusterID, o.maxConnected
	cfg.NodeName, cfg.Kube, cfg.Dynamic, cfg.Node = o.nodeName, kube, dyn, dp
	if o.failStatic {
		cfg.Mode = service.ModeFailStatic
	}
	cfg.Logger, cfg.Events, cfg.Metrics, cfg.Gatherer = log, events, reg, reg
	a, err := daemon.NewAgent(cfg)
	if err != nil {
		return err
	}
	return a.Run(ctx)
}
