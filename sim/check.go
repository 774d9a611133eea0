package sim

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/meshbed/meshbed/datapath/state"
)

// settleQuiet is how long no agent may reprogram its datapath before the
// mesh counts as converged.
const settleQuiet = 300 * time.Millisecond

// Settle waits until every Deployment is ready, every agent runs and has
// synced its remote clusters, and no agent has reprogrammed its datapath
// for a short quiet period.
func (m *Mesh) Settle(ctx context.Context) error {
	for {
		err := m.settledOnce(ctx)
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("mesh did not converge: %w", err)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func (m *Mesh) settledOnce(ctx context.Context) error {
	for _, c := range m.clusters {
		if err := c.deploymentsReady(ctx); err != nil {
			return err
		}
	}
	m.mu.Lock()
	partitioned := len(m.blackholes) > 0
	m.mu.Unlock()
	var applied []<-chan struct{}
	for _, c := range m.clusters {
		for _, n := range c.nodes {
			a := n.Agent()
			if a == nil {
				return fmt.Errorf("agent on %s/%s is not running", c.spec.Name, n.name)
			}
			if _, err, synced := a.State(); !synced {
				return fmt.Errorf("agent on %s/%s has not synced its remote clusters", c.spec.Name, n.name)
			} else if err != nil {
				return fmt.Errorf("agent on %s/%s: datapath: %w", c.spec.Name, n.name, err)
			}
			// Without a partition every remote cluster must be up and
			// reachable: a mesh that merely went quiet with a remote
			// withdrawn has not converged.
			if !partitioned {
				for _, st := range n.Remotes() {
					if !st.Up || !st.Reachable || !st.ServicesSynced {
						return fmt.Errorf("agent on %s/%s: remote cluster %s is not up and synced (up %v, reachable %v, services synced %v, last error %v)",
							c.spec.Name, n.name, st.Name, st.Up, st.Reachable, st.ServicesSynced, st.LastErr)
					}
				}
			}
			applied = append(applied, a.Applied())
		}
	}
	quiet := time.NewTimer(settleQuiet)
	defer quiet.Stop()
	for _, ch := range applied {
		select {
		case <-ch:
			return errors.New("agents are still reprogramming their datapaths")
		case <-ctx.Done():
			return ctx.Err()
		case <-quiet.C:
			return nil
		}
	}
	<-quiet.C
	return nil
}

func (c *Cluster) deploymentsReady(ctx context.Context) error {
	ds, err := c.API.Client.AppsV1().Deployments("").List(ctx, metav1.ListOptions{})
	if err != nil {
		return err
	}
	for _, d := range ds.Items {
		want := int32(1)
		if d.Spec.Replicas != nil {
			want = *d.Spec.Replicas
		}
		if d.Status.ReadyReplicas != want || d.Status.Replicas != want {
			msg := fmt.Sprintf("deployment %s/%s in %s: %d of %d ready", d.Namespace, d.Name, c.spec.Name, d.Status.ReadyReplicas, want)
			if pods, err := c.API.Client.CoreV1().Pods(d.Namespace).List(ctx, metav1.ListOptions{}); err == nil {
				for _, p := range pods.Items {
					if perr := c.ctrl.PodStartError(p.Namespace, p.Name); perr != nil {
						msg += fmt.Sprintf(" (pod %s: %v)", p.Name, perr)
						break
					}
				}
			}
			return errors.New(msg)
		}
	}
	return nil
}

// ServiceBackendClusters reads the node's BPF service map and returns the
// cluster IDs of the active backends of the service's ClusterIP frontends.
func (n *Node) ServiceBackendClusters(ctx context.Context, namespace, name string) ([]uint32, error) {
	svc, err := n.cluster.API.Client.CoreV1().Services(namespace).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return nil, err
	}
	ip, err := netip.ParseAddr(svc.Spec.ClusterIP)
	if err != nil {
		return nil, fmt.Errorf("service has no ClusterIP")
	}
	entries, err := n.dp.Datapath().DumpServices()
	if err != nil {
		return nil, err
	}
	var ids []uint32
	for _, e := range entries {
		if e.Frontend.IP != ip {
			continue
		}
		for _, b := range e.Backends {
			if b.State == state.BackendActive && !slices.Contains(ids, b.ClusterID) {
				ids = append(ids, b.ClusterID)
			}
		}
	}
	slices.Sort(ids)
	return ids, nil
}

// Objects lists the cluster's Services, EndpointSlices and Pods in every
// namespace, as the final check reads them.
func (c *Cluster) Objects(ctx context.Context) ([]corev1.Service, []discoveryv1.EndpointSlice, []corev1.Pod, error) {
	svcs, err := c.API.Client.CoreV1().Services("").List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, nil, nil, err
	}
	slices, err := c.API.Client.DiscoveryV1().EndpointSlices("").List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, nil, nil, err
	}
	pods, err := c.API.Client.CoreV1().Pods("").List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, nil, nil, err
	}
	return svcs.Items, slices.Items, pods.Items, nil
}

// NodeState is what a node's agent wants and what its datapath holds.
type NodeState struct {
	// Running is false while the agent is stopped; Desired is then nil.
	Running bool
	// Desired is the agent's last desired state, nil before its first.
	Desired *state.State
	// Services (active backends in slot order) and IPCache are read back
	// from the BPF maps.
	Services []state.Service
	IPCache  []state.IPCacheEntry
}

// ReadState reads the node's agent state and BPF maps.
func (n *Node) ReadState() (NodeState, error) {
	var ns NodeState
	if a := n.Agent(); a != nil {
		ns.Running = true
		ns.Desired, _, _ = a.State()
	}
	var err error
	ns.Services, ns.IPCache, err = n.dp.ReadBack()
	return ns, err
}
