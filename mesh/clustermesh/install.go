package clustermesh

import (
	"context"
	"errors"
	"fmt"
	"io"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/meshbed/meshbed/kind"
	"github.com/meshbed/meshbed/mesh/wire"
)

// Clients are the API clients of one cluster.
type Clients struct {
	Kube    kubernetes.Interface
	Dynamic dynamic.Interface
	// Rest is the connection's configuration (port-forwards need it).
	Rest *rest.Config
}

// ClientFactory connects to the cluster of a kubeconfig context (the
// kubeconfig file empty: $KUBECONFIG or ~/.kube/config). Tests pass one
// that returns fake clientsets.
type ClientFactory func(kubeconfig, context string) (*Clients, error)

// KubeClients is the real ClientFactory.
func KubeClients(kubeconfig, kctx string) (*Clients, error) {
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	rules.ExplicitPath = kubeconfig
	rest, err := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules,
		&clientcmd.ConfigOverrides{CurrentContext: kctx}).ClientConfig()
	if err != nil {
		return nil, fmt.Errorf("kubeconfig context %q: %w", kctx, err)
	}
	kube, err := kubernetes.NewForConfig(rest)
	if err != nil {
		return nil, fmt.Errorf("kubeconfig context %q: %w", kctx, err)
	}
	dyn, err := dynamic.NewForConfig(rest)
	if err != nil {
		return nil, fmt.Errorf("kubeconfig context %q: %w", kctx, err)
	}
	return &Clients{Kube: kube, Dynamic: dyn, Rest: rest}, nil
}

// InstallOptions are install's: the cluster, the values of its manifests,
// and DryRun to print them instead of applying them.
type InstallOptions struct {
	Kubeconfig, Context string
	Values              kind.Values
	DryRun              bool
}

// Validate checks the options, naming each flag at fault, all at once.
func (o InstallOptions) Validate() error {
	var errs []error
	if o.Context == "" && !o.DryRun {
		errs = append(errs, errors.New("--context is required (the kubeconfig context of the cluster to install into)"))
	}
	if err := wire.ValidateClusterName(o.Values.ClusterName); err != nil {
		errs = append(errs, fmt.Errorf("--cluster-name: %w", err))
	}
	if err := wire.ValidateMaxConnectedClusters(o.Values.MaxConnectedClusters); err != nil {
		errs = append(errs, fmt.Errorf("--max-connected-clusters: %w", err))
	} else if err := wire.ValidateClusterID(o.Values.ClusterID, o.Values.MaxConnectedClusters); err != nil {
		errs = append(errs, fmt.Errorf("--cluster-id: %w", err))
	}
	if len(errs) == 0 {
		// The rest (image, pull policy, log level) is checked by Render,
		// which names the value; map it to the flags.
		if _, err := kind.Render(o.Values); err != nil {
			errs = append(errs, fmt.Errorf("--image, --image-pull-policy, --log-level or --encryption: %w", err))
		}
	}
	return errors.Join(errs...)
}

// Install renders the manifests and applies them to the cluster (or, with
// DryRun, prints them).
func Install(ctx context.Context, out io.Writer, clients ClientFactory, o InstallOptions) error {
	y, err := kind.Render(o.Values)
	if err != nil {
		return err
	}
	if o.DryRun {
		_, err := out.Write(y)
		return err
	}
	objs, err := kind.Decode(y)
	if err != nil {
		return err
	}
	cl, err := clients(o.Kubeconfig, o.Context)
	if err != nil {
		return err
	}
	for _, obj := range objs {
		what, err := ApplyObject(ctx, cl.Dynamic, obj)
		if err != nil {
			return fmt.Errorf("install into %q: %w", o.Context, err)
		}
		fmt.Fprintf(out, "%s/%s %s\n", obj.GetKind(), obj.GetName(), what)
	}
	fmt.Fprintf(out, "meshbed installed in %q as cluster %s (ID %d); next: meshbed clustermesh enable --context %s\n",
		o.Context, o.Values.ClusterName, o.Values.ClusterID, o.Context)
	return nil
}

// resource is where the API serves a kind.
type resource struct {
	gvr        schema.GroupVersionResource
	namespaced bool
}

// resources are the kinds the manifests hold: a fixed table instead of
// discovery, so install needs no round trip before its first write (and a
// CRD it has just created is known at once).
var resources = map[schema.GroupVersionKind]resource{
	{Version: "v1", Kind: "Namespace"}:      {schema.GroupVersionResource{Version: "v1", Resource: "namespaces"}, false},
	{Version: "v1", Kind: "ServiceAccount"}: {schema.GroupVersionResource{Version: "v1", Resource: "serviceaccounts"}, true},
	{Version: "v1", Kind: "ConfigMap"}:      {schema.GroupVersionResource{Version: "v1", Resource: "configmaps"}, true},
	{Version: "v1", Kind: "Secret"}:         {schema.GroupVersionResource{Version: "v1", Resource: "secrets"}, true},
	{Version: "v1", Kind: "Service"}:        {schema.GroupVersionResource{Version: "v1", Resource: "services"}, true},
	{Group: "apps", Version: "v1", Kind: "DaemonSet"}: {
		schema.GroupVersionResource{Group: "apps", Version: "v1", Resource: "daemonsets"}, true},
	{Group: "apps", Version: "v1", Kind: "Deployment"}: {
		schema.GroupVersionResource{Group: "apps", Version: "v1", Resource: "deployments"}, true},
	{Group: "rbac.authorization.k8s.io", Version: "v1", Kind: "ClusterRole"}: {
		schema.GroupVersionResource{Group: "rbac.authorization.k8s.io", Version: "v1", Resource: "clusterroles"}, false},
	{Group: "rbac.authorization.k8s.io", Version: "v1", Kind: "ClusterRoleBinding"}: {
		schema.GroupVersionResource{Group: "rbac.authorization.k8s.io", Version: "v1", Resource: "clusterrolebindings"}, false},
	{Group: "apiextensions.k8s.io", Version: "v1", Kind: "CustomResourceDefinition"}: {
		schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}, false},
}

// ApplyObject creates obj, or replaces an existing one with it. Secrets
// are only created: their content belongs to `meshbed clustermesh`. What
// the cluster or `clustermesh enable` set on existing objects is carried
// over: a Service's cluster IPs and node ports (immutable) and the
// mesh-apiserver's TLS hash (which would otherwise roll it).
func ApplyObject(ctx context.Context, dyn dynamic.Interface, obj *unstructured.Unstructured) (string, error) {
	res, ok := resources[obj.GroupVersionKind()]
	if !ok {
		return "", fmt.Errorf("%s %s: kind not supported by install", obj.GroupVersionKind(), obj.GetName())
	}
	var ri dynamic.ResourceInterface = dyn.Resource(res.gvr)
	if res.namespaced {
		ri = dyn.Resource(res.gvr).Namespace(obj.GetNamespace())
	}
	existing, err := ri.Get(ctx, obj.GetName(), metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		if _, err := ri.Create(ctx, obj, metav1.CreateOptions{FieldManager: "meshbed"}); err != nil {
			return "", fmt.Errorf("create %s %s: %w", obj.GetKind(), obj.GetName(), err)
		}
		return "created", nil
	}
	if err != nil {
		return "", fmt.Errorf("read %s %s: %w", obj.GetKind(), obj.GetName(), err)
	}
	if obj.GetKind() == "Secret" {
		return "kept", nil
	}
	obj = obj.DeepCopy()
	obj.SetResourceVersion(existing.GetResourceVersion())
	switch obj.GetKind() {
	case "Service":
		for _, f := range [][]string{{"spec", "clusterIP"}, {"spec", "clusterIPs"}} {
			if v, ok, _ := unstructured.NestedFieldCopy(existing.Object, f...); ok {
				if err := unstructured.SetNestedField(obj.Object, v, f...); err != nil {
					return "", fmt.Errorf("service %s: %w", obj.GetName(), err)
				}
			}
		}
	case "Deployment":
		path := []string{"spec", "template", "metadata", "annotations"}
		if v, ok, _ := unstructured.NestedString(existing.Object, append(path, kind.TLSHashAnnotation)...); ok {
			if err := unstructured.SetNestedField(obj.Object, v, append(path, kind.TLSHashAnnotation)...); err != nil {
				return "", fmt.Errorf("deployment %s: %w", obj.GetName(), err)
			}
		}
	}
	if _, err := ri.Update(ctx, obj, metav1.UpdateOptions{FieldManager: "meshbed"}); err != nil {
		return "", fmt.Errorf("update %s %s: %w", obj.GetKind(), obj.GetName(), err)
	}
	return "configured", nil
}

// ResourceOf is where the API serves a kind of the manifests.
func ResourceOf(gvk schema.GroupVersionKind) (schema.GroupVersionResource, bool) {
	r, ok := resources[gvk]
	return r.gvr, ok
}
