package daemon

import (
	"context"
	"errors"
	"fmt"
	"net/netip"

	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/meshbed/meshbed/datapath/netns"
	"github.com/meshbed/meshbed/datapath/node"
	"github.com/meshbed/meshbed/datapath/state"
	"github.com/meshbed/meshbed/datapath/wireguard"
	"github.com/meshbed/meshbed/internal/cmdutil"
	"github.com/meshbed/meshbed/mesh/event"
	"github.com/meshbed/meshbed/mesh/metrics"
	"github.com/meshbed/meshbed/mesh/service"
)

// AgentOptions are the flags of cmd/meshbed-agent: the agent's own (Agent,
// whose defaults are the package's) and those of the datapath and the
// process.
type AgentOptions struct {
	Agent                               AgentConfig
	ClusterName, NodeName, Kubeconfig   string
	BPFPinDir                           string
	ClusterID, MaxConnected             uint32
	NodeIP, UnderlayIf, Routing         string
	FailStatic, Masquerade              bool
	LogLevel, Encryption, WireguardImpl string
	EncryptionStrict                    bool
}

// EncryptionConfig is the datapath's encryption from the flags.
func (o AgentOptions) EncryptionConfig() (node.Encryption, error) {
	var errs []error
	mode, err := node.ParseEncryptionMode(o.Encryption)
	if err != nil {
		errs = append(errs, fmt.Errorf("--encryption: %w", err))
	}
	enc := node.Encryption{Mode: mode, Strict: o.EncryptionStrict, StateDir: o.Agent.StateDir}
	switch o.WireguardImpl {
	case "auto":
	case string(wireguard.Kernel), string(wireguard.Userspace):
		enc.Impl = wireguard.Impl(o.WireguardImpl)
	default:
		errs = append(errs, fmt.Errorf("--wireguard-impl %q: want auto, kernel or userspace", o.WireguardImpl))
	}
	if o.EncryptionStrict && mode != node.EncryptionWireGuard {
		errs = append(errs, errors.New("--encryption-strict needs --encryption=wireguard"))
	}
	if mode == node.EncryptionWireGuard && o.Agent.StateDir == "" {
		errs = append(errs, errors.New("--encryption=wireguard needs --state-dir (the private key is kept there)"))
	}
	return enc, errors.Join(errs...)
}

// validate checks every flag and reports all mistakes at once, each naming
// its flag.
func (o AgentOptions) validate() (routing state.RoutingMode, nodeIP netip.Addr, err error) {
	var errs []error
	if _, err := o.EncryptionConfig(); err != nil {
		errs = append(errs, err)
	}
	errs = append(errs, cmdutil.ClusterFlags(o.ClusterName, o.ClusterID, o.MaxConnected)...)
	if o.NodeName == "" {
		errs = append(errs, errors.New("--node-name is required (or set $NODE_NAME)"))
	}
	if nodeIP, err = netip.ParseAddr(o.NodeIP); err != nil || !nodeIP.Is4() {
		errs = append(errs, fmt.Errorf("--node-ip %q: want this node's IPv4 address", o.NodeIP))
	}
	switch o.Routing {
	case "tunnel":
		routing = state.Tunnel
	case "native":
		routing = state.Native
	default:
		errs = append(errs, fmt.Errorf("--routing %q: want tunnel or native", o.Routing))
	}
	return routing, nodeIP, errors.Join(errs...)
}

// RunAgent loads this node's datapath in the host's network namespace and
// runs the agent of o on it until ctx ends or the agent fails.
func RunAgent(ctx context.Context, o AgentOptions) error {
	log, err := cmdutil.Logger(o.LogLevel)
	if err != nil {
		return err
	}
	routing, nodeIP, err := o.validate()
	if err != nil {
		return err
	}
	enc, _ := o.EncryptionConfig() // validated above
	rest, err := clientcmd.BuildConfigFromFlags("", o.Kubeconfig)
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
	dp, err := node.New(node.Config{NS: host, NodeIP: nodeIP, UnderlayIf: o.UnderlayIf,
		ClusterID: o.ClusterID, Routing: routing, PinPath: o.BPFPinDir, Masquerade: o.Masquerade, Encryption: enc,
		Logger: log.With("component", "datapath")})
	if err != nil {
		return err
	}
	defer dp.Close()
	reg := metrics.NewProcessRegistry()
	if err := reg.Register(dp.Datapath().Collector(nil)); err != nil {
		return err
	}
	events, err := event.Counted(event.Scope(event.Logger(log), o.ClusterName, o.NodeName, event.ComponentAgent), reg)
	if err != nil {
		return err
	}
	cfg := o.Agent
	cfg.ClusterName, cfg.ClusterID, cfg.MaxConnectedClusters = o.ClusterName, o.ClusterID, o.MaxConnected
	cfg.NodeName, cfg.Kube, cfg.Dynamic, cfg.Node = o.NodeName, kube, dyn, dp
	if o.FailStatic {
		cfg.Mode = service.ModeFailStatic
	}
	cfg.Logger, cfg.Events, cfg.Metrics, cfg.Gatherer = log, events, reg, reg
	a, err := NewAgent(cfg)
	if err != nil {
		return err
	}
	return a.Run(ctx)
}
