package apiserver

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"time"

	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/informers"
	corelisters "k8s.io/client-go/listers/core/v1"
	discoverylisters "k8s.io/client-go/listers/discovery/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"

	"github.com/meshbed/meshbed/mesh/identity"
	"github.com/meshbed/meshbed/mesh/kvstore"
	"github.com/meshbed/meshbed/mesh/wire"
)

// kind of object a work item names.
type kind uint8

const (
	kindNode kind = iota + 1
	kindService
	kindPod
)

// item is a unit of work: reconcile the keys of one object. Keys are
// names for nodes and namespace/name otherwise.
type item struct {
	kind kind
	key  string
}

// exporter turns the informers' view of the cluster into the Writer's
// desired keys. Every object is reconciled from the listers' current state
// (level-triggered), by one worker, so events may be coalesced or repeated
// freely.
type exporter struct {
	s       *Server
	w       *kvstore.Writer
	cluster string
	id      uint32

	factory informers.SharedInformerFactory
	nodes   corelisters.NodeLister
	svcs    corelisters.ServiceLister
	eps     discoverylisters.EndpointSliceLister
	pods    corelisters.PodLister
	queue   workqueue.TypedRateLimitingInterface[item]

	// Owned by the worker.
	services map[string]bool     // exported service keys
	podIPs   map[string][]string // pod → ip keys it claims
	// claims maps an ip key to the pods claiming it. An address is
	// normally one pod's, but a terminating pod and its successor may
	// briefly share one; the entry is deleted only when no pod claims it.
	claims map[string]map[string]struct{}
}

func newExporter(s *Server) *exporter {
	f := informers.NewSharedInformerFactory(s.cfg.Kube, 0)
	return &exporter{
		s:        s,
		w:        s.writer,
		cluster:  s.cfg.ClusterName,
		id:       s.cfg.ClusterID,
		factory:  f,
		nodes:    f.Core().V1().Nodes().Lister(),
		svcs:     f.Core().V1().Services().Lister(),
		eps:      f.Discovery().V1().EndpointSlices().Lister(),
		pods:     f.Core().V1().Pods().Lister(),
		queue:    workqueue.NewTypedRateLimitingQueue(workqueue.NewTypedItemExponentialFailureRateLimiter[item](50*time.Millisecond, 10*time.Second)),
		services: map[string]bool{},
		podIPs:   map[string][]string{},
		claims:   map[string]map[string]struct{}{},
	}
}

func mustJSON(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		// Only wire value types are marshalled; they always encode.
		panic(fmt.Sprintf("marshal %T: %v", v, err))
	}
	return b
}

// handler enqueues the item(s) named by an object on every event.
func (e *exporter) handler(items func(obj any) []item) cache.ResourceEventHandler {
	add := func(obj any) {
		if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
			obj = d.Obj
		}
		for _, it := range items(obj) {
			e.queue.Add(it)
		}
	}
	return cache.ResourceEventHandlerFuncs{
		AddFunc:    add,
		UpdateFunc: func(old, obj any) { add(old); add(obj) },
		DeleteFunc: add,
	}
}

func objectKey(k kind) func(obj any) []item {
	return func(obj any) []item {
		key, err := cache.MetaNamespaceKeyFunc(obj)
		if err != nil {
			return nil
		}
		return []item{{kind: k, key: key}}
	}
}

func sliceService(obj any) []item {
	es, ok := obj.(*discoveryv1.EndpointSlice)
	if !ok {
		return nil
	}
	name := es.Labels[discoveryv1.LabelServiceName]
	if name == "" {
		return nil
	}
	return []item{{kind: kindService, key: es.Namespace + "/" + name}}
}

func (e *exporter) run(ctx context.Context) error {
	defer e.queue.ShutDown()
	handlers := []struct {
		inf   cache.SharedIndexInformer
		items func(any) []item
	}{
		{e.factory.Core().V1().Nodes().Informer(), objectKey(kindNode)},
		{e.factory.Core().V1().Services().Informer(), objectKey(kindService)},
		{e.factory.Discovery().V1().EndpointSlices().Informer(), sliceService},
		{e.factory.Core().V1().Pods().Informer(), objectKey(kindPod)},
	}
	for _, h := range handlers {
		if _, err := h.inf.AddEventHandler(e.handler(h.items)); err != nil {
			return fmt.Errorf("mesh-apiserver: add informer handler: %w", err)
		}
	}
	e.s.ids.AddHandler(func(ev identity.Event) {
		key := wire.IdentityKey(ev.ID)
		if ev.Deleted {
			e.w.Delete(key)
			// A pod that still has these labels (an identity deleted
			// by hand, or collected as a pod appeared) gets one again.
			e.requeuePodsWith(ev.Labels)
			return
		}
		e.w.Upsert(key, []byte(ev.Labels.String()))
	})
	done := make(chan struct{})
	go func() {
		defer close(done)
		e.s.ids.Run(ctx)
	}()
	defer func() { <-done }()
	e.factory.Start(ctx.Done())
	defer e.factory.Shutdown()

	for typ, ok := range e.factory.WaitForCacheSync(ctx.Done()) {
		if !ok {
			return fmt.Errorf("mesh-apiserver: wait for %v informer: %w", typ, ctx.Err())
		}
	}
	if err := e.s.ids.WaitSynced(ctx); err != nil {
		return fmt.Errorf("mesh-apiserver: %w", err)
	}
	if err := e.initial(ctx); err != nil {
		return err
	}
	close(e.s.synced)
	gc, err := identity.NewCollector(e.s.cfg.Dynamic, e.s.ids, identity.GCConfig{
		Interval:         e.s.cfg.IdentityGCInterval,
		HeartbeatTimeout: e.s.cfg.IdentityHeartbeatTimeout,
		InUse:            e.identitiesInUse,
		Logger:           e.s.logger,
	})
	if err != nil {
		return fmt.Errorf("mesh-apiserver: %w", err)
	}
	gcDone := make(chan struct{})
	go func() {
		defer close(gcDone)
		gc.Run(ctx)
	}()
	defer func() { <-gcDone }()
	go func() {
		<-ctx.Done()
		e.queue.ShutDown()
	}()
	for e.next(ctx) {
	}
	return nil
}

// initial reconciles every object once and then requests the canaries: the
// Writer commits each canary only after every key enqueued before it.
func (e *exporter) initial(ctx context.Context) error {
	var all []item
	nodes, _ := e.nodes.List(labels.Everything())
	for _, n := range nodes {
		all = append(all, item{kindNode, n.Name})
	}
	svcs, _ := e.svcs.List(labels.Everything())
	for _, s := range svcs {
		all = append(all, item{kindService, s.Namespace + "/" + s.Name})
	}
	pods, _ := e.pods.List(labels.Everything())
	for _, p := range pods {
		all = append(all, item{kindPod, p.Namespace + "/" + p.Name})
	}
	for _, it := range all {
		if err := e.reconcile(ctx, it); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			// Not fatal: the worker retries it; readers get the
			// rest of the cluster meanwhile.
			e.s.logger.Warn("initial export failed, retrying", "kind", it.kind, "key", it.key, "error", err)
			e.queue.AddRateLimited(it)
		}
	}
	for _, r := range wire.Resources {
		e.w.Synced(wire.CanaryKey(r, e.cluster, false), wire.ClusterPrefix(r, e.cluster, false))
	}
	return nil
}

// next processes one queued item; false when the queue is shut down.
func (e *exporter) next(ctx context.Context) bool {
	it, shutdown := e.queue.Get()
	if shutdown {
		return false
	}
	defer e.queue.Done(it)
	if err := e.reconcile(ctx, it); err != nil {
		if ctx.Err() != nil {
			return false
		}
		e.s.logger.Warn("export failed, retrying", "kind", it.kind, "key", it.key, "error", err)
		e.queue.AddRateLimited(it)
		return true
	}
	e.queue.Forget(it)
	return true
}

func (e *exporter) reconcile(ctx context.Context, it item) error {
	switch it.kind {
	case kindNode:
		return e.reconcileNode(it.key)
	case kindService:
		return e.reconcileService(it.key)
	case kindPod:
		return e.reconcilePod(ctx, it.key)
	}
	return nil
}

func (e *exporter) reconcileNode(name string) error {
	key := wire.NodeKey(e.cluster, name)
	n, err := e.nodes.Get(name)
	if apierrors.IsNotFound(err) {
		e.w.Delete(key)
		return nil
	}
	if err != nil {
		return fmt.Errorf("get node %q: %w", name, err)
	}
	v, ok := NodeValue(e.cluster, e.id, n)
	if !ok {
		e.w.Delete(key)
		return nil
	}
	e.w.Upsert(key, mustJSON(v))
	return nil
}

func (e *exporter) reconcileService(nsName string) error {
	ns, name, err := cache.SplitMetaNamespaceKey(nsName)
	if err != nil {
		return nil
	}
	key := wire.ServiceKey(e.cluster, ns, name)
	withdraw := func() {
		if e.services[nsName] {
			e.w.Delete(key)
			delete(e.services, nsName)
		}
	}
	svc, err := e.svcs.Services(ns).Get(name)
	if apierrors.IsNotFound(err) {
		withdraw()
		return nil
	}
	if err != nil {
		return fmt.Errorf("get service %s: %w", nsName, err)
	}
	sel := labels.SelectorFromSet(labels.Set{discoveryv1.LabelServiceName: name})
	eps, err := e.eps.EndpointSlices(ns).List(sel)
	if err != nil {
		return fmt.Errorf("list endpoint slices of service %s: %w", nsName, err)
	}
	v, export := ServiceValue(e.cluster, e.id, svc, eps)
	if !export {
		withdraw()
		return nil
	}
	e.services[nsName] = true
	e.w.Upsert(key, mustJSON(v))
	return nil
}

// identitiesInUse is the label set of every pod of the cluster, scheduled
// or not, running or terminating: the identities the garbage collector
// must keep.
func (e *exporter) identitiesInUse() map[string]bool {
	pods, _ := e.pods.List(labels.Everything())
	out := make(map[string]bool, len(pods))
	for _, p := range pods {
		out[identity.PodLabels(e.cluster, p.Namespace, p.Labels).String()] = true
	}
	return out
}

func (e *exporter) requeuePodsWith(l wire.Labels) {
	want := l.String()
	pods, _ := e.pods.List(labels.Everything())
	for _, p := range pods {
		if identity.PodLabels(e.cluster, p.Namespace, p.Labels).String() == want {
			e.queue.Add(item{kind: kindPod, key: p.Namespace + "/" + p.Name})
		}
	}
}

func (e *exporter) reconcilePod(ctx context.Context, nsName string) error {
	ns, name, err := cache.SplitMetaNamespaceKey(nsName)
	if err != nil {
		return nil
	}
	var want []string
	var values [][]byte
	p, err := e.pods.Pods(ns).Get(name)
	switch {
	case apierrors.IsNotFound(err):
	case err != nil:
		return fmt.Errorf("get pod %s: %w", nsName, err)
	default:
		ips := PodIPs(p)
		if len(ips) == 0 {
			break
		}
		id, err := e.s.alloc.Allocate(ctx, identity.PodLabels(e.cluster, p.Namespace, p.Labels))
		if err != nil {
			return fmt.Errorf("identity of pod %s: %w", nsName, err)
		}
		for _, ip := range ips {
			want = append(want, wire.IPKey(ip.String()))
			values = append(values, mustJSON(IPValue(p, ip, id)))
		}
	}
	for _, old := range e.podIPs[nsName] {
		if slices.Contains(want, old) {
			continue
		}
		delete(e.claims[old], nsName)
		if len(e.claims[old]) == 0 {
			delete(e.claims, old)
			e.w.Delete(old)
			continue
		}
		// Another pod still has the address: let it write its entry.
		for other := range e.claims[old] {
			e.queue.Add(item{kind: kindPod, key: other})
		}
	}
	for i, k := range want {
		e.w.Upsert(k, values[i])
		if e.claims[k] == nil {
			e.claims[k] = map[string]struct{}{}
		}
		e.claims[k][nsName] = struct{}{}
	}
	if len(want) == 0 {
		delete(e.podIPs, nsName)
	} else {
		e.podIPs[nsName] = want
	}
	return nil
}
