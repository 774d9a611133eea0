package clustermesh

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/go-logr/logr"
	"k8s.io/klog/v2"

	"github.com/meshbed/meshbed/internal/cmdutil"
	"github.com/meshbed/meshbed/kind"
	"github.com/meshbed/meshbed/mesh/flow"
	"github.com/meshbed/meshbed/mesh/flow/relay"
)

// What follows are the checks and bodies of `meshbed clustermesh ...` and
// `meshbed observe`. Their errors carry the command's exit code
// (cmdutil.ExitError): 2 for invalid flags, 1 for a cluster not ready.

// Validate checks the flags of enable.
func (o EnableOptions) Validate() error {
	if o.Context == "" {
		return cmdutil.Invalid(errors.New("--context is required"))
	}
	return nil
}

// Validate checks the flags of connect, all at once.
func (o ConnectOptions) Validate() error {
	var errs []error
	if o.Context == "" {
		errs = append(errs, errors.New("--context is required"))
	}
	if o.Destination == "" {
		errs = append(errs, errors.New("--destination-context is required"))
	} else if o.Destination == o.Context {
		errs = append(errs, fmt.Errorf("--destination-context %q: same as --context", o.Destination))
	}
	return cmdutil.Invalid(errors.Join(errs...))
}

// StatusCommand is Status from the flags of status: with probe, the
// mesh-apiserver is asked (with a certificate from the CA in caDir)
// whether kvstoremesh has synced each remote cluster. Not ready is exit 1.
func StatusCommand(ctx context.Context, out io.Writer, clients ClientFactory, o StatusOptions, probe bool, caDir string) error {
	if o.Context == "" {
		return cmdutil.Invalid(errors.New("--context is required"))
	}
	if o.WaitTimeout <= 0 {
		return cmdutil.Invalidf("--wait-timeout %v: must be positive", o.WaitTimeout)
	}
	var p Probe
	if probe {
		p = KVStoreProbe(caDir)
	}
	err := Status(ctx, out, clients, p, o)
	if errors.Is(err, ErrNotReady) {
		return cmdutil.Failed(err)
	}
	return err
}

// ObserveOptions are the flags of `meshbed observe`: the flows of every
// agent of the cluster of a kubeconfig context, or without Context of the
// agent of this node through its Socket.
type ObserveOptions struct {
	Kubeconfig, Context, Socket string
	// SocketSet is whether --socket was given.
	SocketSet bool
	Flows     flow.Options
}

// Observe prints the flows of o's agents as hubble observe: from a cluster
// through a Kubernetes port-forward to each agent pod (the agents serve
// the stream on their loopback), or from this node's agent socket.
func Observe(ctx context.Context, out io.Writer, clients ClientFactory, o ObserveOptions) error {
	if o.Context != "" && o.SocketSet {
		return cmdutil.Invalid(errors.New("--context and --socket exclude each other"))
	}
	req, err := o.Flows.Request()
	if err != nil {
		return cmdutil.Invalid(err)
	}
	p := flow.Printer{W: out, Output: o.Flows.Output}
	if o.Context == "" {
		err := relay.SocketSource(o.Socket).Get(ctx, req, p.Print)
		return flow.StreamError(err, req, "", fmt.Sprintf("flow stream ended: the agent on %s stopped", o.Socket))
	}
	cc, err := clients(o.Kubeconfig, o.Context)
	if err != nil {
		return cmdutil.Invalid(err)
	}
	// client-go's port-forward logs through klog as its streams close
	// ("Error closing listener") although nothing failed; the errors that
	// matter come back from Merge.
	klog.SetLogger(logr.Discard())
	agents := relay.Agents{Rest: cc.Rest, Kube: cc.Kube, Namespace: kind.Namespace,
		Selector: "app.kubernetes.io/name=" + kind.AgentName, Port: flow.DefaultPort}
	srcs, err := agents.Sources(ctx, o.Flows.Node)
	if err != nil {
		return cmdutil.Invalid(err)
	}
	err = relay.Merge(ctx, srcs, req, p.Print)
	return flow.StreamError(err, req, "", fmt.Sprintf("flow stream ended: the agents of context %q stopped", o.Context))
}

// DefaultCADir is where the mesh CA is kept unless --ca-dir says
// otherwise: meshbed/ca in the user's configuration directory.
func DefaultCADir() string {
	dir, err := os.UserConfigDir()
	if err != nil {
		return filepath.Join(".meshbed", "ca")
	}
	return filepath.Join(dir, "meshbed", "ca")
}
