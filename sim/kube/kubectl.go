package kube

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/util/retry"
	"sigs.k8s.io/yaml"
)

// ErrUnsupportedKind is returned for objects the simulated API does not serve.
var ErrUnsupportedKind = errors.New("unsupported kind")

// Supported lists the kinds Decode accepts, as apiVersion/kind.
var Supported = []string{
	"v1/Namespace", "v1/Service", "v1/ConfigMap", "apps/v1/Deployment",
	"networking.k8s.io/v1/NetworkPolicy", "cilium.io/v2/CiliumNetworkPolicy",
}

// Decode splits a multi-document YAML manifest into objects: typed ones for
// Kubernetes kinds, *unstructured.Unstructured for CiliumNetworkPolicy.
// Decoding is strict: unknown fields are errors.
func Decode(manifest []byte) ([]runtime.Object, error) {
	var objs []runtime.Object
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(manifest)))
	for i := 0; ; i++ {
		doc, err := r.Read()
		if err == io.EOF {
			return objs, nil
		}
		if err != nil {
			return nil, fmt.Errorf("document %d: %w", i+1, err)
		}
		if len(bytes.TrimSpace(doc)) == 0 || isOnlyComments(doc) {
			continue
		}
		obj, err := decodeOne(doc)
		if err != nil {
			return nil, fmt.Errorf("document %d: %w", i+1, err)
		}
		objs = append(objs, obj)
	}
}

func isOnlyComments(doc []byte) bool {
	for _, line := range strings.Split(string(doc), "\n") {
		if l := strings.TrimSpace(line); l != "" && !strings.HasPrefix(l, "#") {
			return false
		}
	}
	return true
}

func decodeOne(doc []byte) (runtime.Object, error) {
	var tm metav1.TypeMeta
	if err := yaml.Unmarshal(doc, &tm); err != nil {
		return nil, err
	}
	var obj runtime.Object
	switch tm.APIVersion + "/" + tm.Kind {
	case "v1/Namespace":
		obj = &corev1.Namespace{}
	case "v1/Service":
		obj = &corev1.Service{}
	case "v1/ConfigMap":
		obj = &corev1.ConfigMap{}
	case "apps/v1/Deployment":
		obj = &appsv1.Deployment{}
	case "networking.k8s.io/v1/NetworkPolicy":
		obj = &networkingv1.NetworkPolicy{}
	case "cilium.io/v2/CiliumNetworkPolicy":
		u := &unstructured.Unstructured{}
		if err := yaml.Unmarshal(doc, &u.Object); err != nil {
			return nil, err
		}
		if u.GetName() == "" {
			return nil, fmt.Errorf("%s: metadata.name is required", tm.Kind)
		}
		return u, nil
	case "/":
		return nil, fmt.Errorf("apiVersion and kind are required")
	default:
		return nil, fmt.Errorf("%w %s %s (supported: %s)", ErrUnsupportedKind, tm.APIVersion, tm.Kind, strings.Join(Supported, ", "))
	}
	if err := yaml.UnmarshalStrict(doc, obj); err != nil {
		return nil, fmt.Errorf("%s: %w", tm.Kind, err)
	}
	if m, err := metaOf(obj); err != nil || m.GetName() == "" {
		return nil, fmt.Errorf("%s: metadata.name is required", tm.Kind)
	}
	return obj, nil
}

func metaOf(obj runtime.Object) (metav1.Object, error) {
	m, ok := obj.(metav1.Object)
	if !ok {
		return nil, fmt.Errorf("%T has no object metadata", obj)
	}
	return m, nil
}

// Apply creates obj or, if it exists, updates it the way kubectl apply
// would: fields the API server owns (a Service's ClusterIP, a Deployment's
// status) are kept.
func (a *API) Apply(ctx context.Context, obj runtime.Object) error {
	obj = obj.DeepCopyObject()
	m, err := metaOf(obj)
	if err != nil {
		return err
	}
	if ns := m.GetNamespace(); ns == "" && !isClusterScoped(obj) {
		m.SetNamespace(metav1.NamespaceDefault)
	}
	ns, name := m.GetNamespace(), m.GetName()
	err = retry.RetryOnConflict(retry.DefaultRetry, func() error {
		switch o := obj.(type) {
		case *corev1.Namespace:
			return upsert(ctx, a.Client.CoreV1().Namespaces(), o, nil)
		case *corev1.ConfigMap:
			return upsert(ctx, a.Client.CoreV1().ConfigMaps(ns), o, nil)
		case *corev1.Service:
			return upsert(ctx, a.Client.CoreV1().Services(ns), o, func(cur *corev1.Service) {
				o.Spec.ClusterIP, o.Spec.ClusterIPs = cur.Spec.ClusterIP, cur.Spec.ClusterIPs
			})
		case *appsv1.Deployment:
			if o.UID == "" {
				o.UID = types.UID(fmt.Sprintf("deployment-%s-%s", ns, name))
			}
			return upsert(ctx, a.Client.AppsV1().Deployments(ns), o, func(cur *appsv1.Deployment) {
				o.UID, o.Status = cur.UID, cur.Status
				o.Generation = cur.Generation + 1
			})
		case *networkingv1.NetworkPolicy:
			return upsert(ctx, a.Client.NetworkingV1().NetworkPolicies(ns), o, nil)
		case *unstructured.Unstructured:
			res := a.Dynamic.Resource(CiliumNetworkPolicies).Namespace(ns)
			cur, err := res.Get(ctx, name, metav1.GetOptions{})
			if apierrors.IsNotFound(err) {
				_, err = res.Create(ctx, o, metav1.CreateOptions{})
				return err
			}
			if err != nil {
				return err
			}
			o.SetResourceVersion(cur.GetResourceVersion())
			_, err = res.Update(ctx, o, metav1.UpdateOptions{})
			return err
		}
		return fmt.Errorf("%w %T", ErrUnsupportedKind, obj)
	})
	if err != nil {
		return fmt.Errorf("apply %s %s/%s: %w", kindOf(obj), ns, name, err)
	}
	return nil
}

func isClusterScoped(obj runtime.Object) bool {
	_, ok := obj.(*corev1.Namespace)
	return ok
}

func kindOf(obj runtime.Object) string {
	if k := obj.GetObjectKind().GroupVersionKind().Kind; k != "" {
		return k
	}
	return fmt.Sprintf("%T", obj)
}

// typedClient is the part of a generated typed client Apply needs.
type typedClient[T any] interface {
	Get(ctx context.Context, name string, opts metav1.GetOptions) (T, error)
	Create(ctx context.Context, obj T, opts metav1.CreateOptions) (T, error)
	Update(ctx context.Context, obj T, opts metav1.UpdateOptions) (T, error)
}

func upsert[T interface {
	runtime.Object
	metav1.Object
}](ctx context.Context, c typedClient[T], obj T, keep func(cur T)) error {
	cur, err := c.Get(ctx, obj.GetName(), metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		_, err = c.Create(ctx, obj, metav1.CreateOptions{})
		return err
	}
	if err != nil {
		return err
	}
	obj.SetResourceVersion(cur.GetResourceVersion())
	if keep != nil {
		keep(cur)
	}
	_, err = c.Update(ctx, obj, metav1.UpdateOptions{})
	return err
}

// Grace overrides the grace period of the pods that a Scale or Delete
// removes: Seconds 0 kills them at once, as kubectl delete --grace-period=0
// --force does. Without it the pods' own terminationGracePeriodSeconds
// (default 30) applies.
type Grace struct{ Seconds int64 }

// Scale sets a Deployment's replicas, as kubectl scale does. With a Grace,
// the pods the scale-down removes get that grace period instead of their
// own (the Deployment carries it in AnnotationScaleDownGracePeriod until
// the next Scale).
func (a *API) Scale(ctx context.Context, namespace, name string, replicas int32, grace ...Grace) error {
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		d, err := a.Client.AppsV1().Deployments(namespace).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		delete(d.Annotations, AnnotationScaleDownGracePeriod)
		if len(grace) > 0 {
			if d.Annotations == nil {
				d.Annotations = map[string]string{}
			}
			d.Annotations[AnnotationScaleDownGracePeriod] = strconv.FormatInt(grace[0].Seconds, 10)
		}
		d.Spec.Replicas = &replicas
		d.Generation++
		_, err = a.Client.AppsV1().Deployments(namespace).Update(ctx, d, metav1.UpdateOptions{})
		return err
	})
	if err != nil {
		return fmt.Errorf("scale deployment %s/%s to %d: %w", namespace, name, replicas, err)
	}
	return nil
}

// Annotate sets annotations on a Service; a nil value removes the key.
func (a *API) Annotate(ctx context.Context, namespace, service string, annotations map[string]*string) error {
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		svc, err := a.Client.CoreV1().Services(namespace).Get(ctx, service, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if svc.Annotations == nil {
			svc.Annotations = map[string]string{}
		}
		for k, v := range annotations {
			if v == nil {
				delete(svc.Annotations, k)
			} else {
				svc.Annotations[k] = *v
			}
		}
		_, err = a.Client.CoreV1().Services(namespace).Update(ctx, svc, metav1.UpdateOptions{})
		return err
	})
	if err != nil {
		return fmt.Errorf("annotate service %s/%s: %w", namespace, service, err)
	}
	return nil
}

// Delete deletes an object by kind (as in a manifest: Deployment, Service,
// ConfigMap, Namespace, NetworkPolicy, CiliumNetworkPolicy). A Deployment's
// pods go with it, each with its grace period unless a Grace is given
// (only a Deployment takes one).
func (a *API) Delete(ctx context.Context, kind, namespace, name string, grace ...Grace) error {
	opts := metav1.DeleteOptions{}
	var err error
	if len(grace) > 0 && !strings.EqualFold(kind, "deployment") {
		return fmt.Errorf("delete %s %s/%s: a grace period applies to a Deployment's pods only", kind, namespace, name)
	}
	switch strings.ToLower(kind) {
	case "deployment":
		err = a.deleteDeployment(ctx, namespace, name, grace)
	case "service":
		err = a.Client.CoreV1().Services(namespace).Delete(ctx, name, opts)
	case "configmap":
		err = a.Client.CoreV1().ConfigMaps(namespace).Delete(ctx, name, opts)
	case "namespace":
		err = a.Client.CoreV1().Namespaces().Delete(ctx, name, opts)
	case "networkpolicy":
		err = a.Client.NetworkingV1().NetworkPolicies(namespace).Delete(ctx, name, opts)
	case "ciliumnetworkpolicy":
		err = a.Dynamic.Resource(CiliumNetworkPolicies).Namespace(namespace).Delete(ctx, name, opts)
	default:
		return fmt.Errorf("delete %s %s/%s: %w", kind, namespace, name, ErrUnsupportedKind)
	}
	if err != nil {
		return fmt.Errorf("delete %s %s/%s: %w", kind, namespace, name, err)
	}
	return nil
}

// deleteDeployment deletes a Deployment; its pods are then garbage-collected
// by the Deployment controller with their own grace period. With a Grace it
// first scales the Deployment to zero with that grace period and waits for
// the controller to act on it (as kubectl's reapers did), so that no pod is
// replaced meanwhile, then deletes it and, with the grace period, every pod
// it still owns (those that were terminating already).
func (a *API) deleteDeployment(ctx context.Context, namespace, name string, grace []Grace) error {
	if len(grace) == 0 {
		return a.Client.AppsV1().Deployments(namespace).Delete(ctx, name, metav1.DeleteOptions{})
	}
	if err := a.Scale(ctx, namespace, name, 0, grace...); err != nil {
		return err
	}
	var d *appsv1.Deployment
	err := wait.PollUntilContextTimeout(ctx, 10*time.Millisecond, 10*time.Second, true, func(ctx context.Context) (bool, error) {
		var err error
		d, err = a.Client.AppsV1().Deployments(namespace).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		return d.Status.ObservedGeneration >= d.Generation && d.Status.Replicas == 0, nil
	})
	if err != nil {
		return fmt.Errorf("scale to zero before deleting: %w", err)
	}
	if err := a.Client.AppsV1().Deployments(namespace).Delete(ctx, name, metav1.DeleteOptions{}); err != nil {
		return err
	}
	pods, err := a.Client.CoreV1().Pods(namespace).List(ctx, metav1.ListOptions{})
	if err != nil {
		return fmt.Errorf("list its pods: %w", err)
	}
	var errs []error
	for i := range pods.Items {
		p := &pods.Items[i]
		if !ownedBy(p, d) {
			continue
		}
		err := a.Client.CoreV1().Pods(namespace).Delete(ctx, p.Name, metav1.DeleteOptions{GracePeriodSeconds: &grace[0].Seconds})
		if err != nil && !apierrors.IsNotFound(err) {
			errs = append(errs, fmt.Errorf("delete pod %s: %w", p.Name, err))
		}
	}
	return errors.Join(errs...)
}
