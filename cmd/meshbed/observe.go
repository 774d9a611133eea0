package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"strconv"

	"github.com/go-logr/logr"
	"github.com/spf13/cobra"
	"k8s.io/klog/v2"

	"github.com/meshbed/meshbed/kind"
	"github.com/meshbed/meshbed/mesh/clustermesh"
	"github.com/meshbed/meshbed/mesh/flow"
	"github.com/meshbed/meshbed/mesh/flow/relay"
	"github.com/meshbed/meshbed/sim/control"
)

// observeOpts are the flags of `sim observe` and `observe`, Hubble's
// names where Hubble has the filter.
type observeOpts struct {
	cluster, node, fromCluster, toService, verdict string
	last                                           int
	follow                                         bool
	output                                         string
}

func (o *observeOpts) flags(cmd *cobra.Command, withCluster bool) {
	f := cmd.Flags()
	if withCluster {
		f.StringVar(&o.cluster, "cluster", "", "only flows observed by the agents of this cluster")
	}
	f.StringVar(&o.node, "node", "", "only flows observed on this node")
	f.StringVar(&o.fromCluster, "from-cluster", "", "only flows whose source is in this cluster")
	f.StringVar(&o.toService, "to-service", "", "only flows through this service (namespace/name)")
	f.StringVar(&o.verdict, "verdict", "", "only flows with this verdict: FORWARDED or DROPPED")
	f.IntVar(&o.last, "last", 0, fmt.Sprintf("show the last N flows first (default %d without --follow)", flow.DefaultLast))
	f.BoolVarP(&o.follow, "follow", "f", false, "keep showing new flows until interrupted")
	f.StringVarP(&o.output, "output", "o", flow.OutputCompact, "compact or json (one record a line)")
}

// request checks the flags with the same rules the server applies.
func (o *observeOpts) request(cmd *cobra.Command) (flow.Request, error) {
	if _, err := flow.ParseOutput(o.output); err != nil {
		return flow.Request{}, err
	}
	q := url.Values{}
	for k, v := range map[string]string{
		flow.ParamCluster: o.cluster, flow.ParamNode: o.node, flow.ParamFromCluster: o.fromCluster,
		flow.ParamToService: o.toService, flow.ParamVerdict: o.verdict,
	} {
		if v != "" {
			q.Set(k, v)
		}
	}
	if cmd.Flags().Changed("last") {
		q.Set(flow.ParamLast, strconv.Itoa(o.last))
	}
	if o.follow {
		q.Set(flow.ParamFollow, "true")
	}
	req, err := flow.ParseRequest(q)
	if err != nil {
		return flow.Request{}, fmt.Errorf("--%w", err)
	}
	return req, nil
}

func simObserveCmd(name *string) *cobra.Command {
	var o observeOpts
	cmd := &cobra.Command{
		Use:   "observe",
		Short: "Show the flows the agents of a running simulated mesh observe, as hubble observe",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			req, err := o.request(cmd)
			if err != nil {
				return &exitError{2, err}
			}
			p := flow.Printer{W: cmd.OutOrStdout(), Output: o.output}
			err = control.NewClient(*name).Flows(cmd.Context(), req, p.Print)
			return observeError(err, req, fmt.Sprintf("no simulated mesh %q is running (start one with `meshbed sim up -f FILE --name %s`)", *name, *name),
				fmt.Sprintf("flow stream ended: the simulated mesh %q or the agents observed stopped", *name))
		},
	}
	o.flags(cmd, true)
	return cmd
}

// observeError makes err one line: unreachable is what to say when the
// socket does not answer, ended when a followed stream is cut.
func observeError(err error, req flow.Request, unreachable, ended string) error {
	var reqErr *flow.RequestError
	var opErr *net.OpError
	switch {
	case (err == nil && req.Follow) || errors.Is(err, io.ErrUnexpectedEOF):
		return &exitError{1, errors.New(ended)}
	case err == nil, errors.Is(err, context.Canceled):
		return nil
	case errors.As(err, &reqErr):
		return &exitError{2, err}
	case unreachable != "" && errors.As(err, &opErr) && opErr.Op == "dial":
		return &exitError{2, errors.New(unreachable)}
	}
	return &exitError{1, err}
}

// observeCmd reads the flows of a real cluster's agents (or of the agent
// of this node, through its socket).
func observeCmd(clients clustermesh.ClientFactory) *cobra.Command {
	var o observeOpts
	var kubeconfig, kctx, socket string
	cmd := &cobra.Command{
		Use:   "observe --context CTX | --socket PATH",
		Short: "Show the flows meshbed's agents observe, as hubble observe",
		Long: "Reads the flow stream of every agent of the cluster of a kubeconfig context through a " +
			"Kubernetes port-forward to each agent pod (the agents serve it on their loopback, --flows-listen-address), " +
			"or of the agent of this node through its local socket (--socket).",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if kctx != "" && cmd.Flags().Changed("socket") {
				return &exitError{2, errors.New("--context and --socket exclude each other")}
			}
			req, err := o.request(cmd)
			if err != nil {
				return &exitError{2, err}
			}
			p := flow.Printer{W: cmd.OutOrStdout(), Output: o.output}
			if kctx == "" {
				src := relay.SocketSource(socket)
				err := src.Get(cmd.Context(), req, p.Print)
				return observeError(err, req, "", fmt.Sprintf("flow stream ended: the agent on %s stopped", socket))
			}
			cc, err := clients(kubeconfig, kctx)
			if err != nil {
				return &exitError{2, err}
			}
			// client-go's port-forward logs through klog as its streams
			// close ("Error closing listener") although nothing failed;
			// the errors that matter come back from Merge.
			klog.SetLogger(logr.Discard())
			agents := relay.Agents{Rest: cc.Rest, Kube: cc.Kube, Namespace: kind.Namespace,
				Selector: "app.kubernetes.io/name=" + kind.AgentName, Port: flow.DefaultPort}
			srcs, err := agents.Sources(cmd.Context(), o.node)
			if err != nil {
				return &exitError{2, err}
			}
			err = relay.Merge(cmd.Context(), srcs, req, p.Print)
			return observeError(err, req, "", fmt.Sprintf("flow stream ended: the agents of context %q stopped", kctx))
		},
	}
	o.flags(cmd, false)
	cmd.Flags().StringVar(&kubeconfig, "kubeconfig", "", "kubeconfig file (default $KUBECONFIG or ~/.kube/config)")
	cmd.Flags().StringVar(&kctx, "context", "", "kubeconfig context of the cluster")
	cmd.Flags().StringVar(&socket, "socket", agentSocket, "without --context: the socket of the agent of this node")
	return cmd
}

// agentSocket is meshbed-agent's --state-socket default, its local control
// socket, where it serves flows too.
const agentSocket = "/var/run/meshbed/agent.sock"
