package engine

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sort"
	"strings"
	"time"

	discoveryv1 "k8s.io/api/discovery/v1"

	"github.com/meshbed/meshbed/datapath/state"
	"github.com/meshbed/meshbed/mesh/kvstore"
	"github.com/meshbed/meshbed/mesh/kvstoremesh"
	"github.com/meshbed/meshbed/scenarios"
)

// final heals every fault, restarts every stopped component, waits for the
// mesh to converge, and runs FinalCheck.
func (r *runner) final(ctx context.Context) scenarios.FinalReport {
	t0 := time.Now()
	fin := scenarios.FinalReport{}
	ctx, cancel := context.WithTimeout(ctx, r.opts.SettleTimeout)
	defer cancel()
	err := r.t.Recover(ctx)
	if err == nil {
		err = r.t.Settle(ctx)
	}
	if err == nil {
		err = FinalCheck(ctx, r.t, &r.sc.Topology)
	}
	fin.Seconds = seconds(time.Since(t0))
	if err != nil {
		fin.Message = err.Error()
		return fin
	}
	fin.Passed = true
	return fin
}

// FinalCheck is the Jepsen-style check of a converged mesh of topology tp:
//
//   - every kvstoremesh cache equals its source (kvstoremesh.Equal);
//   - every node's service and ipcache maps equal its agent's desired
//     state;
//   - no programmed backend is stale: each is a ready or serving endpoint
//     of the same service in its own cluster right now;
//   - nothing is lost: every agent's desired services equal the merge of
//     the connected clusters' Kubernetes state read directly (the oracle),
//     and every pod of those clusters is in its ipcache.
//
// It reads through r only, so it judges any target alike.
func FinalCheck(ctx context.Context, r Reader, tp *scenarios.Topology) error {
	var errs []error
	if tp.KVStoreMesh {
		errs = append(errs, checkCaches(ctx, r, tp))
	}
	objs := map[string]*ClusterObjects{}
	nodes := map[string][]NodeState{}
	for _, c := range tp.Clusters {
		o, err := r.Objects(ctx, c.Name)
		if err != nil {
			return fmt.Errorf("read %s: %w", c.Name, err)
		}
		objs[c.Name] = o
		ns, err := r.Nodes(ctx, c.Name)
		if err != nil {
			return fmt.Errorf("read nodes of %s: %w", c.Name, err)
		}
		nodes[c.Name] = ns
	}
	live := map[string]bool{} // "<clusterID>/<ns>/<name>/<ip>"
	for _, c := range tp.Clusters {
		for _, s := range objs[c.Name].EndpointSlices {
			svc := s.Labels[discoveryv1.LabelServiceName]
			for _, ep := range s.Endpoints {
				if (ep.Conditions.Ready != nil && *ep.Conditions.Ready) || (ep.Conditions.Serving != nil && *ep.Conditions.Serving) {
					for _, a := range ep.Addresses {
						live[fmt.Sprintf("%d/%s/%s/%s", c.ID, s.Namespace, svc, a)] = true
					}
				}
			}
		}
	}
	for _, c := range tp.Clusters {
		for _, n := range nodes[c.Name] {
			errs = append(errs, checkDatapath(c.Name+"/"+n.Node, n, live))
		}
	}
	errs = append(errs, checkNothingLost(tp, objs, nodes))
	if tp.Encryption == scenarios.EncryptionWireGuard {
		errs = append(errs, checkEncryption(tp, nodes))
	}
	return errors.Join(errs...)
}

// checkCaches compares every kvstoremesh cache with its source.
func checkCaches(ctx context.Context, r Reader, tp *scenarios.Topology) error {
	var errs []error
	for _, c := range tp.Clusters {
		cache := store{r, c.Name}
		for _, p := range peers(tp, c.Name) {
			if err := kvstoremesh.Equal(ctx, store{r, p}, cache, p); err != nil {
				errs = append(errs, fmt.Errorf("kvstoremesh cache of %s in %s: %w", p, c.Name, err))
			}
		}
	}
	return errors.Join(errs...)
}

// peers returns the clusters connected to cluster, sorted.
func peers(tp *scenarios.Topology, cluster string) []string {
	var out []string
	for _, o := range tp.Clusters {
		if o.Name != cluster && tp.Connected(cluster, o.Name) {
			out = append(out, o.Name)
		}
	}
	sort.Strings(out)
	return out
}

// store is one cluster's etcd as a kvstoremesh.Store.
type store struct {
	r       Reader
	cluster string
}

func (s store) Get(ctx context.Context, key string) ([]byte, bool, error) {
	return s.r.KVGet(ctx, s.cluster, key)
}

func (s store) List(ctx context.Context, prefix string) (map[string][]byte, int64, error) {
	kvs, err := s.r.KVList(ctx, s.cluster, kvstore.DirPrefix(prefix))
	return kvs, 0, err
}

// backendKey names a backend with its cluster (Backend.String has it).
func backendKey(b state.Backend) string { return b.String() }

// checkDatapath compares the node's maps with its agent's desired state.
func checkDatapath(where string, n NodeState, live map[string]bool) error {
	if !n.Running {
		return fmt.Errorf("%s: agent is not running", where)
	}
	desired := n.Desired
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
	got := map[state.Frontend][]string{}
	for _, e := range n.Services {
		var bs []string
		for _, b := range e.Backends {
			bs = append(bs, backendKey(b))
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
	wantIP := map[netip.Prefix]state.IPCacheEntry{}
	for _, e := range desired.IPCache {
		wantIP[e.Prefix] = e
	}
	gotIP := map[netip.Prefix]state.IPCacheEntry{}
	for _, e := range n.IPCache {
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
