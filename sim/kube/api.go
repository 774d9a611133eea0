// Package kube is the in-memory Kubernetes API of a simulated cluster:
// client-go's fake clientset (so the mesh components run the very informer
// code they run against a real cluster), plus the handful of behaviours a
// real control plane would add that the fake lacks — ClusterIP allocation,
// Deployments turning into Pods spread over nodes, Pods started by a
// kubelet, and EndpointSlices following ready Pods.
//
// It supplies environment only: nothing here knows about the mesh.
package kube

import (
	"fmt"
	"net/netip"
	"sync"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	dynamicfake "k8s.io/client-go/dynamic/fake"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
)

// Custom resources the simulated API serves through its dynamic client.
var (
	CiliumNetworkPolicies = schema.GroupVersionResource{Group: "cilium.io", Version: "v2", Resource: "ciliumnetworkpolicies"}
	MeshIdentities        = schema.GroupVersionResource{Group: "meshbed.io", Version: "v1alpha1", Resource: "meshidentities"}
)

// API is one simulated cluster's Kubernetes API.
type API struct {
	Client  *fake.Clientset
	Dynamic *dynamicfake.FakeDynamicClient

	ips *ipAllocator
}

// NewAPI returns an empty API whose Services get ClusterIPs from serviceCIDR.
func NewAPI(serviceCIDR netip.Prefix) (*API, error) {
	alloc, err := newIPAllocator(serviceCIDR)
	if err != nil {
		return nil, err
	}
	a := &API{
		Client: fake.NewClientset(),
		Dynamic: dynamicfake.NewSimpleDynamicClientWithCustomListKinds(runtime.NewScheme(),
			map[schema.GroupVersionResource]string{
				CiliumNetworkPolicies: "CiliumNetworkPolicyList",
				MeshIdentities:        "MeshIdentityList",
			}),
		ips: alloc,
	}
	a.Client.PrependReactor("create", "services", a.allocateClusterIP)
	a.Client.PrependReactor("delete", "services", a.releaseClusterIP)
	a.Client.PrependReactor("delete", "pods", a.deletePodGracefully)
	a.Client.PrependReactor("update", "deployments", a.updateDeploymentStatus)
	return a, nil
}

// updateDeploymentStatus makes an update of a Deployment's status
// subresource change the status only, as the real API server does; the
// fake stores the whole object, so a controller's status update from a
// stale copy would undo a concurrent kubectl scale.
func (a *API) updateDeploymentStatus(action k8stesting.Action) (bool, runtime.Object, error) {
	u, ok := action.(k8stesting.UpdateAction)
	if !ok || u.GetSubresource() != "status" {
		return false, nil, nil
	}
	d, ok := u.GetObject().(*appsv1.Deployment)
	if !ok {
		return false, nil, nil
	}
	gvr := appsv1.SchemeGroupVersion.WithResource("deployments")
	obj, err := a.Client.Tracker().Get(gvr, d.Namespace, d.Name)
	if err != nil {
		return true, nil, err
	}
	cur := obj.(*appsv1.Deployment).DeepCopy()
	cur.Status = *d.Status.DeepCopy()
	if err := a.Client.Tracker().Update(gvr, cur, cur.Namespace); err != nil {
		return true, nil, err
	}
	return true, cur, nil
}

// DefaultTerminationGracePeriodSeconds is what the API server fills in for a
// pod that does not set spec.terminationGracePeriodSeconds.
const DefaultTerminationGracePeriodSeconds = 30

// deletePodGracefully turns a pod deletion into what the real API server
// makes of it: a pod that runs on a node is only marked for deletion
// (deletionTimestamp = now + grace period) and stays until its kubelet has
// stopped it and deletes it for good with a grace period of 0. An
// unscheduled pod, or a deletion with grace period 0 (kubectl delete
// --grace-period=0 --force), removes the object at once. A second
// deletion may shorten the grace period, never lengthen it.
func (a *API) deletePodGracefully(action k8stesting.Action) (bool, runtime.Object, error) {
	d, ok := action.(k8stesting.DeleteAction)
	if !ok {
		return false, nil, nil
	}
	obj, err := a.Client.Tracker().Get(corev1.SchemeGroupVersion.WithResource("pods"), d.GetNamespace(), d.GetName())
	if err != nil {
		return false, nil, nil // the default reactor answers NotFound
	}
	pod, ok := obj.(*corev1.Pod)
	if !ok {
		return false, nil, nil
	}
	grace := int64(DefaultTerminationGracePeriodSeconds)
	if g := pod.Spec.TerminationGracePeriodSeconds; g != nil {
		grace = *g
	}
	if g := d.GetDeleteOptions().GracePeriodSeconds; g != nil {
		grace = *g
	}
	if grace <= 0 || pod.Spec.NodeName == "" {
		return false, nil, nil
	}
	deadline := metav1.NewTime(time.Now().Add(time.Duration(grace) * time.Second))
	if cur := pod.DeletionTimestamp; cur != nil && !deadline.Before(cur) {
		return true, pod, nil
	}
	pod = pod.DeepCopy()
	pod.DeletionTimestamp = &deadline
	pod.DeletionGracePeriodSeconds = &grace
	if err := a.Client.Tracker().Update(corev1.SchemeGroupVersion.WithResource("pods"), pod, pod.Namespace); err != nil {
		return true, nil, fmt.Errorf("mark pod %s/%s terminating: %w", pod.Namespace, pod.Name, err)
	}
	return true, pod, nil
}

// allocateClusterIP gives a new Service a ClusterIP the way the real API
// server does, unless it is headless or already has one. It mutates the
// object and lets the tracker store it.
func (a *API) allocateClusterIP(action k8stesting.Action) (bool, runtime.Object, error) {
	svc, ok := action.(k8stesting.CreateAction).GetObject().(*corev1.Service)
	if !ok {
		return false, nil, nil
	}
	key := svc.Namespace + "/" + svc.Name
	switch svc.Spec.ClusterIP {
	case corev1.ClusterIPNone:
		return false, nil, nil
	case "":
		ip, err := a.ips.allocate(key)
		if err != nil {
			return true, nil, fmt.Errorf("service %s: %w", key, err)
		}
		svc.Spec.ClusterIP = ip.String()
	default:
		ip, err := netip.ParseAddr(svc.Spec.ClusterIP)
		if err != nil {
			return true, nil, fmt.Errorf("service %s: spec.clusterIP %q: %w", key, svc.Spec.ClusterIP, err)
		}
		if err := a.ips.claim(key, ip); err != nil {
			return true, nil, fmt.Errorf("service %s: %w", key, err)
		}
	}
	svc.Spec.ClusterIPs = []string{svc.Spec.ClusterIP}
	if svc.Spec.Type == "" {
		svc.Spec.Type = corev1.ServiceTypeClusterIP
	}
	return false, nil, nil
}

func (a *API) releaseClusterIP(action k8stesting.Action) (bool, runtime.Object, error) {
	d := action.(k8stesting.DeleteAction)
	a.ips.release(d.GetNamespace() + "/" + d.GetName())
	return false, nil, nil
}

// ipAllocator hands out service addresses in order, skipping the first ten
// addresses of the range as kube-apiserver reserves the first for itself.
type ipAllocator struct {
	mu     sync.Mutex
	prefix netip.Prefix
	first  netip.Addr
	next   netip.Addr
	byKey  map[string]netip.Addr
	inUse  map[netip.Addr]string
}

func newIPAllocator(prefix netip.Prefix) (*ipAllocator, error) {
	if !prefix.IsValid() || !prefix.Addr().Is4() || prefix.Bits() > 28 {
		return nil, fmt.Errorf("service CIDR %s: want an IPv4 prefix of /28 or larger", prefix)
	}
	first := prefix.Masked().Addr()
	for range 10 {
		first = first.Next()
	}
	return &ipAllocator{prefix: prefix.Masked(), first: first, next: first,
		byKey: map[string]netip.Addr{}, inUse: map[netip.Addr]string{}}, nil
}

func (a *ipAllocator) allocate(key string) (netip.Addr, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if ip, ok := a.byKey[key]; ok {
		return ip, nil
	}
	start := a.next
	for {
		ip := a.next
		a.next = a.next.Next()
		if !a.prefix.Contains(a.next) {
			a.next = a.first
		}
		if _, used := a.inUse[ip]; !used {
			a.byKey[key], a.inUse[ip] = ip, key
			return ip, nil
		}
		if a.next == start {
			return netip.Addr{}, fmt.Errorf("service CIDR %s is exhausted", a.prefix)
		}
	}
}

func (a *ipAllocator) claim(key string, ip netip.Addr) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if !a.prefix.Contains(ip) {
		return fmt.Errorf("clusterIP %s is outside the service CIDR %s", ip, a.prefix)
	}
	if owner, used := a.inUse[ip]; used && owner != key {
		return fmt.Errorf("clusterIP %s is already allocated to %s", ip, owner)
	}
	a.byKey[key], a.inUse[ip] = ip, key
	return nil
}

func (a *ipAllocator) release(key string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if ip, ok := a.byKey[key]; ok {
		delete(a.byKey, key)
		delete(a.inUse, ip)
	}
}
