package kube

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"math/rand/v2"
	"net/netip"
	"reflect"
	"slices"
	"sort"
	"strconv"
	"sync"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/tools/cache"
)

// Node is a simulated node as the Kubernetes API shows it.
type Node struct {
	Name    string
	IP      netip.Addr
	PodCIDR netip.Prefix
}

// Runtime is the node-side half of a kubelet: the simulator plumbs the pod's
// network (through the agent's endpoint path) and runs its workload.
type Runtime interface {
	// StartPod runs pod on pod.Spec.NodeName and returns its IP.
	StartPod(ctx context.Context, pod *corev1.Pod) (netip.Addr, error)
	// StopPod stops the pod's workload and removes its network.
	StopPod(ctx context.Context, pod *corev1.Pod) error
	// TerminatePod tells a pod that is being deleted to finish, as SIGTERM
	// does: its workload stops taking work once it has none in flight and
	// returns then, or when ctx ends (the grace period is over). StopPod
	// follows either way.
	TerminatePod(ctx context.Context, pod *corev1.Pod) error
}

// AnnotationScaleDownGracePeriod on a Deployment overrides its pods' grace
// period when the Deployment controller deletes them on a scale-down ("0":
// they are killed at once). API.Scale sets it for one scale step.
const AnnotationScaleDownGracePeriod = "sim.meshbed.io/scale-down-grace-period-seconds"

// termination is a running pod that is being deleted: its workload drains
// until done, or until the grace period (deadline) ends.
type termination struct {
	deadline time.Time
	timer    *time.Timer // ends the drain at the deadline
	cancel   context.CancelFunc
	done     bool
}

// podRetry is how long a kubelet waits before retrying a pod whose start
// failed (the agent may be restarting), as a kubelet retries CNI ADD.
const podRetry = 500 * time.Millisecond

type failure struct {
	err error
	at  time.Time
}

// EndpointSliceManagedBy is the endpointslice.kubernetes.io/managed-by value
// of the slices the simulated controller writes.
const EndpointSliceManagedBy = "endpointslice-controller.meshbed.io"

// Controllers reconciles Deployments into Pods, runs Pods through the
// Runtime, and keeps one EndpointSlice per Service. It reconciles the whole
// (small) cluster on every change, which keeps it simple and deterministic.
type Controllers struct {
	api   *API
	nodes []Node
	rt    Runtime
	log   *slog.Logger

	mu      sync.Mutex
	rnd     *rand.Rand
	running map[string]*corev1.Pod // pod namespace/name → the pod as started
	failed  map[string]failure     // pods whose start failed, retried after podRetry
	// expected: pods this controller created that its informer has not
	// reported yet. They count as existing, or a reconcile in between (its
	// own status update triggers one) would create them again. The pod
	// informer's handler lowers them on the pod's add or delete event, so
	// a pod deleted before a reconcile saw it does not count forever.
	// expMu guards it alone: the handler must not wait for a reconcile.
	expMu    sync.Mutex
	expected map[string]*corev1.Pod
	// terminating holds the running pods being deleted, by namespace/name.
	terminating map[string]*termination
	runCtx      context.Context
	drains      sync.WaitGroup // the goroutines of terminating

	trigger chan struct{}
	synced  chan struct{}
	factory informers.SharedInformerFactory
	deploys cache.SharedIndexInformer
	pods    cache.SharedIndexInformer
	svcs    cache.SharedIndexInformer
	slices  cache.SharedIndexInformer
}

// NewControllers returns the controllers of one cluster. seed makes pod
// names reproducible.
func NewControllers(api *API, nodes []Node, rt Runtime, seed uint64, log *slog.Logger) *Controllers {
	f := informers.NewSharedInformerFactory(api.Client, 0)
	c := &Controllers{
		api: api, nodes: nodes, rt: rt, log: log,
		rnd:     rand.New(rand.NewPCG(seed, 0x6b756265)),
		running: map[string]*corev1.Pod{},
		failed:  map[string]failure{},
		trigger: make(chan struct{}, 1),
		synced:  make(chan struct{}),
		factory: f,
		deploys: f.Apps().V1().Deployments().Informer(),
		pods:    f.Core().V1().Pods().Informer(),
		svcs:    f.Core().V1().Services().Informer(),
		slices:  f.Discovery().V1().EndpointSlices().Informer(),
	}
	c.terminating = map[string]*termination{}
	h := cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { c.kick() },
		UpdateFunc: func(any, any) { c.kick() },
		DeleteFunc: func(any) { c.kick() },
	}
	for _, inf := range []cache.SharedIndexInformer{c.deploys, c.svcs} {
		_, _ = inf.AddEventHandler(h)
	}
	_, _ = c.pods.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(o any) { c.observed(o); c.kick() },
		UpdateFunc: func(any, any) { c.kick() },
		DeleteFunc: func(o any) { c.observed(o); c.kick() },
	})
	return c
}

// observed lowers the expectation of a pod the informer has reported.
func (c *Controllers) observed(o any) {
	key, err := cache.DeletionHandlingMetaNamespaceKeyFunc(o)
	if err != nil {
		return
	}
	c.expMu.Lock()
	delete(c.expected, key)
	c.expMu.Unlock()
}

func (c *Controllers) kick() {
	select {
	case c.trigger <- struct{}{}:
	default:
	}
}

// Synced is closed once the node objects exist and the informers have synced.
func (c *Controllers) Synced() <-chan struct{} { return c.synced }

// Run registers the nodes and reconciles until ctx ends. Pods still running
// when it returns are left to the caller's teardown.
func (c *Controllers) Run(ctx context.Context) error {
	for _, n := range c.nodes {
		if err := c.createNode(ctx, n); err != nil {
			return err
		}
	}
	c.factory.Start(ctx.Done())
	for typ, ok := range c.factory.WaitForCacheSync(ctx.Done()) {
		if !ok {
			return fmt.Errorf("informer for %v did not sync", typ)
		}
	}
	c.mu.Lock()
	c.runCtx = ctx
	c.mu.Unlock()
	close(c.synced)
	c.kick()
	retry := time.NewTimer(time.Hour)
	defer retry.Stop()
	for {
		select {
		case <-ctx.Done():
			c.factory.Shutdown()
			c.drains.Wait()
			return nil
		case <-c.trigger:
		case <-retry.C:
		}
		if err := c.reconcile(ctx); err != nil && ctx.Err() == nil {
			c.log.Warn("Reconcile failed, retrying", "err", err)
			retry.Reset(200 * time.Millisecond)
		}
	}
}

// AddNode registers a node that joins the running cluster: its Node
// object, and a place for pods from the next reconcile on.
func (c *Controllers) AddNode(ctx context.Context, n Node) error {
	if err := c.createNode(ctx, n); err != nil {
		return err
	}
	c.mu.Lock()
	c.nodes = append(c.nodes, n)
	c.mu.Unlock()
	c.kick()
	return nil
}

func (c *Controllers) createNode(ctx context.Context, n Node) error {
	node := &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: n.Name, Labels: map[string]string{
			"kubernetes.io/hostname": n.Name, "kubernetes.io/os": "linux",
		}},
		Spec: corev1.NodeSpec{PodCIDR: n.PodCIDR.String(), PodCIDRs: []string{n.PodCIDR.String()}},
		Status: corev1.NodeStatus{
			Addresses:  []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: n.IP.String()}, {Type: corev1.NodeHostName, Address: n.Name}},
			Conditions: []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue}},
		},
	}
	_, err := c.api.Client.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create node %s: %w", n.Name, err)
	}
	return nil
}

// PodStartError reports why a pod could not start, or nil.
func (c *Controllers) PodStartError(namespace, name string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.failed[namespace+"/"+name].err
}

func (c *Controllers) reconcile(ctx context.Context) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	var errs []error
	errs = append(errs, c.reconcileDeployments(ctx))
	errs = append(errs, c.reconcileKubelet(ctx))
	errs = append(errs, c.reconcileTerminating(ctx))
	errs = append(errs, c.reconcileEndpointSlices(ctx))
	return errors.Join(errs...)
}

func podsOf(store cache.Store) []*corev1.Pod {
	var pods []*corev1.Pod
	for _, o := range store.List() {
		pods = append(pods, o.(*corev1.Pod))
	}
	sort.Slice(pods, func(i, j int) bool {
		return pods[i].Namespace+"/"+pods[i].Name < pods[j].Namespace+"/"+pods[j].Name
	})
	return pods
}

func ownedBy(pod *corev1.Pod, d *appsv1.Deployment) bool {
	for _, ref := range pod.OwnerReferences {
		if ref.Kind == "Deployment" && ref.Name == d.Name && ref.UID == d.UID {
			return true
		}
	}
	return false
}

// withExpected adds the pods created but not yet in the informer's store
// to pods, and forgets those the store now shows.
func (c *Controllers) withExpected(pods []*corev1.Pod) []*corev1.Pod {
	c.expMu.Lock()
	defer c.expMu.Unlock()
	if len(c.expected) == 0 {
		return pods
	}
	store := c.pods.GetStore()
	for key, p := range c.expected {
		if _, ok, _ := store.GetByKey(key); ok {
			delete(c.expected, key)
			continue
		}
		pods = append(pods, p)
	}
	sort.Slice(pods, func(i, j int) bool {
		return pods[i].Namespace+"/"+pods[i].Name < pods[j].Namespace+"/"+pods[j].Name
	})
	return pods
}

func (c *Controllers) reconcileDeployments(ctx context.Context) error {
	pods := c.withExpected(podsOf(c.pods.GetStore()))
	perNode := map[string]int{}
	for _, p := range pods {
		perNode[p.Spec.NodeName]++
	}
	deploys := map[string]*appsv1.Deployment{}
	var errs []error
	for _, o := range c.deploys.GetStore().List() {
		d := o.(*appsv1.Deployment)
		deploys[d.Namespace+"/"+d.Name] = d
	}
	keys := make([]string, 0, len(deploys))
	for k := range deploys {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		d := deploys[k]
		// Pods being deleted no longer count, as for the ReplicaSet
		// controller: a scale-up does not wait for them to go.
		var owned []*corev1.Pod
		for _, p := range pods {
			if p.Namespace == d.Namespace && ownedBy(p, d) && p.DeletionTimestamp == nil {
				owned = append(owned, p)
			}
		}
		want := 1
		if d.Spec.Replicas != nil {
			want = int(*d.Spec.Replicas)
		}
		for len(owned) < want {
			p, err := c.createPod(ctx, d, perNode)
			if err != nil {
				errs = append(errs, err)
				break
			}
			owned = append(owned, p)
		}
		// Scale down the newest pods first, as the ReplicaSet controller
		// prefers pods that have run the shortest.
		sort.SliceStable(owned, func(i, j int) bool {
			return owned[i].CreationTimestamp.Before(&owned[j].CreationTimestamp)
		})
		for len(owned) > want {
			victim := owned[len(owned)-1]
			owned = owned[:len(owned)-1]
			perNode[victim.Spec.NodeName]--
			if err := c.deletePod(ctx, victim, scaleDownGrace(d)); err != nil {
				errs = append(errs, err)
			}
		}
		errs = append(errs, c.updateDeploymentStatus(ctx, d, owned))
	}
	// Garbage-collect pods whose Deployment is gone.
	for _, p := range pods {
		if p.DeletionTimestamp != nil {
			continue // already going
		}
		for _, ref := range p.OwnerReferences {
			if ref.Kind != "Deployment" {
				continue
			}
			if d, ok := deploys[p.Namespace+"/"+ref.Name]; !ok || d.UID != ref.UID {
				errs = append(errs, c.deletePod(ctx, p, nil))
			}
		}
	}
	return errors.Join(errs...)
}

// createPod places a pod of d on the least-loaded node (ties to the first).
func (c *Controllers) createPod(ctx context.Context, d *appsv1.Deployment, perNode map[string]int) (*corev1.Pod, error) {
	if len(c.nodes) == 0 {
		return nil, fmt.Errorf("deployment %s/%s: cluster has no nodes", d.Namespace, d.Name)
	}
	// A nodeSelector on the hostname label (the only node label besides
	// the OS) narrows the choice, as the scheduler would.
	sel := d.Spec.Template.Spec.NodeSelector
	node := ""
	for _, n := range c.nodes {
		if !selects(sel, n.Name) {
			continue
		}
		if node == "" || perNode[n.Name] < perNode[node] {
			node = n.Name
		}
	}
	if node == "" {
		return nil, fmt.Errorf("deployment %s/%s: no node matches its nodeSelector %v", d.Namespace, d.Name, sel)
	}
	h := fnv.New32a()
	_, _ = fmt.Fprintf(h, "%v", d.Spec.Template)
	const alphabet = "bcdfghjklmnpqrstvwxz2456789"
	suffix := make([]byte, 5)
	for i := range suffix {
		suffix[i] = alphabet[c.rnd.IntN(len(alphabet))]
	}
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Name:        fmt.Sprintf("%s-%08x-%s", d.Name, h.Sum32(), suffix),
			Namespace:   d.Namespace,
			Labels:      maps(d.Spec.Template.Labels),
			Annotations: maps(d.Spec.Template.Annotations),
			OwnerReferences: []metav1.OwnerReference{{
				APIVersion: "apps/v1", Kind: "Deployment", Name: d.Name, UID: d.UID,
			}},
			CreationTimestamp: metav1.Now(),
		},
		Spec:   *d.Spec.Template.Spec.DeepCopy(),
		Status: corev1.PodStatus{Phase: corev1.PodPending},
	}
	pod.Spec.NodeName = node
	// The expectation goes in before the create, so the informer's add
	// (or delete) event, whenever it comes, finds it to lower.
	key := pod.Namespace + "/" + pod.Name
	c.expMu.Lock()
	if c.expected == nil {
		c.expected = map[string]*corev1.Pod{}
	}
	c.expected[key] = pod
	c.expMu.Unlock()
	created, err := c.api.Client.CoreV1().Pods(d.Namespace).Create(ctx, pod, metav1.CreateOptions{})
	if err != nil {
		c.expMu.Lock()
		delete(c.expected, key)
		c.expMu.Unlock()
		return nil, fmt.Errorf("deployment %s/%s: create pod: %w", d.Namespace, d.Name, err)
	}
	perNode[node]++
	c.expMu.Lock()
	if _, ok := c.expected[key]; ok {
		c.expected[key] = created
	}
	c.expMu.Unlock()
	return created, nil
}

func maps(m map[string]string) map[string]string {
	if m == nil {
		return nil
	}
	out := make(map[string]string, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

// scaleDownGrace is the grace period the Deployment's annotation asks for,
// or nil (the pods' own).
func scaleDownGrace(d *appsv1.Deployment) *int64 {
	v, ok := d.Annotations[AnnotationScaleDownGracePeriod]
	if !ok {
		return nil
	}
	g, err := strconv.ParseInt(v, 10, 64)
	if err != nil || g < 0 {
		return nil
	}
	return &g
}

// deletePod deletes a pod through the API, as the controllers of a real
// cluster do: the API marks it terminating and the kubelet takes it from
// there (reconcileTerminating). grace nil means the pod's own period.
func (c *Controllers) deletePod(ctx context.Context, p *corev1.Pod, grace *int64) error {
	c.expMu.Lock()
	delete(c.expected, p.Namespace+"/"+p.Name)
	c.expMu.Unlock()
	err := c.api.Client.CoreV1().Pods(p.Namespace).Delete(ctx, p.Name, metav1.DeleteOptions{GracePeriodSeconds: grace})
	if err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("delete pod %s/%s: %w", p.Namespace, p.Name, err)
	}
	return nil
}

func (c *Controllers) updateDeploymentStatus(ctx context.Context, d *appsv1.Deployment, owned []*corev1.Pod) error {
	ready := int32(0)
	for _, p := range owned {
		if podReady(p) {
			ready++
		}
	}
	st := appsv1.DeploymentStatus{
		ObservedGeneration: d.Generation,
		Replicas:           int32(len(owned)),
		UpdatedReplicas:    int32(len(owned)),
		ReadyReplicas:      ready,
		AvailableReplicas:  ready,
	}
	if reflect.DeepEqual(d.Status, st) {
		return nil
	}
	d = d.DeepCopy()
	d.Status = st
	if _, err := c.api.Client.AppsV1().Deployments(d.Namespace).UpdateStatus(ctx, d, metav1.UpdateOptions{}); err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("deployment %s/%s: update status: %w", d.Namespace, d.Name, err)
	}
	return nil
}

func podReady(p *corev1.Pod) bool {
	if p.DeletionTimestamp != nil {
		return false
	}
	for _, cond := range p.Status.Conditions {
		if cond.Type == corev1.PodReady {
			return cond.Status == corev1.ConditionTrue
		}
	}
	return false
}

// reconcileKubelet starts pending pods and stops pods that vanished.
func (c *Controllers) reconcileKubelet(ctx context.Context) error {
	var errs []error
	present := map[string]bool{}
	for _, p := range podsOf(c.pods.GetStore()) {
		key := p.Namespace + "/" + p.Name
		present[key] = true
		if _, ok := c.running[key]; ok || p.Spec.NodeName == "" {
			continue
		}
		if p.DeletionTimestamp != nil {
			continue // a kubelet never starts a pod being deleted
		}
		if f, ok := c.failed[key]; ok && time.Since(f.at) < podRetry {
			errs = append(errs, fmt.Errorf("pod %s waits to retry: %w", key, f.err))
			continue
		}
		ip, err := c.rt.StartPod(ctx, p)
		if err != nil {
			c.failed[key] = failure{err: err, at: time.Now()}
			errs = append(errs, fmt.Errorf("start pod %s on %s: %w", key, p.Spec.NodeName, err))
			continue
		}
		delete(c.failed, key)
		c.running[key] = p
		p = p.DeepCopy()
		now := metav1.Now()
		p.Status.Phase = corev1.PodRunning
		p.Status.PodIP = ip.String()
		p.Status.PodIPs = []corev1.PodIP{{IP: ip.String()}}
		p.Status.HostIP = c.nodeIP(p.Spec.NodeName)
		p.Status.StartTime = &now
		p.Status.Conditions = []corev1.PodCondition{
			{Type: corev1.PodScheduled, Status: corev1.ConditionTrue, LastTransitionTime: now},
			{Type: corev1.PodReady, Status: corev1.ConditionTrue, LastTransitionTime: now},
			{Type: corev1.ContainersReady, Status: corev1.ConditionTrue, LastTransitionTime: now},
		}
		if _, err := c.api.Client.CoreV1().Pods(p.Namespace).UpdateStatus(ctx, p, metav1.UpdateOptions{}); err != nil {
			errs = append(errs, fmt.Errorf("pod %s: update status: %w", key, err))
		}
	}
	for key, p := range c.running {
		if !present[key] {
			// Deleted with grace period 0, or by force while terminating:
			// the pod is killed at once.
			c.endTermination(key)
			if err := c.rt.StopPod(ctx, p); err != nil {
				errs = append(errs, fmt.Errorf("stop pod %s: %w", key, err))
				continue
			}
			delete(c.running, key)
		}
	}
	return errors.Join(errs...)
}

// reconcileTerminating runs the kubelet's side of a graceful deletion: a
// running pod marked for deletion is told to terminate (its EndpointSlice
// endpoint is already not ready and terminating, so new connections go
// elsewhere) and gets until its deletionTimestamp to finish; then, or as
// soon as it has finished, it is stopped (CNI DEL, namespace removed) and
// its object deleted for good. A pod that never ran goes at once.
func (c *Controllers) reconcileTerminating(ctx context.Context) error {
	var errs []error
	for _, p := range podsOf(c.pods.GetStore()) {
		if p.DeletionTimestamp == nil {
			continue
		}
		key := p.Namespace + "/" + p.Name
		started, running := c.running[key]
		t := c.terminating[key]
		switch {
		case running && t == nil:
			c.beginTermination(key, started, p.DeletionTimestamp.Time)
			continue
		case running && !t.done:
			if p.DeletionTimestamp.Time.Before(t.deadline) {
				// A second deletion shortened the grace period.
				t.deadline = p.DeletionTimestamp.Time
				t.timer.Reset(time.Until(t.deadline))
			}
			continue
		case running:
			if err := c.rt.StopPod(ctx, started); err != nil {
				errs = append(errs, fmt.Errorf("stop pod %s: %w", key, err))
				continue
			}
			delete(c.running, key)
		}
		c.endTermination(key)
		delete(c.failed, key)
		zero := int64(0)
		err := c.api.Client.CoreV1().Pods(p.Namespace).Delete(ctx, p.Name, metav1.DeleteOptions{GracePeriodSeconds: &zero})
		if err != nil && !apierrors.IsNotFound(err) {
			errs = append(errs, fmt.Errorf("delete pod %s: %w", key, err))
		}
	}
	return errors.Join(errs...)
}

// beginTermination lets the runtime drain pod in the background until
// deadline; when it is done the controllers reconcile again.
func (c *Controllers) beginTermination(key string, pod *corev1.Pod, deadline time.Time) {
	ctx, cancel := context.WithCancel(c.runCtx)
	t := &termination{deadline: deadline, cancel: cancel, timer: time.AfterFunc(time.Until(deadline), cancel)}
	c.terminating[key] = t
	c.log.Debug("Terminating pod", "pod", key, "grace", time.Until(deadline).Round(time.Millisecond))
	runCtx := c.runCtx
	c.drains.Go(func() {
		if err := c.rt.TerminatePod(ctx, pod); err != nil && runCtx.Err() == nil {
			c.log.Info("Pod did not finish within its grace period", "pod", key, "err", err)
		}
		c.mu.Lock()
		t.done = true
		c.mu.Unlock()
		c.kick()
	})
}

func (c *Controllers) endTermination(key string) {
	if t, ok := c.terminating[key]; ok {
		t.timer.Stop()
		t.cancel()
		delete(c.terminating, key)
	}
}

func (c *Controllers) nodeIP(name string) string {
	for _, n := range c.nodes {
		if n.Name == name {
			return n.IP.String()
		}
	}
	return ""
}

// reconcileEndpointSlices keeps one slice per Service with a selector,
// listing the Service's pods that have an IP, with their conditions.
func (c *Controllers) reconcileEndpointSlices(ctx context.Context) error {
	var errs []error
	pods := podsOf(c.pods.GetStore())
	want := map[string]*discoveryv1.EndpointSlice{}
	for _, o := range c.svcs.GetStore().List() {
		svc := o.(*corev1.Service)
		if len(svc.Spec.Selector) == 0 {
			continue
		}
		slice := endpointSliceFor(svc, pods)
		want[slice.Namespace+"/"+slice.Name] = slice
	}
	have := map[string]*discoveryv1.EndpointSlice{}
	for _, o := range c.slices.GetStore().List() {
		s := o.(*discoveryv1.EndpointSlice)
		if s.Labels[discoveryv1.LabelManagedBy] == EndpointSliceManagedBy {
			have[s.Namespace+"/"+s.Name] = s
		}
	}
	for key, s := range want {
		cur, ok := have[key]
		switch {
		case !ok:
			if _, err := c.api.Client.DiscoveryV1().EndpointSlices(s.Namespace).Create(ctx, s, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
				errs = append(errs, fmt.Errorf("create endpointslice %s: %w", key, err))
			}
		case !reflect.DeepEqual(cur.Endpoints, s.Endpoints) || !reflect.DeepEqual(cur.Ports, s.Ports):
			upd := cur.DeepCopy()
			upd.Endpoints, upd.Ports = s.Endpoints, s.Ports
			if _, err := c.api.Client.DiscoveryV1().EndpointSlices(s.Namespace).Update(ctx, upd, metav1.UpdateOptions{}); err != nil {
				errs = append(errs, fmt.Errorf("update endpointslice %s: %w", key, err))
			}
		}
	}
	for key, s := range have {
		if _, ok := want[key]; !ok {
			if err := c.api.Client.DiscoveryV1().EndpointSlices(s.Namespace).Delete(ctx, s.Name, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
				errs = append(errs, fmt.Errorf("delete endpointslice %s: %w", key, err))
			}
		}
	}
	return errors.Join(errs...)
}

func endpointSliceFor(svc *corev1.Service, pods []*corev1.Pod) *discoveryv1.EndpointSlice {
	sel := labels.SelectorFromSet(svc.Spec.Selector)
	slice := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{
			Name:      svc.Name + "-sim",
			Namespace: svc.Namespace,
			Labels: map[string]string{
				discoveryv1.LabelServiceName: svc.Name,
				discoveryv1.LabelManagedBy:   EndpointSliceManagedBy,
			},
			OwnerReferences: []metav1.OwnerReference{{APIVersion: "v1", Kind: "Service", Name: svc.Name, UID: svc.UID}},
		},
		AddressType: discoveryv1.AddressTypeIPv4,
	}
	var members []*corev1.Pod
	for _, p := range pods {
		if p.Namespace == svc.Namespace && p.Status.PodIP != "" && sel.Matches(labels.Set(p.Labels)) {
			members = append(members, p)
		}
	}
	// Named target ports resolve against the first member's containers: the
	// simulator's workloads of one Service share a template.
	for _, sp := range svc.Spec.Ports {
		proto := sp.Protocol
		if proto == "" {
			proto = corev1.ProtocolTCP
		}
		port, ok := targetPort(sp, members)
		if !ok {
			continue // a named port with no pod to resolve it on
		}
		slice.Ports = append(slice.Ports, discoveryv1.EndpointPort{
			Name: ptr(sp.Name), Protocol: ptr(proto), Port: ptr(port),
		})
	}
	for _, p := range members {
		ready := podReady(p)
		terminating := p.DeletionTimestamp != nil
		slice.Endpoints = append(slice.Endpoints, discoveryv1.Endpoint{
			Addresses: []string{p.Status.PodIP},
			Conditions: discoveryv1.EndpointConditions{
				Ready: ptr(ready), Serving: ptr(ready || terminating), Terminating: ptr(terminating),
			},
			NodeName:  ptr(p.Spec.NodeName),
			TargetRef: &corev1.ObjectReference{Kind: "Pod", Namespace: p.Namespace, Name: p.Name, UID: p.UID},
		})
	}
	slices.SortFunc(slice.Endpoints, func(a, b discoveryv1.Endpoint) int {
		return compareAddr(a.Addresses[0], b.Addresses[0])
	})
	return slice
}

func compareAddr(a, b string) int {
	x, errA := netip.ParseAddr(a)
	y, errB := netip.ParseAddr(b)
	if errA != nil || errB != nil {
		if a < b {
			return -1
		}
		if a > b {
			return 1
		}
		return 0
	}
	return x.Compare(y)
}

func targetPort(sp corev1.ServicePort, members []*corev1.Pod) (int32, bool) {
	tp := sp.TargetPort
	switch {
	case tp.Type == intstr.Int && tp.IntVal != 0:
		return tp.IntVal, true
	case tp.Type == intstr.String && tp.StrVal != "":
		for _, p := range members {
			for _, ctr := range p.Spec.Containers {
				for _, cp := range ctr.Ports {
					if cp.Name == tp.StrVal {
						return cp.ContainerPort, true
					}
				}
			}
		}
		return 0, false
	}
	return sp.Port, true
}

func ptr[T any](v T) *T { return &v }

// selects reports whether a nodeSelector matches a node's labels
// (kubernetes.io/hostname: its name, kubernetes.io/os: linux).
func selects(sel map[string]string, node string) bool {
	labels := map[string]string{"kubernetes.io/hostname": node, "kubernetes.io/os": "linux"}
	for k, v := range sel {
		if labels[k] != v {
			return false
		}
	}
	return true
}
