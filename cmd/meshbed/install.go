package main

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/spf13/cobra"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/meshbed/meshbed/kind"
	"github.com/meshbed/meshbed/mesh/wire"
)

// clusterClients are the API clients of one cluster.
type clusterClients struct {
	Kube    kubernetes.Interface
	Dynamic dynamic.Interface
}

// clientFactory connects to the cluster of a kubeconfig context (the
// kubeconfig file empty: $KUBECONFIG or ~/.kube/config). Tests pass one
// that returns fake clientsets.
type clientFactory func(kubeconfig, context string) (*clusterClients, error)

// kubeClients is the real clientFactory.
func kubeClients(kubeconfig, kctx string) (*clusterClients, error) {
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
	return &clusterClients{Kube: kube, Dynamic: dyn}, nil
}

type installOptions struct {
	kubeconfig, context string
	values              kind.Values
	dryRun              bool
}

// validate checks the flags, naming each flag at fault, all at once.
func (o installOptions) validate() error {
	var errs []error
	if o.context == "" && !o.dryRun {
		errs = append(errs, errors.New("--context is required (the kubeconfig context of the cluster to install into)"))
	}
	if err := wire.ValidateClusterName(o.values.ClusterName); err != nil {
		errs = append(errs, fmt.Errorf("--cluster-name: %w", err))
	}
	if err := wire.ValidateMaxConnectedClusters(o.values.MaxConnectedClusters); err != nil {
		errs = append(errs, fmt.Errorf("--max-connected-clusters: %w", err))
	} else if err := wire.ValidateClusterID(o.values.ClusterID, o.values.MaxConnectedClusters); err != nil {
		errs = append(errs, fmt.Errorf("--cluster-id: %w", err))
	}
	if len(errs) == 0 {
		// The rest (image, pull policy, log level) is checked by Render,
		// which names the value; map it to the flags.
		if _, err := kind.Render(o.values); err != nil {
			errs = append(errs, fmt.Errorf("--image, --image-pull-policy, --log-level or --encryption: %w", err))
		}
	}
	return errors.Join(errs...)
}

func installCmd(clients clientFactory) *cobra.Command {
	var o installOptions
	cmd := &cobra.Command{
		Use:   "install --context CTX --cluster-name NAME --cluster-id ID",
		Short: "Install meshbed (agent, CNI, mesh-apiserver) into a cluster",
		Long: `Renders the manifests of kind/manifests for this cluster and applies them:
namespace, CRDs, RBAC, the agent DaemonSet (which installs the CNI plugin on
every node) and the mesh-apiserver. Secrets are only created, never
overwritten, so installing again keeps certificates and connections.
With --dry-run, prints the manifests instead (kubectl apply -f - takes them).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := o.validate(); err != nil {
				return &exitError{2, err}
			}
			return install(cmd.Context(), cmd.OutOrStdout(), clients, o)
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.kubeconfig, "kubeconfig", "", "kubeconfig file (default $KUBECONFIG or ~/.kube/config)")
	f.StringVar(&o.context, "context", "", "kubeconfig context of the cluster")
	f.StringVar(&o.values.ClusterName, "cluster-name", "", "name of the cluster in the mesh ([a-z0-9-], at most 32 characters)")
	f.Uint32Var(&o.values.ClusterID, "cluster-id", 0, "ID of the cluster in the mesh (1..255, unique in the mesh)")
	f.Uint32Var(&o.values.MaxConnectedClusters, "max-connected-clusters", wire.MaxConnectedClusters255, "255 or 511; equal on every cluster of the mesh")
	f.StringVar(&o.values.Image, "image", kind.DefaultImage, "image with meshbed-agent, meshbed-apiserver and meshbed-cni")
	f.StringVar(&o.values.ImagePullPolicy, "image-pull-policy", "IfNotPresent", "Always, IfNotPresent or Never")
	f.StringVar(&o.values.LogLevel, "log-level", "info", "log level of the agent and the mesh-apiserver")
	f.StringVar(&o.values.Encryption, "encryption", "none", "transparent encryption between nodes: none or wireguard (the kernel module where the nodes have it, else userspace over /dev/net/tun)")
	f.BoolVar(&o.values.EncryptionStrict, "encryption-strict", false, "with --encryption wireguard: refuse traffic to nodes without a WireGuard key instead of sending it in clear")
	f.BoolVar(&o.dryRun, "dry-run", false, "print the manifests instead of applying them")
	return cmd
}

func install(ctx context.Context, out io.Writer, clients clientFactory, o installOptions) error {
	y, err := kind.Render(o.values)
	if err != nil {
		return err
	}
	if o.dryRun {
		_, err := out.Write(y)
		return err
	}
	objs, err := kind.Decode(y)
	if err != nil {
		return err
	}
	cl, err := clients(o.kubeconfig, o.context)
	if err != nil {
		return err
	}
	for _, obj := range objs {
		what, err := applyObject(ctx, cl.Dynamic, obj)
		if err != nil {
			return fmt.Errorf("install into %q: %w", o.context, err)
		}
		fmt.Fprintf(out, "%s/%s %s\n", obj.GetKind(), obj.GetName(), what)
	}
	fmt.Fprintf(out, "meshbed installed in %q as cluster %s (ID %d); next: meshbed clustermesh enable --context %s\n",
		o.context, o.values.ClusterName, o.values.ClusterID, o.context)
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

// applyObject creates obj, or replaces an existing one with it. Secrets
// are only created: their content belongs to `meshbed clustermesh`. What
// the cluster or `clustermesh enable` set on existing objects is carried
// over: a Service's cluster IPs and node ports (immutable) and the
// mesh-apiserver's TLS hash (which would otherwise roll it).
func applyObject(ctx context.Context, dyn dynamic.Interface, obj *unstructured.Unstructured) (string, error) {
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
