package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"sort"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/meshbed/meshbed/datapath/state"
	"github.com/meshbed/meshbed/mesh/identity"
)

var metav1GetOptions = metav1.GetOptions{}

// ErrPodCIDRExhausted is returned when a node has no address left for a
// new endpoint; the pod stays pending until an endpoint is deleted.
var ErrPodCIDRExhausted = errors.New("pod CIDR exhausted")

// EndpointRequest is the CNI ADD of a pod on this node.
type EndpointRequest struct {
	Namespace, Pod string
	NetNS          string
}

// Endpoint is a pod endpoint the agent manages.
type Endpoint struct {
	ID        uint16
	Namespace string
	Pod       string
	IP        netip.Addr
	Identity  uint32
	Interface string
}

type endpoint struct {
	Endpoint
}

// ipam hands out pod addresses from the node's pod CIDR.
type ipam struct {
	cidr  netip.Prefix
	used  map[netip.Addr]bool
	ids   map[uint16]bool
	next  netip.Addr
	nextI uint16
}

func newIPAM(node *corev1.Node) (*ipam, error) {
	cidr, err := netip.ParsePrefix(node.Spec.PodCIDR)
	if err != nil {
		return nil, fmt.Errorf("spec.podCIDR %q: %w", node.Spec.PodCIDR, err)
	}
	if !cidr.Addr().Is4() || cidr.Bits() > 30 {
		return nil, fmt.Errorf("spec.podCIDR %s: want an IPv4 prefix of /30 or larger", cidr)
	}
	cidr = cidr.Masked()
	return &ipam{cidr: cidr, used: map[netip.Addr]bool{}, ids: map[uint16]bool{},
		next: cidr.Addr().Next(), nextI: 1}, nil
}

// allocate returns the next free address, skipping the network and
// broadcast addresses, round-robin so a freed address is not reused at once
// (a stale conntrack entry or ipcache entry elsewhere would hit the new pod).
func (m *ipam) allocate() (netip.Addr, error) {
	start := m.next
	for {
		ip := m.next
		m.next = m.next.Next()
		if !m.cidr.Contains(m.next) || !m.cidr.Contains(m.next.Next()) {
			m.next = m.cidr.Addr().Next()
		}
		if !m.used[ip] && m.cidr.Contains(ip.Next()) {
			m.used[ip] = true
			return ip, nil
		}
		if m.next == start {
			return netip.Addr{}, fmt.Errorf("%s: %w", m.cidr, ErrPodCIDRExhausted)
		}
	}
}

func (m *ipam) allocateID() (uint16, error) {
	for range 1 << 16 {
		id := m.nextI
		m.nextI++
		if m.nextI == 0 {
			m.nextI = 1
		}
		if id != 0 && !m.ids[id] {
			m.ids[id] = true
			return id, nil
		}
	}
	return 0, errors.New("no endpoint ID left")
}

func (m *ipam) release(ip netip.Addr, id uint16) {
	delete(m.used, ip)
	delete(m.ids, id)
}

// AddEndpoint creates the endpoint of a pod scheduled on this node: it
// allocates an address and the pod's identity, plumbs the interface and
// programs the datapath. It returns once the datapath holds the endpoint.
func (a *Agent) AddEndpoint(ctx context.Context, req EndpointRequest) (Endpoint, error) {
	key := req.Namespace + "/" + req.Pod
	if a.cfg.Plumber == nil {
		return Endpoint{}, fmt.Errorf("endpoint %s: this agent has no plumber", key)
	}
	pod, err := a.cfg.Kube.CoreV1().Pods(req.Namespace).Get(ctx, req.Pod, metav1GetOptions)
	if err != nil {
		return Endpoint{}, fmt.Errorf("endpoint %s: %w", key, err)
	}
	id, err := a.alloc.Allocate(ctx, identity.PodLabels(a.cfg.ClusterName, pod.Namespace, pod.Labels))
	if err != nil {
		return Endpoint{}, fmt.Errorf("endpoint %s: identity: %w", key, err)
	}
	a.mu.Lock()
	if a.ipam == nil {
		a.mu.Unlock()
		return Endpoint{}, fmt.Errorf("endpoint %s: agent is not running", key)
	}
	if ep, ok := a.endpoints[key]; ok {
		a.mu.Unlock()
		return ep.Endpoint, nil
	}
	ip, err := a.ipam.allocate()
	if err != nil {
		a.mu.Unlock()
		return Endpoint{}, fmt.Errorf("endpoint %s: %w", key, err)
	}
	epID, err := a.ipam.allocateID()
	if err != nil {
		a.ipam.release(ip, 0)
		a.mu.Unlock()
		return Endpoint{}, fmt.Errorf("endpoint %s: %w", key, err)
	}
	a.mu.Unlock()

	hostIf, err := a.cfg.Plumber.Plumb(state.PlumbRequest{ID: epID, Namespace: req.Namespace, Pod: req.Pod, NetNS: req.NetNS, IP: ip})
	a.mu.Lock()
	if err != nil {
		a.ipam.release(ip, epID)
		a.mu.Unlock()
		return Endpoint{}, fmt.Errorf("endpoint %s: plumb: %w", key, err)
	}
	ep := &endpoint{Endpoint: Endpoint{ID: epID, Namespace: req.Namespace, Pod: req.Pod, IP: ip, Identity: id, Interface: hostIf}}
	if _, err := a.policies.Track(id); err != nil {
		a.log.Warn("Policy for new endpoint", "endpoint", key, "err", err)
	}
	a.endpoints[key] = ep
	saveErr := a.saveEndpointsLocked()
	applied := a.applied
	a.mu.Unlock()
	if saveErr != nil {
		a.log.Warn("Endpoint state not saved; a restart will not restore it", "err", saveErr)
	}
	a.markDirty()
	select {
	case <-applied:
	case <-ctx.Done():
		return ep.Endpoint, ctx.Err()
	}
	a.log.Debug("Endpoint added", "endpoint", key, "ip", ip, "identity", id, "if", hostIf)
	return ep.Endpoint, nil
}

// DeleteEndpoint removes a pod's endpoint (CNI DEL). Deleting an unknown
// endpoint is not an error.
func (a *Agent) DeleteEndpoint(ctx context.Context, namespace, pod string) error {
	key := namespace + "/" + pod
	a.mu.Lock()
	ep, ok := a.endpoints[key]
	if ok {
		delete(a.endpoints, key)
		a.policies.Untrack(ep.Identity)
		if err := a.saveEndpointsLocked(); err != nil {
			a.log.Warn("Endpoint state not saved", "err", err)
		}
	}
	applied := a.applied
	a.mu.Unlock()
	if !ok {
		return nil
	}
	a.markDirty()
	// The datapath forgets the endpoint before its interface goes away.
	select {
	case <-applied:
	case <-ctx.Done():
		return ctx.Err()
	}
	err := a.cfg.Plumber.Unplumb(ep.Interface)
	a.mu.Lock()
	a.ipam.release(ep.IP, ep.ID)
	a.mu.Unlock()
	if err != nil {
		return fmt.Errorf("endpoint %s: unplumb %s: %w", key, ep.Interface, err)
	}
	return nil
}

// Endpoints lists the endpoints of this node.
func (a *Agent) Endpoints() []Endpoint {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := make([]Endpoint, 0, len(a.endpoints))
	for _, ep := range a.endpoints {
		out = append(out, ep.Endpoint)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

func (a *Agent) endpointsLocked() []state.Endpoint {
	out := make([]state.Endpoint, 0, len(a.endpoints))
	for _, ep := range a.endpoints {
		se := state.Endpoint{ID: ep.ID, IP: ep.IP, Identity: ep.Identity, Interface: ep.Interface}
		pol, err := a.policies.Compute(ep.Identity)
		if err != nil {
			a.log.Warn("Policy computation failed; endpoint keeps its previous policy", "endpoint", ep.Namespace+"/"+ep.Pod, "err", err)
			if a.last != nil {
				for _, prev := range a.last.Endpoints {
					if prev.ID == ep.ID {
						pol = prev.Policy
					}
				}
			}
		}
		se.Policy = pol
		out = append(out, se)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

const endpointsFile = "endpoints.json"

// saveEndpointsLocked writes the endpoints to the state directory,
// atomically (write and rename).
func (a *Agent) saveEndpointsLocked() error {
	if a.cfg.StateDir == "" {
		return nil
	}
	eps := make([]Endpoint, 0, len(a.endpoints))
	for _, ep := range a.endpoints {
		eps = append(eps, ep.Endpoint)
	}
	sort.Slice(eps, func(i, j int) bool { return eps[i].ID < eps[j].ID })
	data, err := json.Marshal(eps)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(a.cfg.StateDir, 0o700); err != nil {
		return err
	}
	tmp := filepath.Join(a.cfg.StateDir, endpointsFile+".tmp")
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, filepath.Join(a.cfg.StateDir, endpointsFile))
}

// errCorruptState marks an endpoints file that cannot be used.
var errCorruptState = errors.New("corrupt endpoint state")

// decodeEndpoints parses a saved endpoints file and checks it against the
// node's pod CIDR: every endpoint has a pod name, an address in the CIDR,
// a non-zero ID and an interface, and no address or ID is used twice. The
// file is the agent's own, but a crash, a full disk or a hand edit can
// leave anything in it.
func decodeEndpoints(data []byte, cidr netip.Prefix) ([]Endpoint, error) {
	var eps []Endpoint
	if err := json.Unmarshal(data, &eps); err != nil {
		return nil, fmt.Errorf("%w: %w", errCorruptState, err)
	}
	ips := map[netip.Addr]bool{}
	ids := map[uint16]bool{}
	keys := map[string]bool{}
	for i, ep := range eps {
		key := ep.Namespace + "/" + ep.Pod
		switch {
		case ep.Namespace == "" || ep.Pod == "":
			return nil, fmt.Errorf("%w: endpoint %d has no pod name", errCorruptState, i)
		case !ep.IP.IsValid() || !cidr.Contains(ep.IP):
			return nil, fmt.Errorf("%w: endpoint %s: address %s is not in pod CIDR %s", errCorruptState, key, ep.IP, cidr)
		case ep.ID == 0 || ep.Interface == "":
			return nil, fmt.Errorf("%w: endpoint %s has no ID or interface", errCorruptState, key)
		case ips[ep.IP] || ids[ep.ID] || keys[key]:
			return nil, fmt.Errorf("%w: endpoint %s (%s, ID %d) is duplicated", errCorruptState, key, ep.IP, ep.ID)
		}
		ips[ep.IP], ids[ep.ID], keys[key] = true, true, true
	}
	return eps, nil
}

// restoreEndpointsLocked reads the endpoints a previous run saved and takes
// them over: their addresses and IDs are reserved, their policy tracked.
// A file it cannot use is moved aside (endpoints.json.corrupt) and
// reported; it returns rebuild = true, and the caller rebuilds the
// endpoints from Kubernetes and the datapath (rebuildEndpoints).
func (a *Agent) restoreEndpointsLocked() (n int, rebuild bool, err error) {
	if a.cfg.StateDir == "" {
		return 0, false, nil
	}
	path := filepath.Join(a.cfg.StateDir, endpointsFile)
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, err
	}
	eps, err := decodeEndpoints(data, a.ipam.cidr)
	if err != nil {
		aside := path + ".corrupt"
		a.log.Error("Endpoint state is unusable; rebuilding the endpoints from Kubernetes and the datapath",
			"file", path, "movedTo", aside, "err", err)
		if rerr := os.Rename(path, aside); rerr != nil {
			a.log.Warn("Corrupt endpoint state not moved aside", "err", rerr)
		}
		return 0, true, nil
	}
	for _, ep := range eps {
		a.adoptLocked(ep)
	}
	return len(eps), false, nil
}

func (a *Agent) adoptLocked(ep Endpoint) {
	a.ipam.used[ep.IP], a.ipam.ids[ep.ID] = true, true
	if _, err := a.policies.Track(ep.Identity); err != nil {
		a.log.Warn("Policy for restored endpoint", "endpoint", ep.Namespace+"/"+ep.Pod, "err", err)
	}
	a.endpoints[ep.Namespace+"/"+ep.Pod] = &endpoint{Endpoint: ep}
}

// rebuildEndpoints recovers the endpoints of this node when their saved
// state is lost: every pod of the node whose address (status.podIP) the
// datapath still holds as an endpoint gets that endpoint back, with its
// ID and interface, and the identity of its current labels. A pod the
// datapath does not know was never plumbed (or its interface is gone):
// there is nothing to take over, and it is reported.
func (a *Agent) rebuildEndpoints(ctx context.Context) (int, error) {
	byIP := map[netip.Addr]state.Endpoint{}
	if a.cfg.Restored != nil {
		for _, ep := range a.cfg.Restored.Endpoints {
			byIP[ep.IP] = ep
		}
	}
	pods, err := a.cfg.Kube.CoreV1().Pods("").List(ctx, metav1.ListOptions{FieldSelector: "spec.nodeName=" + a.cfg.NodeName})
	if err != nil {
		return 0, fmt.Errorf("list pods of node %s: %w", a.cfg.NodeName, err)
	}
	n := 0
	for i := range pods.Items {
		pod := &pods.Items[i]
		if pod.Spec.NodeName != a.cfg.NodeName || pod.Spec.HostNetwork {
			continue
		}
		key := pod.Namespace + "/" + pod.Name
		ip, err := netip.ParseAddr(pod.Status.PodIP)
		if err != nil {
			continue // not started yet: its CNI ADD is still to come
		}
		dp, ok := byIP[ip]
		if !ok {
			a.log.Warn("Pod not in the datapath; its endpoint cannot be rebuilt", "endpoint", key, "ip", ip)
			continue
		}
		id, err := a.alloc.Allocate(ctx, identity.PodLabels(a.cfg.ClusterName, pod.Namespace, pod.Labels))
		if err != nil {
			a.log.Warn("Endpoint not rebuilt: no identity", "endpoint", key, "err", err)
			continue
		}
		ep := Endpoint{ID: dp.ID, Namespace: pod.Namespace, Pod: pod.Name, IP: ip, Identity: id, Interface: dp.Interface}
		a.mu.Lock()
		_, have := a.endpoints[key]
		fits := a.ipam.cidr.Contains(ip) && ep.ID != 0 && !a.ipam.used[ip] && !a.ipam.ids[ep.ID]
		if !have && fits {
			a.adoptLocked(ep)
			n++
		}
		a.mu.Unlock()
		if !have && !fits {
			a.log.Warn("Endpoint not rebuilt: its address or ID is taken", "endpoint", key, "ip", ip, "id", ep.ID)
		}
	}
	a.mu.Lock()
	err = a.saveEndpointsLocked()
	a.mu.Unlock()
	if err != nil {
		a.log.Warn("Rebuilt endpoint state not saved", "err", err)
	}
	return n, nil
}

// podUpdated follows label changes of this node's pods: a pod whose
// security labels changed gets the identity of its new label set, and its
// policy follows.
func (a *Agent) podUpdated(obj any) {
	pod, ok := obj.(*corev1.Pod)
	if !ok {
		return
	}
	key := pod.Namespace + "/" + pod.Name
	a.mu.Lock()
	ep, ok := a.endpoints[key]
	ctx := a.runCtx
	a.mu.Unlock()
	if !ok || ctx == nil {
		return
	}
	labels := identity.PodLabels(a.cfg.ClusterName, pod.Namespace, pod.Labels)
	if id, known := a.ids.LookupLabels(labels); known && id == ep.Identity {
		return
	}
	// Allocation may write to the Kubernetes API: not on the informer's
	// goroutine.
	go func() {
		id, err := a.alloc.Allocate(ctx, labels)
		if err != nil {
			a.log.Warn("Pod labels changed but no identity could be allocated; keeping the old one",
				"endpoint", key, "err", err)
			return
		}
		a.mu.Lock()
		defer a.mu.Unlock()
		cur, ok := a.endpoints[key]
		if !ok || cur.ID != ep.ID || cur.Identity == id {
			return
		}
		if _, err := a.policies.Track(id); err != nil {
			a.log.Warn("Policy for relabelled endpoint", "endpoint", key, "err", err)
		}
		a.policies.Untrack(cur.Identity)
		a.log.Info("Endpoint identity changed with its labels", "endpoint", key, "from", cur.Identity, "to", id)
		cur.Identity = id
		if err := a.saveEndpointsLocked(); err != nil {
			a.log.Warn("Endpoint state not saved", "err", err)
		}
		a.markDirty()
	}()
}
