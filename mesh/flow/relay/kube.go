package relay

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strconv"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/portforward"
	"k8s.io/client-go/transport/spdy"

	"github.com/meshbed/meshbed/mesh/flow"
)

// Agents says where a cluster's agents are and on which port, on their
// pod's loopback, they serve flows.
type Agents struct {
	Rest      *rest.Config
	Kube      kubernetes.Interface
	Namespace string
	// Selector is the agents' pod label selector.
	Selector string
	// Port is the agents' --flows-listen-address port.
	Port int
}

// Sources returns one Source per running agent pod (on node, when node
// is not empty). Each Source opens a port-forward to its pod through the
// API server when it is read: that needs only the pods/portforward
// permission, reaches the agent's loopback listener without opening a port
// on the node network, and works wherever the kubeconfig does.
func (a Agents) Sources(ctx context.Context, node string) ([]Source, error) {
	opts := metav1.ListOptions{LabelSelector: a.Selector}
	if node != "" {
		opts.FieldSelector = "spec.nodeName=" + node
	}
	pods, err := a.Kube.CoreV1().Pods(a.Namespace).List(ctx, opts)
	if err != nil {
		return nil, fmt.Errorf("list agents (%s in namespace %s): %w", a.Selector, a.Namespace, err)
	}
	var out []Source
	for _, p := range pods.Items {
		if p.Status.Phase != corev1.PodRunning || p.DeletionTimestamp != nil {
			continue
		}
		out = append(out, Source{
			Name: fmt.Sprintf("agent %s/%s on %s", p.Namespace, p.Name, p.Spec.NodeName),
			Get: func(ctx context.Context, req flow.Request, fn func(flow.Record) error) error {
				return a.get(ctx, p.Namespace, p.Name, req, fn)
			},
		})
	}
	if len(out) == 0 {
		where := ""
		if node != "" {
			where = " on node " + node
		}
		return nil, fmt.Errorf("no running agent pod (%s in namespace %s)%s: is meshbed installed?", a.Selector, a.Namespace, where)
	}
	return out, nil
}

// get streams one agent's flows through a port-forward to its pod.
func (a Agents) get(ctx context.Context, namespace, pod string, req flow.Request, fn func(flow.Record) error) error {
	transport, upgrader, err := spdy.RoundTripperFor(a.Rest)
	if err != nil {
		return fmt.Errorf("port-forward: %w", err)
	}
	u := a.Kube.CoreV1().RESTClient().Post().Resource("pods").Namespace(namespace).Name(pod).SubResource("portforward").URL()
	dialer := spdy.NewDialer(upgrader, &http.Client{Transport: transport}, http.MethodPost, u)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	ready := make(chan struct{})
	pf, err := portforward.NewOnAddressesWithContext(ctx, dialer, []string{"127.0.0.1"},
		[]string{"0:" + strconv.Itoa(a.Port)}, ready, io.Discard, io.Discard)
	if err != nil {
		return fmt.Errorf("port-forward: %w", err)
	}
	fwdErr := make(chan error, 1)
	go func() { fwdErr <- pf.ForwardPorts() }()
	select {
	case <-ready:
	case err := <-fwdErr:
		return fmt.Errorf("port-forward to port %d: %w", a.Port, err)
	case <-ctx.Done():
		return ctx.Err()
	}
	defer pf.Close()
	ports, err := pf.GetPorts()
	if err != nil || len(ports) == 0 {
		return fmt.Errorf("port-forward: no local port: %v", err)
	}
	base := fmt.Sprintf("http://127.0.0.1:%d", ports[0].Local)
	return flow.Get(ctx, &http.Client{}, base, req, fn)
}
