// Package daemon assembles meshbed's node agent from its parts: the node's
// datapath (loaded by the caller), the mesh agent, its view of the remote
// clusters, and the servers beside it (the CNI socket the plugin calls for
// every pod sandbox, the state socket `meshbed-agent state` reads, the flow
// stream and the metrics).
//
// cmd/meshbed-agent and the simulator both build their agents here, with
// the same defaults (DefaultAgentConfig), so that a simulated node attaches
// its pods through the same CNI server and runs the same code as a node of
// a Kind cluster. The agent's process is assembled here too, from its
// flags (RunAgent), so that cmd/meshbed-agent only defines them; the
// mesh-apiserver's is in daemon/meshapiserver, so that the agent links no
// etcd server. The package sits above mesh/ and datapath/, which never
// import each other's worlds.
package daemon

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/meshbed/meshbed/datapath/node"
	"github.com/meshbed/meshbed/mesh/agent"
	"github.com/meshbed/meshbed/mesh/agent/cni"
	"github.com/meshbed/meshbed/mesh/flow"
	"github.com/meshbed/meshbed/mesh/metrics"
	"github.com/meshbed/meshbed/mesh/remote"
)

// Defaults of the agent's servers.
const (
	// DefaultStateSocket is where the agent reports its node's state.
	DefaultStateSocket = "/var/run/meshbed/agent.sock"
	// DefaultCNISocket is where the agent serves the CNI plugin.
	DefaultCNISocket = cni.DefaultSocket
)

// DefaultFlowsAddress is Hubble's port on loopback: the agent runs on the
// host network, and loopback keeps the stream off the node network
// (port-forwards reach it).
var DefaultFlowsAddress = net.JoinHostPort("127.0.0.1", strconv.Itoa(flow.DefaultPort))

// AgentConfig is everything a node agent is built from.
type AgentConfig struct {
	// Config is the mesh agent's. NewAgent fills its datapath fields
	// (Datapath, Plumber, Monitor, Restored, WireguardPubKey) from Node and
	// Remote from the fields below.
	agent.Config

	// Node is the node's datapath. The caller loads and closes it: it
	// outlives the agent, as BPF programs outlive a restarting agent.
	Node *node.Node

	// RemoteDir holds one config file per remote cluster.
	RemoteDir string
	// RemoteDialer, when set, opens every connection to a remote etcd (the
	// simulator dials from inside the node's network namespace).
	RemoteDialer func(ctx context.Context, addr string) (net.Conn, error)
	// HealthInterval and HealthTimeout bound loss detection of remote
	// clusters; zero means the kvstore defaults.
	HealthInterval, HealthTimeout time.Duration

	// CNISocket is the unix socket of the CNI server; empty: none.
	CNISocket string
	// StateSocket is the unix socket of the node's state report (and of
	// the flow stream); empty: none.
	StateSocket string
	// FlowsAddress is the TCP address of the flow stream; empty: none.
	FlowsAddress string
	// PrometheusAddress serves Gatherer at /metrics; empty: not served.
	PrometheusAddress string
	// Gatherer is what PrometheusAddress serves (the registry that
	// Config.Metrics registers into).
	Gatherer prometheus.Gatherer
}

// DefaultAgentConfig is the agent of cmd/meshbed-agent's flag defaults.
func DefaultAgentConfig() AgentConfig {
	return AgentConfig{
		Config:            agent.DefaultConfig(),
		CNISocket:         DefaultCNISocket,
		StateSocket:       DefaultStateSocket,
		FlowsAddress:      DefaultFlowsAddress,
		PrometheusAddress: agent.DefaultPrometheusServeAddr,
	}
}

// Agent is a node agent and its servers.
type Agent struct {
	cfg    AgentConfig
	agent  *agent.Agent
	remote *remote.Manager
	log    *slog.Logger
}

// NewAgent validates cfg and builds the agent; Run starts it.
func NewAgent(cfg AgentConfig) (*Agent, error) {
	if cfg.Node == nil {
		return nil, fmt.Errorf("agent: no datapath")
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	mgr, err := remote.New(remote.Config{
		ClusterName: cfg.ClusterName, ClusterID: cfg.ClusterID, MaxConnectedClusters: cfg.MaxConnectedClusters,
		Dir: cfg.RemoteDir, Dialer: cfg.RemoteDialer,
		HealthInterval: cfg.HealthInterval, HealthTimeout: cfg.HealthTimeout,
		SyncTimeout: cfg.SyncTimeout, Logger: log.With("component", "remote"), Events: cfg.Events,
		Metrics: cfg.Metrics, SourceNode: cfg.NodeName,
	})
	if err != nil {
		return nil, err
	}
	ac := cfg.Config
	ac.Datapath, ac.Plumber, ac.Monitor = cfg.Node, cfg.Node, cfg.Node
	ac.Restored = cfg.Node.Programmed()
	ac.WireguardPubKey = cfg.Node.PublicKey()
	ac.Remote = mgr
	ac.Logger = log.With("component", "agent")
	a, err := agent.New(ac)
	if err != nil {
		return nil, err
	}
	return &Agent{cfg: cfg, agent: a, remote: mgr, log: log}, nil
}

// Agent returns the mesh agent.
func (d *Agent) Agent() *agent.Agent { return d.agent }

// Remote returns the agent's view of the remote clusters.
func (d *Agent) Remote() *remote.Manager { return d.remote }

// Run runs the agent and its servers until ctx ends or the agent fails.
// The servers never fail the agent: a socket that cannot be bound is
// logged and tried again (see serveCNI).
func (d *Agent) Run(ctx context.Context) error {
	if d.cfg.PrometheusAddress != "" && d.cfg.Gatherer != nil {
		if err := metrics.Serve(ctx, d.cfg.PrometheusAddress, d.cfg.Gatherer, d.log.With("component", "metrics")); err != nil {
			return err
		}
	}
	var flows http.Handler
	if d.cfg.StateSocket != "" || d.cfg.FlowsAddress != "" {
		flows = flow.NodeHandler(ctx, d.agent.Flows)
	}
	defer serveCNI(ctx, d.agent, d.cfg.CNISocket, d.log.With("component", "cni"))()
	defer serveState(ctx, d.cfg.NodeName, d.agent, d.cfg.Node, d.remote.Status, d.cfg.StateSocket, flows, d.log.With("component", "state"))()
	defer serveFlows(ctx, d.cfg.FlowsAddress, flows, d.log.With("component", "flows"))()
	return d.agent.Run(ctx)
}

// serveFlows serves the flow stream on addr until ctx ends or the returned
// function is called. Like the CNI server it never fails the agent: a port
// that cannot be bound is logged, and flows stay on the state socket.
func serveFlows(ctx context.Context, addr string, h http.Handler, log *slog.Logger) (stop func()) {
	if addr == "" {
		return func() {}
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		log.Error("Flow stream not served on TCP", "address", addr, "err", err)
		return func() {}
	}
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		log.Info("Serving flows", "address", l.Addr())
		if err := flow.Serve(ctx, l, h); err != nil {
			log.Error("Flow server stopped", "err", err)
		}
	}()
	return func() {
		cancel()
		<-done
	}
}
