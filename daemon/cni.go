package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"time"

	"github.com/meshbed/meshbed/datapath/endpoint"
	"github.com/meshbed/meshbed/datapath/state"
	"github.com/meshbed/meshbed/mesh/agent"
	"github.com/meshbed/meshbed/mesh/agent/cni"
)

// cniRetry is the pause before the CNI server tries its socket again.
const cniRetry = time.Second

// agentEndpoints is what the CNI server uses of *agent.Agent.
type agentEndpoints interface {
	AddEndpoint(ctx context.Context, req agent.EndpointRequest) (agent.Endpoint, error)
	DeleteEndpoint(ctx context.Context, namespace, pod string) error
	Endpoints() []agent.Endpoint
	State() (s *state.State, applyErr error, servicesSynced bool)
}

// cniBackend adapts the agent to the CNI server.
type cniBackend struct{ a agentEndpoints }

func (b cniBackend) Add(ctx context.Context, req cni.AddRequest) (cni.Endpoint, error) {
	if req.IfName != endpoint.PodIfName {
		// The datapath always names the pod's end eth0, as every
		// Kubernetes runtime asks.
		return cni.Endpoint{}, &cni.Error{Code: cni.CodeInvalidEnvironment,
			Msg: fmt.Sprintf("CNI_IFNAME %q: meshbed creates the pod's interface as %s", req.IfName, endpoint.PodIfName)}
	}
	ep, err := b.a.AddEndpoint(ctx, agent.EndpointRequest{Namespace: req.Namespace, Pod: req.Pod, NetNS: req.NetNS})
	if err != nil {
		return cni.Endpoint{}, err
	}
	return toCNI(ep), nil
}

func (b cniBackend) Delete(ctx context.Context, p cni.Pod) error {
	return b.a.DeleteEndpoint(ctx, p.Namespace, p.Name)
}

func (b cniBackend) Lookup(p cni.Pod) (cni.Endpoint, bool) {
	for _, ep := range b.a.Endpoints() {
		if ep.Namespace == p.Namespace && ep.Pod == p.Name {
			return toCNI(ep), true
		}
	}
	return cni.Endpoint{}, false
}

// Ready: the datapath holds a desired state, and the last one applied
// cleanly.
func (b cniBackend) Ready() error {
	s, applyErr, _ := b.a.State()
	switch {
	case s == nil:
		return errors.New("no desired state applied yet")
	case applyErr != nil:
		return fmt.Errorf("datapath: %w", applyErr)
	}
	return nil
}

// toCNI describes an endpoint the way package endpoint plumbed it: the
// pod's /32 behind the link-local gateway, MACs derived from the address.
func toCNI(ep agent.Endpoint) cni.Endpoint {
	return cni.Endpoint{
		Namespace: ep.Namespace, Pod: ep.Pod, IP: ep.IP, Gateway: endpoint.DefaultGateway,
		HostInterface: ep.Interface, HostMAC: endpoint.HostMAC(ep.IP).String(),
		PodInterface: endpoint.PodIfName, PodMAC: endpoint.PodMAC(ep.IP).String(),
	}
}

// serveCNI serves the CNI protocol for a on the unix socket path until ctx
// ends or the returned function is called (which waits for the server to
// stop). It never fails the agent: if the socket cannot be bound (or the
// server stops), it logs and tries again every second, while the agent
// keeps serving the endpoints it has; new pods wait, and the runtime retries
// them. An empty path disables it.
func serveCNI(ctx context.Context, a agentEndpoints, path string, log *slog.Logger) (stop func()) {
	if path == "" {
		return func() {}
	}
	srv := cni.NewServer(cniBackend{a}, log)
	return serveUnix(ctx, "CNI server", path, log, srv.Serve)
}

// serveUnix runs serve on the unix socket path until ctx ends or the
// returned function is called (which waits for it to stop). It never fails
// the agent: if the socket cannot be bound, or serve fails, it logs what
// and tries again every cniRetry, while the agent keeps serving what it
// has. serve returns nil once its context ends.
func serveUnix(ctx context.Context, what, path string, log *slog.Logger, serve func(context.Context, net.Listener) error) (stop func()) {
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			l, err := cni.Listen(path) // a private unix socket
			if err == nil {
				log.Info(what+" listening", "socket", path)
				if err = serve(ctx, l); err == nil {
					return
				}
			}
			log.Error(what+" down; retrying", "socket", path, "err", err, "in", cniRetry)
			select {
			case <-ctx.Done():
				return
			case <-time.After(cniRetry):
			}
		}
	}()
	return func() {
		cancel()
		<-done
	}
}
