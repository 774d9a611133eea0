package sim

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/meshbed/meshbed/datapath/endpoint"
	"github.com/meshbed/meshbed/datapath/netns"
	"github.com/meshbed/meshbed/mesh/agent/cni"
	"github.com/meshbed/meshbed/sim/workload"
)

// kubelet is a cluster's kubelet side: it runs pods on their nodes through
// the node's agent, as the CNI plugin would call it.
type kubelet Cluster

func (r *kubelet) StartPod(ctx context.Context, pod *corev1.Pod) (netip.Addr, error) {
	c := (*Cluster)(r)
	n, ok := c.node(pod.Spec.NodeName)
	if !ok {
		return netip.Addr{}, fmt.Errorf("no node %q", pod.Spec.NodeName)
	}
	a := n.Agent()
	if a == nil {
		return netip.Addr{}, fmt.Errorf("agent on %s is not running", n.name)
	}
	ns, err := netns.New(c.spec.Name + "/" + pod.Namespace + "/" + pod.Name)
	if err != nil {
		return netip.Addr{}, err
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	// A new sandbox for every start, as a runtime makes one.
	sandbox := fmt.Sprintf("%s-%d", pod.UID, sandboxSeq.Add(1))
	cniPod := cni.Pod{Namespace: pod.Namespace, Name: pod.Name}
	client := cni.NewClient(n.cniSocket())
	ep, err := cniAdd(ctx, client, cni.AddRequest{ContainerID: sandbox, NetNS: ns.Path(),
		IfName: endpoint.PodIfName, Namespace: pod.Namespace, Pod: pod.Name})
	if err != nil {
		// A kubelet follows a failed CNI ADD with a DEL, so the agent
		// forgets whatever it recorded or plumbed before failing.
		delCtx, cancelDel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer cancelDel()
		if derr := client.Delete(delCtx, cniPod, sandbox); derr != nil && !errors.Is(derr, errTryAgain) {
			err = errors.Join(err, fmt.Errorf("CNI DEL after failed ADD: %w", derr))
		}
		ns.Close()
		return netip.Addr{}, err
	}
	p := &Pod{Namespace: pod.Namespace, Name: pod.Name, Deployment: ownerDeployment(pod), IP: ep.IP, Node: n.name, ns: ns, sandbox: sandbox}
	if echo, err := startWorkload(c.spec.Name, n.name, pod, ns); err != nil {
		_ = client.Delete(ctx, cniPod, sandbox)
		ns.Close()
		return netip.Addr{}, err
	} else {
		p.echo = echo
	}
	n.mu.Lock()
	n.pods[pod.Namespace+"/"+pod.Name] = p
	n.mu.Unlock()
	return ep.IP, nil
}

func (r *kubelet) StopPod(ctx context.Context, pod *corev1.Pod) error {
	c := (*Cluster)(r)
	n, ok := c.node(pod.Spec.NodeName)
	if !ok {
		return nil
	}
	key := pod.Namespace + "/" + pod.Name
	n.mu.Lock()
	p, ok := n.pods[key]
	n.mu.Unlock()
	if !ok {
		return nil
	}
	a := n.Agent()
	if a == nil {
		// A kubelet retries CNI DEL until the agent is back.
		return fmt.Errorf("agent on %s is not running", n.name)
	}
	n.mu.Lock()
	echo := p.echo
	p.echo = nil
	n.mu.Unlock()
	if echo != nil {
		_ = echo.Close()
	}
	if err := cni.NewClient(n.cniSocket()).Delete(ctx, cni.Pod{Namespace: pod.Namespace, Name: pod.Name}, p.sandbox); err != nil {
		return err
	}
	n.mu.Lock()
	delete(n.pods, key)
	n.mu.Unlock()
	return p.ns.Close()
}

// sandboxSeq numbers the simulated sandboxes.
var sandboxSeq atomic.Uint64

// errTryAgain matches the CNI client's error for an agent that is not
// serving its socket (yet, or while it restarts).
var errTryAgain = &cni.Error{Code: cni.CodeTryAgainLater}

// cniAdd sends a CNI ADD, retrying while the agent's socket is not served
// yet (an agent just started binds it as it starts running), as a runtime
// retries the sandbox.
func cniAdd(ctx context.Context, c *cni.Client, req cni.AddRequest) (cni.Endpoint, error) {
	for {
		ep, err := c.Add(ctx, req)
		if err == nil || !errors.Is(err, errTryAgain) {
			return ep, err
		}
		select {
		case <-ctx.Done():
			return cni.Endpoint{}, err
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// drainQuiet is how long a terminating echo server must have seen no
// connection before it counts as drained: long enough for every node's
// load balancer, local and remote (EndpointSlice, export, kvstoremesh,
// agent, BPF maps), to have stopped choosing the pod under load.
const drainQuiet = 2 * time.Second

// TerminatePod drains the pod's echo server (an idle pod has nothing to
// finish) until it has had no connection for drainQuiet, or ctx ends.
func (r *kubelet) TerminatePod(ctx context.Context, pod *corev1.Pod) error {
	c := (*Cluster)(r)
	n, ok := c.node(pod.Spec.NodeName)
	if !ok {
		return nil
	}
	n.mu.Lock()
	var echo *workload.Echo
	if p, ok := n.pods[pod.Namespace+"/"+pod.Name]; ok {
		echo = p.echo
	}
	n.mu.Unlock()
	if echo == nil {
		return nil
	}
	return echo.Drain(ctx, drainQuiet)
}

func ownerDeployment(pod *corev1.Pod) string {
	for _, ref := range pod.OwnerReferences {
		if ref.Kind == "Deployment" {
			return ref.Name
		}
	}
	return ""
}

// startWorkload gives a pod its behaviour by image: the echo server on each
// declared container port (80 if none), or nothing (an idle pod).
func startWorkload(cluster, node string, pod *corev1.Pod, ns *netns.NS) (*workload.Echo, error) {
	var ports []int32
	echo := false
	for _, ctr := range pod.Spec.Containers {
		if !workload.IsEcho(ctr.Image) {
			continue
		}
		echo = true
		for _, p := range ctr.Ports {
			if p.Protocol == "" || p.Protocol == corev1.ProtocolTCP {
				ports = append(ports, p.ContainerPort)
			}
		}
	}
	if !echo {
		return nil, nil
	}
	if len(ports) == 0 {
		ports = []int32{80}
	}
	var lns []net.Listener
	for _, port := range ports {
		ln, err := ns.Listen("tcp", ":"+strconv.Itoa(int(port)))
		if err != nil {
			for _, l := range lns {
				l.Close()
			}
			return nil, fmt.Errorf("echo server on port %d: %w", port, err)
		}
		lns = append(lns, ln)
	}
	return workload.ServeEcho(cluster, node, pod.Name, lns), nil
}

// Pods lists the running pods of a deployment, by name.
func (c *Cluster) Pods(namespace, deployment string) []*Pod {
	var out []*Pod
	for _, n := range c.nodes {
		n.mu.Lock()
		for _, p := range n.pods {
			if p.Namespace == namespace && p.Deployment == deployment {
				out = append(out, p)
			}
		}
		n.mu.Unlock()
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// ErrNoPod is returned when a deployment has no running pod to send from.
var ErrNoPod = errors.New("no running pod")

// Client returns an HTTP client that sends from the first running pod of a
// deployment, and a resolver for service names as the pod's cluster DNS
// would answer them.
func (c *Cluster) Client(namespace, deployment string, timeout time.Duration) (*workload.Client, *Pod, error) {
	pods := c.Pods(namespace, deployment)
	if len(pods) == 0 {
		return nil, nil, fmt.Errorf("%s/%s/%s: %w", c.spec.Name, namespace, deployment, ErrNoPod)
	}
	p := pods[0]
	return workload.NewClient(p.Dial, timeout), p, nil
}

// ResolveURL rewrites a URL's host from a service name (svc, svc.ns,
// svc.ns.svc, svc.ns.svc.cluster.local) to its ClusterIP in this cluster,
// as the cluster DNS would for a pod in namespace.
func (c *Cluster) ResolveURL(ctx context.Context, raw, namespace string) (string, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return "", err
	}
	host, port := u.Hostname(), u.Port()
	if _, err := netip.ParseAddr(host); err != nil {
		name, ns := host, namespace
		parts := strings.Split(strings.TrimSuffix(host, "."), ".")
		switch {
		case len(parts) == 1:
		case len(parts) == 2, len(parts) == 3 && parts[2] == "svc",
			len(parts) == 5 && strings.Join(parts[2:], ".") == "svc.cluster.local":
			name, ns = parts[0], parts[1]
		default:
			return "", fmt.Errorf("cannot resolve %q: not a service name", host)
		}
		svc, err := c.API.Client.CoreV1().Services(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return "", fmt.Errorf("resolve %q in cluster %s: %w", host, c.spec.Name, err)
		}
		if svc.Spec.ClusterIP == "" || svc.Spec.ClusterIP == corev1.ClusterIPNone {
			return "", fmt.Errorf("resolve %q in cluster %s: service has no ClusterIP", host, c.spec.Name)
		}
		host = svc.Spec.ClusterIP
	}
	if port != "" {
		u.Host = net.JoinHostPort(host, port)
	} else {
		u.Host = host
	}
	return u.String(), nil
}
