package sim

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"path/filepath"
	"sync"
	"time"

	"github.com/meshbed/meshbed/daemon"
	"github.com/meshbed/meshbed/datapath/netns"
	"github.com/meshbed/meshbed/datapath/node"
	"github.com/meshbed/meshbed/datapath/overlay"
	"github.com/meshbed/meshbed/mesh/agent"
	"github.com/meshbed/meshbed/mesh/event"
	"github.com/meshbed/meshbed/mesh/remote"
	"github.com/meshbed/meshbed/mesh/service"
	"github.com/meshbed/meshbed/sim/workload"
)

// Node is a simulated node: a network namespace on the underlay with the
// node's datapath loaded, and an agent that may be stopped and started.
type Node struct {
	name    string
	cluster *Cluster
	ns      *netns.NS
	ip      netip.Addr
	podCIDR netip.Prefix
	port    *overlay.Port
	dp      *node.Node

	mu     sync.Mutex
	agent  *agent.Agent
	remote *remote.Manager
	proc   *proc
	pods   map[string]*Pod // namespace/name
}

// Name returns the node's name.
func (n *Node) Name() string { return n.name }

// IP returns the node's underlay address.
func (n *Node) IP() netip.Addr { return n.ip }

// NS returns the node's network namespace.
func (n *Node) NS() *netns.NS { return n.ns }

// Datapath returns the node's datapath.
func (n *Node) Datapath() *node.Node { return n.dp }

// Agent returns the running agent, or nil while it is stopped.
func (n *Node) Agent() *agent.Agent {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.agent
}

// Pod is a simulated pod.
type Pod struct {
	Namespace, Name string
	Deployment      string
	IP              netip.Addr
	// Node is the name of the node the pod runs on.
	Node string
	ns   *netns.NS
	echo *workload.Echo
	// sandbox is the container ID the pod's CNI ADD was made for.
	sandbox string
}

// Dial connects from inside the pod.
func (p *Pod) Dial(ctx context.Context, network, addr string) (net.Conn, error) {
	return p.ns.Dial(ctx, nil, network, addr)
}

func (c *Cluster) newNode(i int) (*Node, error) {
	name := fmt.Sprintf("node-%d", i)
	ip, err := overlay.HostAddr(c.mesh.spec.Underlay, int(c.spec.ID), i)
	if err != nil {
		return nil, err
	}
	podCIDR, err := nodePodCIDR(c.spec.PodCIDR, i)
	if err != nil {
		return nil, err
	}
	n := &Node{name: name, cluster: c, ip: ip, podCIDR: podCIDR, pods: map[string]*Pod{}}
	if n.ns, err = netns.New(c.spec.Name + "/" + name); err != nil {
		return nil, err
	}
	if n.port, err = c.mesh.underlay.Attach(n.ns, overlay.PortConfig{Addr: ip}); err != nil {
		n.ns.Close()
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	n.dp, err = node.New(node.Config{
		NS: n.ns, NodeIP: ip, UnderlayIf: n.port.IfName, ClusterID: c.spec.ID,
		Routing: c.mesh.spec.Routing, Masquerade: node.DefaultMasquerade, Logger: c.log.With("node", name),
		Encryption: node.Encryption{Mode: c.mesh.spec.Encryption, Strict: c.mesh.spec.EncryptionStrict,
			StateDir: n.stateDir()},
	})
	if err != nil {
		n.ns.Close()
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	if err := c.mesh.registerDatapath(c.spec.Name, name, n.dp.Datapath().Collector(nil)); err != nil {
		n.dp.Close()
		n.ns.Close()
		return nil, fmt.Errorf("%s: metrics: %w", name, err)
	}
	return n, nil
}

// stateDir is the node's agent state directory (endpoints, WireGuard key).
func (n *Node) stateDir() string {
	return filepath.Join(n.cluster.mesh.dir, "state", n.cluster.spec.Name, n.name)
}

// cniSocket is the unix socket on which the node's agent serves the CNI
// protocol, the simulated kubelet's way in, as meshbed-cni's on a real node.
func (n *Node) cniSocket() string {
	return filepath.Join(n.cluster.mesh.dir, "cni", n.cluster.spec.Name, n.name+".sock")
}

// nodePodCIDR is the i-th /24 of the cluster's pod CIDR.
func nodePodCIDR(cluster netip.Prefix, i int) (netip.Prefix, error) {
	a := cluster.Masked().Addr().As4()
	off := uint32(i) << 8
	v := uint32(a[0])<<24 | uint32(a[1])<<16 | uint32(a[2])<<8 | uint32(a[3])
	v += off
	p := netip.PrefixFrom(netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)}), 24)
	if !cluster.Contains(p.Addr()) {
		return netip.Prefix{}, fmt.Errorf("pod CIDR %s has no room for node %d", cluster, i)
	}
	return p, nil
}

// simSyncTimeout replaces the binary's --sync-timeout (agent.DefaultSyncTimeout,
// 30 s) in the simulator: an agent started or restarted while a remote
// cluster is unreachable programs its services after this long, and the
// simulator's tests and scenarios restart agents under partitions; a
// shorter wait keeps them quick without changing what they check.
const simSyncTimeout = 10 * time.Second

// StartAgent starts the node's agent (again, after StopAgent). The
// datapath stays loaded in between, as BPF programs outlive a restarting
// agent on a real node.
func (n *Node) StartAgent() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.proc != nil {
		return fmt.Errorf("agent on %s/%s is already running", n.cluster.spec.Name, n.name)
	}
	c := n.cluster
	log := c.log.With("node", n.name)
	reg, events, err := c.mesh.registry(c.spec.Name, n.name, event.ComponentAgent)
	if err != nil {
		return fmt.Errorf("agent on %s: %w", n.name, err)
	}
	// The binary's defaults (daemon.DefaultAgentConfig), then the
	// environment: the node's namespace, its own CNI socket, no TCP
	// servers (every node shares the host's loopback).
	cfg := daemon.DefaultAgentConfig()
	cfg.ClusterName, cfg.ClusterID, cfg.NodeName = c.spec.Name, c.spec.ID, n.name
	cfg.Kube, cfg.Dynamic, cfg.Node = c.API.Client, c.API.Dynamic, n.dp
	cfg.RemoteDir = c.agentConfigDir()
	cfg.RemoteDialer = func(ctx context.Context, addr string) (net.Conn, error) { return n.ns.Dial(ctx, nil, "tcp", addr) }
	cfg.HealthInterval, cfg.HealthTimeout = c.mesh.spec.HealthInterval, c.mesh.spec.HealthTimeout
	cfg.StateDir = n.stateDir()
	cfg.CNISocket = n.cniSocket()
	cfg.StateSocket, cfg.FlowsAddress, cfg.PrometheusAddress = "", "", ""
	cfg.Logger = log
	cfg.Events, cfg.Metrics = events, reg
	if c.mesh.spec.FailStatic {
		cfg.Mode = service.ModeFailStatic
	}
	// Deliberate override, see simSyncTimeout.
	cfg.SyncTimeout = simSyncTimeout
	d, err := daemon.NewAgent(cfg)
	if err != nil {
		return fmt.Errorf("agent on %s: %w", n.name, err)
	}
	a, mgr := d.Agent(), d.Remote()
	n.agent, n.remote = a, mgr
	n.proc = startProc(c.mesh.ctx, log, "agent", d.Run)
	return nil
}

// StopAgent stops the node's agent; its datapath keeps forwarding with the
// state last programmed.
func (n *Node) StopAgent() error {
	n.mu.Lock()
	p := n.proc
	n.proc, n.agent, n.remote = nil, nil, nil
	n.mu.Unlock()
	if p == nil {
		return fmt.Errorf("agent on %s/%s is not running", n.cluster.spec.Name, n.name)
	}
	return p.stop()
}

// WaitAgentReady waits until the agent has programmed its first state.
func (n *Node) WaitAgentReady(ctx context.Context) error {
	for {
		a := n.Agent()
		if a == nil {
			return fmt.Errorf("agent on %s/%s is not running", n.cluster.spec.Name, n.name)
		}
		if s, _, _ := a.State(); s != nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("agent on %s/%s: %w", n.cluster.spec.Name, n.name, ctx.Err())
		case <-a.Applied():
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func (n *Node) close() error {
	var errs []error
	n.mu.Lock()
	p := n.proc
	n.proc, n.agent, n.remote = nil, nil, nil
	pods := n.pods
	n.pods = map[string]*Pod{}
	n.mu.Unlock()
	if p != nil {
		errs = append(errs, p.stop())
	}
	for _, pod := range pods {
		if pod.echo != nil {
			errs = append(errs, pod.echo.Close())
		}
		errs = append(errs, pod.ns.Close())
	}
	if n.dp != nil {
		errs = append(errs, n.dp.Close())
	}
	if n.ns != nil {
		errs = append(errs, n.ns.Close())
	}
	return errors.Join(errs...)
}

// proc is a component running as a goroutine that can be stopped.
type proc struct {
	cancel context.CancelFunc
	done   chan struct{}
	err    error
}

func startProc(parent context.Context, log *slog.Logger, name string, run func(context.Context) error) *proc {
	ctx, cancel := context.WithCancel(parent)
	p := &proc{cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(p.done)
		p.err = run(ctx)
		if p.err != nil && ctx.Err() == nil {
			log.Error("Component exited", "component", name, "err", p.err)
		}
	}()
	return p
}

// exited reports whether the process ended on its own, with its error.
func (p *proc) exited() (bool, error) {
	select {
	case <-p.done:
		return true, p.err
	default:
		return false, nil
	}
}

func (p *proc) stop() error {
	p.cancel()
	<-p.done
	return p.err
}

// Remotes reports the agent's remote clusters, or nil while it is stopped.
func (n *Node) Remotes() []remote.ClusterStatus {
	n.mu.Lock()
	mgr := n.remote
	n.mu.Unlock()
	if mgr == nil {
		return nil
	}
	return mgr.Status()
}
