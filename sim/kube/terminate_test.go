package kube

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// drainingRuntime is a fakeRuntime whose pods drain until released: it
// records each TerminatePod and makes it wait for release (or the end of
// the grace period).
type drainingRuntime struct {
	fakeRuntime
	release chan struct{}

	mu          sync.Mutex
	terminating map[string]bool
	ended       map[string]error // how TerminatePod returned
}

func (r *drainingRuntime) TerminatePod(ctx context.Context, p *corev1.Pod) error {
	r.mu.Lock()
	r.terminating[p.Name] = true
	r.mu.Unlock()
	var err error
	select {
	case <-r.release:
	case <-ctx.Done():
		err = ctx.Err()
	}
	r.mu.Lock()
	r.ended[p.Name] = err
	r.mu.Unlock()
	return err
}

func (r *drainingRuntime) isRunning(name string) bool {
	r.fakeRuntime.mu.Lock()
	defer r.fakeRuntime.mu.Unlock()
	_, ok := r.running[name]
	return ok
}

type tWriter struct{ t *testing.T }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(string(p))
	return len(p), nil
}

type terminateEnv struct {
	ctx context.Context
	api *API
	rt  *drainingRuntime
}

func newTerminateEnv(t *testing.T) *terminateEnv {
	t.Helper()
	ctx, cancel := context.WithCancel(t.Context())
	api, err := NewAPI(netip.MustParsePrefix("10.11.0.0/16"))
	if err != nil {
		t.Fatal(err)
	}
	rt := &drainingRuntime{
		fakeRuntime: fakeRuntime{running: map[string]netip.Addr{}, nodes: map[string]netip.Addr{"node-1": netip.MustParseAddr("10.10.1.1")}},
		release:     make(chan struct{}),
		terminating: map[string]bool{}, ended: map[string]error{},
	}
	c := NewControllers(api, []Node{{Name: "node-1", IP: netip.MustParseAddr("172.30.1.1"), PodCIDR: netip.MustParsePrefix("10.10.1.0/24")}}, rt, 1, slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug})))
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	<-c.Synced()
	return &terminateEnv{ctx: ctx, api: api, rt: rt}
}

// deploy creates a Service and a Deployment of n pods, grace seconds of
// terminationGracePeriodSeconds (nil: the default), and waits for them.
func (e *terminateEnv) deploy(t *testing.T, n int32, grace *int64) []corev1.Pod {
	t.Helper()
	cs := e.api.Client
	if _, err := cs.CoreV1().Services("default").Create(e.ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "echo", Namespace: "default"},
		Spec:       corev1.ServiceSpec{Selector: map[string]string{"app": "echo"}, Ports: []corev1.ServicePort{{Port: 80}}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := cs.AppsV1().Deployments("default").Create(e.ctx, &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: "echo", Namespace: "default", UID: "d-echo"},
		Spec: appsv1.DeploymentSpec{
			Replicas: &n,
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"app": "echo"}},
				Spec: corev1.PodSpec{
					TerminationGracePeriodSeconds: grace,
					Containers:                    []corev1.Container{{Name: "echo", Image: "meshbed/echo"}},
				},
			},
		},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	var pods []corev1.Pod
	eventually(t, "pods running", func() error {
		active, err := e.active()
		if err != nil {
			return err
		}
		for _, p := range active {
			if !e.rt.isRunning(p.Name) {
				return fmt.Errorf("pod %s not running", p.Name)
			}
		}
		if len(active) != int(n) {
			return fmt.Errorf("%d pods not being deleted, want %d", len(active), n)
		}
		pods = active
		return nil
	})
	return pods
}

// active lists the pods that are not being deleted. (The simulated
// Deployment controller may briefly create one pod too many when its
// informer lags, and delete it again: that one is terminating.)
func (e *terminateEnv) active() ([]corev1.Pod, error) {
	l, err := e.api.Client.CoreV1().Pods("default").List(e.ctx, metav1.ListOptions{})
	if err != nil {
		return nil, err
	}
	var out []corev1.Pod
	for _, p := range l.Items {
		if p.DeletionTimestamp == nil {
			out = append(out, p)
		}
	}
	return out, nil
}

func (e *terminateEnv) endpoint(name string) (*discoveryv1.Endpoint, error) {
	s, err := e.api.Client.DiscoveryV1().EndpointSlices("default").Get(e.ctx, "echo-sim", metav1.GetOptions{})
	if err != nil {
		return nil, err
	}
	for i := range s.Endpoints {
		if s.Endpoints[i].TargetRef.Name == name {
			return &s.Endpoints[i], nil
		}
	}
	return nil, nil
}

func (e *terminateEnv) gone(name string) func() error {
	return func() error {
		_, err := e.api.Client.CoreV1().Pods("default").Get(e.ctx, name, metav1.GetOptions{})
		if !apierrors.IsNotFound(err) {
			return fmt.Errorf("pod %s still exists (%v)", name, err)
		}
		if e.rt.isRunning(name) {
			return fmt.Errorf("pod %s deleted but still running", name)
		}
		if ep, err := e.endpoint(name); err != nil || ep != nil {
			return fmt.Errorf("pod %s still in the EndpointSlice (%v)", name, err)
		}
		return nil
	}
}

// A deleted pod is marked terminating, stays running and in the
// EndpointSlice as serving/terminating while it drains, and goes (runtime
// stopped, object deleted) once it has drained.
func TestGracefulDeletion(t *testing.T) {
	e := newTerminateEnv(t)
	pods := e.deploy(t, 2, nil)
	victim := pods[0].Name
	if err := e.api.Client.CoreV1().Pods("default").Delete(e.ctx, victim, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	p, err := e.api.Client.CoreV1().Pods("default").Get(e.ctx, victim, metav1.GetOptions{})
	if err != nil {
		t.Fatalf("pod gone right after a graceful delete: %v", err)
	}
	if p.DeletionTimestamp == nil || p.DeletionGracePeriodSeconds == nil || *p.DeletionGracePeriodSeconds != DefaultTerminationGracePeriodSeconds {
		t.Fatalf("deletionTimestamp %v, grace %v; want set, %d s", p.DeletionTimestamp, p.DeletionGracePeriodSeconds, DefaultTerminationGracePeriodSeconds)
	}
	if until := time.Until(p.DeletionTimestamp.Time); until < 25*time.Second || until > 30*time.Second {
		t.Errorf("deletionTimestamp is %v away, want about 30s", until)
	}
	eventually(t, "endpoint terminating", func() error {
		ep, err := e.endpoint(victim)
		if err != nil || ep == nil {
			return fmt.Errorf("endpoint missing (%v)", err)
		}
		if c := ep.Conditions; *c.Ready || !*c.Serving || !*c.Terminating {
			return fmt.Errorf("conditions ready=%v serving=%v terminating=%v, want false/true/true", *c.Ready, *c.Serving, *c.Terminating)
		}
		e.rt.mu.Lock()
		defer e.rt.mu.Unlock()
		if !e.rt.terminating[victim] {
			return fmt.Errorf("TerminatePod not called")
		}
		return nil
	})
	if !e.rt.isRunning(victim) {
		t.Fatal("the pod was stopped before it drained")
	}
	// A second, graceful delete does not extend the grace period.
	if err := e.api.Client.CoreV1().Pods("default").Delete(e.ctx, victim, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if q, _ := e.api.Client.CoreV1().Pods("default").Get(e.ctx, victim, metav1.GetOptions{}); q == nil || !q.DeletionTimestamp.Equal(p.DeletionTimestamp) {
		t.Errorf("a second delete moved the deletionTimestamp")
	}
	close(e.rt.release)
	eventually(t, "drained pod gone", e.gone(victim))
	e.rt.mu.Lock()
	defer e.rt.mu.Unlock()
	if err := e.rt.ended[victim]; err != nil {
		t.Errorf("TerminatePod ended with %v, want a drain", err)
	}
	if !e.rt.isRunning(pods[1].Name) {
		t.Error("the other pod stopped")
	}
}

// A pod that does not drain is stopped when its grace period ends; a
// shorter second delete shortens it.
func TestGracePeriodEnds(t *testing.T) {
	e := newTerminateEnv(t)
	pods := e.deploy(t, 1, ptr(int64(600)))
	victim := pods[0].Name
	if err := e.api.Client.CoreV1().Pods("default").Delete(e.ctx, victim, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "terminating", func() error {
		e.rt.mu.Lock()
		defer e.rt.mu.Unlock()
		if !e.rt.terminating[victim] {
			return fmt.Errorf("TerminatePod not called")
		}
		return nil
	})
	start := time.Now()
	if err := e.api.Client.CoreV1().Pods("default").Delete(e.ctx, victim, metav1.DeleteOptions{GracePeriodSeconds: ptr(int64(1))}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "pod gone after its shortened grace period", e.gone(victim))
	if took := time.Since(start); took < 900*time.Millisecond {
		t.Errorf("pod stopped %v after a 1s grace period began, before it ended", took)
	}
	e.rt.mu.Lock()
	defer e.rt.mu.Unlock()
	if err := e.rt.ended[victim]; err == nil {
		t.Error("TerminatePod returned without error though the pod never drained")
	}
}

// Grace period 0 kills at once: on a pod, on a scale-down, on a
// Deployment's deletion; and an undrained pod still goes.
func TestAbruptDeletion(t *testing.T) {
	e := newTerminateEnv(t)
	pods := e.deploy(t, 4, nil) // 30 s grace, never drained in this test
	zero := int64(0)
	if err := e.api.Client.CoreV1().Pods("default").Delete(e.ctx, pods[0].Name, metav1.DeleteOptions{GracePeriodSeconds: &zero}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "force-deleted pod gone", e.gone(pods[0].Name))
	// The Deployment replaces it; then scale down abruptly.
	var four []corev1.Pod
	eventually(t, "replaced", func() error {
		var err error
		if four, err = e.active(); err != nil || len(four) != 4 {
			return fmt.Errorf("%d active pods (%v)", len(four), err)
		}
		return nil
	})
	if err := e.api.Scale(e.ctx, "default", "echo", 2, Grace{Seconds: 0}); err != nil {
		t.Fatal(err)
	}
	var two []corev1.Pod
	eventually(t, "scaled down at once", func() error {
		two = nil
		for _, p := range four {
			q, err := e.api.Client.CoreV1().Pods("default").Get(e.ctx, p.Name, metav1.GetOptions{})
			switch {
			case apierrors.IsNotFound(err):
				if e.rt.isRunning(p.Name) {
					return fmt.Errorf("pod %s deleted but running", p.Name)
				}
			case err != nil:
				return err
			case q.DeletionTimestamp != nil:
				return fmt.Errorf("pod %s terminating, want it killed at once", p.Name)
			default:
				two = append(two, *q)
			}
		}
		if len(two) != 2 {
			return fmt.Errorf("%d of the 4 pods left", len(two))
		}
		return nil
	})
	// A graceful scale-down (the annotation is gone again) waits for drain.
	if err := e.api.Scale(e.ctx, "default", "echo", 1); err != nil {
		t.Fatal(err)
	}
	eventually(t, "one pod terminating, still running", func() error {
		terminating := 0
		for _, p := range two {
			q, err := e.api.Client.CoreV1().Pods("default").Get(e.ctx, p.Name, metav1.GetOptions{})
			if err != nil {
				return err
			}
			if q.DeletionTimestamp != nil {
				terminating++
			}
			if !e.rt.isRunning(p.Name) {
				return fmt.Errorf("pod %s stopped during a graceful scale-down", p.Name)
			}
		}
		if terminating != 1 {
			return fmt.Errorf("%d pods terminating", terminating)
		}
		return nil
	})
	if err := e.api.Delete(e.ctx, "Deployment", "default", "echo", Grace{Seconds: 0}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "deployment's pods gone at once", func() error {
		l, err := e.api.Client.CoreV1().Pods("default").List(e.ctx, metav1.ListOptions{})
		if err != nil {
			return err
		}
		if len(l.Items) != 0 || e.rt.count() != 0 {
			return fmt.Errorf("%d pods, %d running", len(l.Items), e.rt.count())
		}
		return nil
	})
	if err := e.api.Delete(e.ctx, "Service", "default", "echo", Grace{Seconds: 0}); err == nil {
		t.Error("a grace period on a Service's deletion was accepted")
	}
}
