package sim

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sort"
	"strings"
	"time"

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

// Check is the final, Jepsen-style check of a converged mesh: every
// kvstoremesh cache equals its source; every node's service and ipcache
// maps equal the agent's desired state; no programmed backend is stale
// (each is a ready or serving endpoint of the same service in its own
// cluster right now); and nothing is lost (the desired services equal the
// merge of every connected cluster's Kubernetes state read directly, and
// every pod of those clusters is in the ipcache).
func (m *Mesh) Check(ctx context.Context) error {
	var errs []error
	if m.spec.KVStoreMesh {
		errs = append(errs, m.checkCaches(ctx))
	}
	live := map[string]bool{} // "<clusterID>/<ns>/<name>/<ip>"
	for _, c := range m.clusters {
		slices, err := c.API.Client.DiscoveryV1().EndpointSlices("").List(ctx, metav1.ListOptions{})
		if err != nil {
			return err
		}
		for _, s := range slices.Items {
			svc := s.Labels[discoveryv1.LabelServiceName]
			for _, ep := range s.Endpoints {
				if (ep.Conditions.Ready != nil && *ep.Conditions.Ready) || (ep.Conditions.Serving != nil && *ep.Conditions.Serving) {
					for _, a := range ep.Addresses {
						live[fmt.Sprintf("%d/%s/%s/%s", c.spec.ID, s.Namespace, svc, a)] = true
					}
				}
			}
		}
	}
	for _, c := range m.clusters {
		for _, n := range c.nodes {
			errs = append(errs, n.checkDatapath(live))
		}
	}
	errs = append(errs, m.checkNothingLost(ctx))
	return errors.Join(errs...)
}

// backendKey names a backend with its cluster (Backend.String has it).
func backendKey(b state.Backend) string { return b.String() }

// checkDatapath compares the node's maps with its agent's desired state.
func (n *Node) checkDatapath(live map[string]bool) error {
	where := n.cluster.spec.Name + "/" + n.name
	a := n.Agent()
	if a == nil {
		return fmt.Errorf("%s: agent is not running", where)
	}
	desired, _, _ := a.State()
	if desired == nil {
		return fmt.Errorf("%s: agent has programmed nothing", where)
	}
	var errs []error
	want := map[state.Frontend][]string{}
	for _, s := range desired.Services {
		var bs []string
		for _, b := range s.Backends {
			if b.State != state.BackendActive {
				continue
			}
			bs = append(bs, backendKey(b))
			if !live[fmt.Sprintf("%d/%s/%s", b.ClusterID, s.Name, b.IP)] {
				errs = append(errs, fmt.Errorf("%s: service %s has stale backend %s: no such ready endpoint in cluster %d", where, s.Name, b, b.ClusterID))
			}
		}
		sort.Strings(bs)
		want[s.Frontend] = bs
	}
	entries, err := n.dp.Datapath().DumpServices()
	if err != nil {
		return fmt.Errorf("%s: dump services: %w", where, err)
	}
	got := map[state.Frontend][]string{}
	for _, e := range entries {
		var bs []string
		for _, b := range e.Backends {
			bs = append(bs, backendKey(b.Backend))
		}
		sort.Strings(bs)
		got[e.Frontend] = bs
	}
	for fe, w := range want {
		g, ok := got[fe]
		if !ok && len(w) > 0 {
			errs = append(errs, fmt.Errorf("%s: frontend %s is missing from the service map", where, fe))
		} else if strings.Join(g, " ") != strings.Join(w, " ") {
			errs = append(errs, fmt.Errorf("%s: frontend %s has backends [%s] in the map, the agent wants [%s]", where, fe, strings.Join(g, " "), strings.Join(w, " ")))
		}
	}
	for fe := range got {
		if _, ok := want[fe]; !ok {
			errs = append(errs, fmt.Errorf("%s: frontend %s is in the service map but not wanted", where, fe))
		}
	}
	ipc, err := n.dp.Datapath().DumpIPCache()
	if err != nil {
		return fmt.Errorf("%s: dump ipcache: %w", where, err)
	}
	wantIP := map[netip.Prefix]state.IPCacheEntry{}
	for _, e := range desired.IPCache {
		wantIP[e.Prefix] = e
	}
	gotIP := map[netip.Prefix]state.IPCacheEntry{}
	for _, e := range ipc {
		gotIP[e.Prefix] = e
	}
	for p, w := range wantIP {
		g, ok := gotIP[p]
		switch {
		case !ok:
			errs = append(errs, fmt.Errorf("%s: ipcache lacks %s (identity %d)", where, p, w.Identity))
		case g.Identity != w.Identity || g.TunnelEndpoint != w.TunnelEndpoint:
			errs = append(errs, fmt.Errorf("%s: ipcache %s is identity %d via %v, the agent wants %d via %v", where, p, g.Identity, g.TunnelEndpoint, w.Identity, w.TunnelEndpoint))
		}
	}
	for p := range gotIP {
		if _, ok := wantIP[p]; !ok {
			errs = append(errs, fmt.Errorf("%s: ipcache holds %s, which the agent does not want", where, p))
		}
	}
	return errors.Join(errs...)
}
