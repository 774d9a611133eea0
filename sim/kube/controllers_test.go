package kube

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/watch"
	k8stesting "k8s.io/client-go/testing"
	"k8s.io/client-go/tools/cache"

	"github.com/meshbed/meshbed/internal/testenv"
)

// fakeRuntime hands out addresses from the node's pod CIDR and records
// which pods run; it stands in for netns plumbing, which sim tests cover.
type fakeRuntime struct {
	mu      sync.Mutex
	nodes   map[string]netip.Addr
	running map[string]netip.Addr
}

func (r *fakeRuntime) StartPod(_ context.Context, p *corev1.Pod) (netip.Addr, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	ip := r.nodes[p.Spec.NodeName].Next()
	r.nodes[p.Spec.NodeName] = ip
	r.running[p.Name] = ip
	return ip, nil
}

func (r *fakeRuntime) StopPod(_ context.Context, p *corev1.Pod) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.running[p.Name]; !ok {
		return fmt.Errorf("pod %s not running", p.Name)
	}
	delete(r.running, p.Name)
	return nil
}

// TerminatePod has nothing to drain: the pod goes at once.
func (r *fakeRuntime) TerminatePod(context.Context, *corev1.Pod) error { return nil }

func (r *fakeRuntime) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.running)
}

func eventually(t *testing.T, what string, cond func() error) {
	t.Helper()
	testenv.Eventually(t, 5*time.Second, func() error {
		if err := cond(); err != nil {
			return fmt.Errorf("%s: %w", what, err)
		}
		return nil
	})
}

func TestControllers(t *testing.T) {
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	api, err := NewAPI(netip.MustParsePrefix("10.11.0.0/16"))
	if err != nil {
		t.Fatal(err)
	}
	nodes := []Node{
		{Name: "node-1", IP: netip.MustParseAddr("172.30.1.1"), PodCIDR: netip.MustParsePrefix("10.10.1.0/24")},
		{Name: "node-2", IP: netip.MustParseAddr("172.30.1.2"), PodCIDR: netip.MustParsePrefix("10.10.2.0/24")},
	}
	rt := &fakeRuntime{running: map[string]netip.Addr{}, nodes: map[string]netip.Addr{
		"node-1": netip.MustParseAddr("10.10.1.1"), "node-2": netip.MustParseAddr("10.10.2.1"),
	}}
	c := NewControllers(api, nodes, rt, 1, slog.New(slog.DiscardHandler))
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}()
	<-c.Synced()

	cs := api.Client
	svc, err := cs.CoreV1().Services("default").Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "rebel-base", Namespace: "default"},
		Spec: corev1.ServiceSpec{
			Selector: map[string]string{"name": "rebel-base"},
			Ports:    []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromString("web")}},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if got := svc.Spec.ClusterIP; got != "10.11.0.10" {
		t.Errorf("ClusterIP = %q, want the first allocatable address 10.11.0.10", got)
	}
	headless, err := cs.CoreV1().Services("default").Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "headless", Namespace: "default"},
		Spec:       corev1.ServiceSpec{ClusterIP: corev1.ClusterIPNone},
	}, metav1.CreateOptions{})
	if err != nil || headless.Spec.ClusterIP != corev1.ClusterIPNone {
		t.Fatalf("headless service: %v, clusterIP %q", err, headless.Spec.ClusterIP)
	}

	replicas := int32(3)
	_, err = cs.AppsV1().Deployments("default").Create(ctx, &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: "rebel-base", Namespace: "default", UID: "d1"},
		Spec: appsv1.DeploymentSpec{
			Replicas: &replicas,
			Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"name": "rebel-base"}},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"name": "rebel-base"}},
				Spec: corev1.PodSpec{Containers: []corev1.Container{{
					Name: "echo", Image: "docker.io/cilium/json-mock",
					Ports: []corev1.ContainerPort{{Name: "web", ContainerPort: 8080}},
				}}},
			},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}

	slice := func(wantReady int) func() error {
		return func() error {
			s, err := cs.DiscoveryV1().EndpointSlices("default").Get(ctx, "rebel-base-sim", metav1.GetOptions{})
			if err != nil {
				return err
			}
			ready := 0
			for _, ep := range s.Endpoints {
				if *ep.Conditions.Ready {
					ready++
				}
			}
			if ready != wantReady || len(s.Endpoints) != wantReady {
				return fmt.Errorf("slice has %d endpoints, %d ready; want %d", len(s.Endpoints), ready, wantReady)
			}
			if wantReady > 0 && (len(s.Ports) != 1 || *s.Ports[0].Port != 8080 || *s.Ports[0].Name != "http") {
				return fmt.Errorf("slice ports %+v, want http → 8080", s.Ports)
			}
			if s.Labels[discoveryv1.LabelServiceName] != "rebel-base" {
				return fmt.Errorf("slice labels %v", s.Labels)
			}
			return nil
		}
	}
	eventually(t, "three ready endpoints", slice(3))
	pods, err := cs.CoreV1().Pods("default").List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	perNode := map[string]int{}
	for _, p := range pods.Items {
		perNode[p.Spec.NodeName]++
		if p.Status.HostIP == "" || p.Status.PodIP == "" {
			t.Errorf("pod %s: hostIP %q podIP %q", p.Name, p.Status.HostIP, p.Status.PodIP)
		}
	}
	if perNode["node-1"] != 2 || perNode["node-2"] != 1 {
		t.Errorf("pods per node = %v, want spread 2/1", perNode)
	}
	eventually(t, "deployment status", func() error {
		d, err := cs.AppsV1().Deployments("default").Get(ctx, "rebel-base", metav1.GetOptions{})
		if err != nil {
			return err
		}
		if d.Status.ReadyReplicas != 3 {
			return fmt.Errorf("readyReplicas = %d", d.Status.ReadyReplicas)
		}
		return nil
	})

	if err := api.Scale(ctx, "default", "rebel-base", 1); err != nil {
		t.Fatal(err)
	}
	eventually(t, "scaled to one", slice(1))
	eventually(t, "runtime stopped two pods", func() error {
		if n := rt.count(); n != 1 {
			return fmt.Errorf("%d pods running", n)
		}
		return nil
	})

	if err := cs.AppsV1().Deployments("default").Delete(ctx, "rebel-base", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "pods collected", func() error {
		if n := rt.count(); n != 0 {
			return fmt.Errorf("%d pods running", n)
		}
		return nil
	})
	eventually(t, "slice emptied", slice(0))
	if err := cs.CoreV1().Services("default").Delete(ctx, "rebel-base", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "slice deleted", func() error {
		_, err := cs.DiscoveryV1().EndpointSlices("default").Get(ctx, "rebel-base-sim", metav1.GetOptions{})
		if err == nil {
			return fmt.Errorf("slice still exists")
		}
		return nil
	})
}

func TestIPAllocator(t *testing.T) {
	a, err := newIPAllocator(netip.MustParsePrefix("10.11.0.0/28"))
	if err != nil {
		t.Fatal(err)
	}
	got := map[netip.Addr]bool{}
	for i := range 6 { // .10 to .15
		ip, err := a.allocate(fmt.Sprintf("ns/s%d", i))
		if err != nil {
			t.Fatalf("allocation %d: %v", i, err)
		}
		if got[ip] || ip == netip.MustParseAddr("10.11.0.0") {
			t.Fatalf("allocation %d: %s reused or the network address", i, ip)
		}
		got[ip] = true
	}
	if _, err := a.allocate("ns/overflow"); err == nil {
		t.Fatal("allocation beyond the range succeeded")
	}
	a.release("ns/s0")
	if _, err := a.allocate("ns/again"); err != nil {
		t.Fatalf("allocation after release: %v", err)
	}
	if err := a.claim("ns/x", netip.MustParseAddr("10.12.0.1")); err == nil {
		t.Fatal("claim outside the range succeeded")
	}
}

func TestDecode(t *testing.T) {
	tests := []struct {
		name, doc string
		want      int
		wantErr   string
	}{
		{name: "multi-document", want: 2, doc: `
apiVersion: v1
kind: Service
metadata: {name: rebel-base}
spec:
  ports: [{port: 80, name: http}]
---
# only a comment
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: allow}
spec: {endpointSelector: {}}
`},
		{name: "unknown field", doc: "apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec: {portz: []}\n", wantErr: `unknown field "portz"`},
		{name: "unsupported kind", doc: "apiVersion: v1\nkind: Secret\nmetadata: {name: a}\n", wantErr: "unsupported kind v1 Secret"},
		{name: "no name", doc: "apiVersion: v1\nkind: ConfigMap\n", wantErr: "metadata.name is required"},
		{name: "no kind", doc: "metadata: {name: a}\n", wantErr: "apiVersion and kind are required"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			objs, err := Decode([]byte(tt.doc))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error = %v, want it to contain %q", err, tt.wantErr)
				}
				return
			}
			if err != nil || len(objs) != tt.want {
				t.Fatalf("Decode = %d objects, %v; want %d", len(objs), err, tt.want)
			}
		})
	}
}

func TestApplyKeepsClusterIP(t *testing.T) {
	ctx := t.Context()
	api, err := NewAPI(netip.MustParsePrefix("10.21.0.0/16"))
	if err != nil {
		t.Fatal(err)
	}
	objs, err := Decode([]byte("apiVersion: v1\nkind: Service\nmetadata: {name: s, annotations: {a: b}}\nspec: {ports: [{port: 80}]}\n"))
	if err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if err := api.Apply(ctx, objs[0]); err != nil {
			t.Fatal(err)
		}
	}
	svc, err := api.Client.CoreV1().Services("default").Get(ctx, "s", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if svc.Spec.ClusterIP != "10.21.0.10" {
		t.Errorf("ClusterIP after re-apply = %q, want 10.21.0.10", svc.Spec.ClusterIP)
	}
	if err := api.Annotate(ctx, "default", "s", map[string]*string{"a": nil, "c": ptr("d")}); err != nil {
		t.Fatal(err)
	}
	svc, _ = api.Client.CoreV1().Services("default").Get(ctx, "s", metav1.GetOptions{})
	if _, ok := svc.Annotations["a"]; ok || svc.Annotations["c"] != "d" {
		t.Errorf("annotations = %v, want a removed and c=d", svc.Annotations)
	}
	if err := api.Delete(ctx, "Service", "default", "s"); err != nil {
		t.Fatal(err)
	}
	if err := api.Delete(ctx, "Secret", "default", "s"); !errors.Is(err, ErrUnsupportedKind) {
		t.Errorf("delete of an unsupported kind: %v", err)
	}
}

// delayedWatch forwards a watch's events after a delay: an informer that
// lags behind the API, as it does on a busy machine.
type delayedWatch struct {
	inner watch.Interface
	out   chan watch.Event
	stop  chan struct{}
	once  sync.Once
}

func newDelayedWatch(inner watch.Interface, delay time.Duration) *delayedWatch {
	w := &delayedWatch{inner: inner, out: make(chan watch.Event, 100), stop: make(chan struct{})}
	go func() {
		defer close(w.out)
		for ev := range inner.ResultChan() {
			select {
			case <-time.After(delay):
			case <-w.stop:
				return
			}
			select {
			case w.out <- ev:
			case <-w.stop:
				return
			}
		}
	}()
	return w
}

func (w *delayedWatch) Stop() {
	w.once.Do(func() {
		close(w.stop)
		w.inner.Stop()
	})
}

func (w *delayedWatch) ResultChan() <-chan watch.Event { return w.out }

// laggingEnv runs the controllers of one node over an API whose pod watch
// delivers each event 300 ms late, and records the names of created pods.
type laggingEnv struct {
	ctx context.Context
	api *API
	c   *Controllers

	mu      sync.Mutex
	created []string
}

func (e *laggingEnv) createdPods() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]string(nil), e.created...)
}

func newLaggingEnv(t *testing.T) *laggingEnv {
	t.Helper()
	ctx, cancel := context.WithCancel(t.Context())
	api, err := NewAPI(netip.MustParsePrefix("10.11.0.0/16"))
	if err != nil {
		t.Fatal(err)
	}
	e := &laggingEnv{ctx: ctx, api: api}
	api.Client.PrependReactor("create", "pods", func(action k8stesting.Action) (bool, runtime.Object, error) {
		e.mu.Lock()
		defer e.mu.Unlock()
		e.created = append(e.created, action.(k8stesting.CreateAction).GetObject().(*corev1.Pod).Name)
		return false, nil, nil
	})
	api.Client.PrependWatchReactor("pods", func(action k8stesting.Action) (bool, watch.Interface, error) {
		w, err := api.Client.Tracker().Watch(action.GetResource(), action.GetNamespace())
		if err != nil {
			return true, nil, err
		}
		return true, newDelayedWatch(w, 300*time.Millisecond), nil
	})
	nodes := []Node{{Name: "node-1", IP: netip.MustParseAddr("172.30.1.1"), PodCIDR: netip.MustParsePrefix("10.10.1.0/24")}}
	rt := &fakeRuntime{running: map[string]netip.Addr{}, nodes: map[string]netip.Addr{"node-1": netip.MustParseAddr("10.10.1.1")}}
	e.c = NewControllers(api, nodes, rt, 1, slog.New(slog.DiscardHandler))
	done := make(chan error, 1)
	go func() { done <- e.c.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	<-e.c.Synced()
	return e
}

func (e *laggingEnv) deploy(t *testing.T, replicas int32) {
	t.Helper()
	_, err := e.api.Client.AppsV1().Deployments("default").Create(e.ctx, &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: "tie-fighter", Namespace: "default", UID: "d1"},
		Spec: appsv1.DeploymentSpec{
			Replicas: &replicas,
			Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"name": "tie-fighter"}},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"name": "tie-fighter"}},
				Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "echo", Image: "docker.io/cilium/json-mock"}}},
			},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
}

// TestDeploymentDoesNotOvershootALaggingInformer: the Deployment controller
// must count the pods it created before its informer shows them, as the
// ReplicaSet controller's expectations do. Otherwise a reconcile triggered
// in between (by its own status update) creates a second pod, the next one
// deletes one of the two, and a pod that was started and reported Ready
// vanishes under whoever saw it.
func TestDeploymentDoesNotOvershootALaggingInformer(t *testing.T) {
	e := newLaggingEnv(t)
	e.deploy(t, 1)
	eventually(t, "deployment ready", func() error {
		d, err := e.api.Client.AppsV1().Deployments("default").Get(e.ctx, "tie-fighter", metav1.GetOptions{})
		if err != nil {
			return err
		}
		if d.Status.ReadyReplicas != 1 {
			return fmt.Errorf("readyReplicas = %d", d.Status.ReadyReplicas)
		}
		return nil
	})
	// Several more reconciles, each a chance to overshoot.
	for range 5 {
		e.c.kick()
		time.Sleep(20 * time.Millisecond)
	}
	if created := e.createdPods(); len(created) != 1 {
		t.Fatalf("created pods %v for 1 replica, want exactly one", created)
	}
}

// TestDeploymentReplacesAPodDeletedBeforeItsInformerSawIt: a pod created
// and then deleted while no reconcile ran no longer counts once the
// informer reports the delete; the Deployment replaces it. (Counting an
// expected pod until a reconcile saw it in the store, as before, counted
// it forever: CI saw a force-deleted pod never replaced.)
func TestDeploymentReplacesAPodDeletedBeforeItsInformerSawIt(t *testing.T) {
	e := newLaggingEnv(t)
	deleted := make(chan struct{}, 10)
	if _, err := e.c.pods.AddEventHandler(cache.ResourceEventHandlerFuncs{
		DeleteFunc: func(any) { deleted <- struct{}{} },
	}); err != nil {
		t.Fatal(err)
	}
	e.deploy(t, 1)
	var first string
	eventually(t, "a pod created", func() error {
		if created := e.createdPods(); len(created) > 0 {
			first = created[0]
			return nil
		}
		return fmt.Errorf("none yet")
	})
	// No reconcile runs while the informer sees the pod come and go.
	e.c.mu.Lock()
	zero := int64(0)
	if err := e.api.Client.CoreV1().Pods("default").Delete(e.ctx, first, metav1.DeleteOptions{GracePeriodSeconds: &zero}); err != nil {
		e.c.mu.Unlock()
		t.Fatal(err)
	}
	select {
	case <-deleted:
	case <-time.After(10 * time.Second):
		e.c.mu.Unlock()
		t.Fatal("the informer never reported the delete")
	}
	e.c.mu.Unlock()
	eventually(t, "a replacement", func() error {
		pods, err := e.api.Client.CoreV1().Pods("default").List(e.ctx, metav1.ListOptions{})
		if err != nil {
			return err
		}
		if len(pods.Items) != 1 || pods.Items[0].Name == first {
			return fmt.Errorf("%d pods, created %v", len(pods.Items), e.createdPods())
		}
		return nil
	})
}
