package scenarios

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/validation"
)

// kindInfo describes a supported Kubernetes kind.
type kindInfo struct {
	apiVersion string
	namespaced bool
	// decode decodes and checks an object of the kind from JSON.
	decode func(data []byte) (runtime.Object, error)
}

// kinds are the Kubernetes kinds a scenario may hold, by kind name.
var kinds = map[string]kindInfo{
	"Namespace":           {"v1", false, typed(func() *corev1.Namespace { return &corev1.Namespace{} }, nil)},
	"ConfigMap":           {"v1", true, typed(func() *corev1.ConfigMap { return &corev1.ConfigMap{} }, nil)},
	"Service":             {"v1", true, typed(func() *corev1.Service { return &corev1.Service{} }, checkService)},
	"Deployment":          {"apps/v1", true, typed(func() *appsv1.Deployment { return &appsv1.Deployment{} }, checkDeployment)},
	"NetworkPolicy":       {"networking.k8s.io/v1", true, typed(func() *networkingv1.NetworkPolicy { return &networkingv1.NetworkPolicy{} }, nil)},
	"CiliumNetworkPolicy": {"cilium.io/v2", true, decodeCNP},
}

// KindNames lists the supported Kubernetes kinds.
func KindNames() []string {
	names := make([]string, 0, len(kinds))
	for k := range kinds {
		names = append(names, k)
	}
	sort.Strings(names)
	return names
}

// typed decodes strictly into a Kubernetes API type and runs check, which
// may also fill in defaults.
func typed[T runtime.Object](alloc func() T, check func(T) error) func([]byte) (runtime.Object, error) {
	return func(data []byte) (runtime.Object, error) {
		obj := alloc()
		if err := strictJSON(data, obj); err != nil {
			return nil, err
		}
		if check != nil {
			if err := check(obj); err != nil {
				return nil, err
			}
		}
		return obj, nil
	}
}

func strictJSON(data []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return errors.New(strings.TrimPrefix(err.Error(), "json: "))
	}
	return nil
}

func checkDeployment(dep *appsv1.Deployment) error {
	if dep.Spec.Replicas != nil && *dep.Spec.Replicas < 0 {
		return fmt.Errorf("spec.replicas: %d is negative", *dep.Spec.Replicas)
	}
	if dep.Spec.Selector == nil {
		return errors.New("spec.selector: required")
	}
	sel, err := metav1.LabelSelectorAsSelector(dep.Spec.Selector)
	if err != nil {
		return fmt.Errorf("spec.selector: %v", err)
	}
	if sel.Empty() {
		return errors.New("spec.selector: must select something")
	}
	if !sel.Matches(labels.Set(dep.Spec.Template.Labels)) {
		return fmt.Errorf("spec.template.metadata.labels: do not match spec.selector (%s)", sel)
	}
	if len(dep.Spec.Template.Spec.Containers) == 0 {
		return errors.New("spec.template.spec.containers: at least one container is required")
	}
	for i, c := range dep.Spec.Template.Spec.Containers {
		if c.Image == "" {
			return fmt.Errorf("spec.template.spec.containers[%d].image: required", i)
		}
		for j := range c.Ports {
			p := &dep.Spec.Template.Spec.Containers[i].Ports[j]
			if p.ContainerPort < 1 || p.ContainerPort > 65535 {
				return fmt.Errorf("spec.template.spec.containers[%d].ports[%d].containerPort: %d is not a port", i, j, p.ContainerPort)
			}
			if p.Protocol == "" {
				p.Protocol = corev1.ProtocolTCP
			}
		}
	}
	return nil
}

func checkService(svc *corev1.Service) error {
	if errs := validation.IsDNS1035Label(svc.Name); len(errs) > 0 {
		return fmt.Errorf("metadata.name: %q: %s", svc.Name, strings.Join(errs, "; "))
	}
	names := map[string]bool{}
	for i := range svc.Spec.Ports {
		p := &svc.Spec.Ports[i]
		// Defaults the API server would fill in, so that the engine never
		// guesses them.
		if p.Protocol == "" {
			p.Protocol = corev1.ProtocolTCP
		}
		if p.TargetPort.IntVal == 0 && p.TargetPort.StrVal == "" {
			p.TargetPort = intstr.FromInt32(p.Port)
		}
		if p.Port < 1 || p.Port > 65535 {
			return fmt.Errorf("spec.ports[%d].port: %d is not a port", i, p.Port)
		}
		// Backends of a global service are matched to frontends by port
		// name, so names must tell ports apart.
		if len(svc.Spec.Ports) > 1 && p.Name == "" {
			return fmt.Errorf("spec.ports[%d].name: required when a service has several ports", i)
		}
		if names[p.Name] {
			return fmt.Errorf("spec.ports[%d].name: %q is used twice", i, p.Name)
		}
		names[p.Name] = true
	}
	return nil
}

// decodeCNP checks a CiliumNetworkPolicy's shape; its rules are the policy
// code's business.
func decodeCNP(data []byte) (runtime.Object, error) {
	var top map[string]json.RawMessage
	if err := json.Unmarshal(data, &top); err != nil {
		return nil, err
	}
	var unknown []string
	for k := range top {
		switch k {
		case "apiVersion", "kind", "metadata", "spec", "specs", "status":
		default:
			unknown = append(unknown, k)
		}
	}
	if len(unknown) > 0 {
		sort.Strings(unknown)
		return nil, fmt.Errorf("unknown field %q", unknown[0])
	}
	var meta metav1.ObjectMeta
	if err := strictJSON(top["metadata"], &meta); err != nil {
		return nil, fmt.Errorf("metadata: %v", err)
	}
	spec, specs := top["spec"], top["specs"]
	if spec == nil && specs == nil {
		return nil, errors.New("spec or specs is required")
	}
	if spec != nil {
		var m map[string]any
		if err := json.Unmarshal(spec, &m); err != nil || m == nil {
			return nil, errors.New("spec: must be an object")
		}
	}
	if specs != nil {
		var l []map[string]any
		if err := json.Unmarshal(specs, &l); err != nil {
			return nil, errors.New("specs: must be a list of objects")
		}
	}
	u := &unstructured.Unstructured{}
	if err := u.UnmarshalJSON(data); err != nil {
		return nil, err
	}
	return u, nil
}

// objects parses a manifest: one or more YAML documents, each a Kubernetes
// object of a supported kind. Problems are reported at field, each message
// prefixed with prefix (the file name). ok is false if any document failed.
func (d *decoder) objects(field, prefix string, data []byte) ([]Object, bool) {
	docs := splitDocuments(data)
	if len(docs) == 0 {
		d.errorf(field, "%sno Kubernetes objects", prefix)
		return nil, false
	}
	var out []Object
	ok := true
	for i, doc := range docs {
		where := fmt.Sprintf("%sdocument %d", prefix, i+1)
		obj, err := parseObject(doc)
		if err != nil {
			d.errorf(field, "%s%v", where, err)
			ok = false
			continue
		}
		out = append(out, obj)
	}
	return out, ok
}

// parseObject decodes one Kubernetes object and defaults its namespace.
// Errors after the kind is known name the object: " (Deployment x-wing): ...".
func parseObject(doc document) (Object, error) {
	v, err := decodeYAML(doc)
	if err != nil {
		return Object{}, fmt.Errorf(": %v", err)
	}
	m, isObj := v.(map[string]any)
	if !isObj {
		return Object{}, fmt.Errorf(": must be a Kubernetes object, got %s", describe(v))
	}
	apiVersion, _ := m["apiVersion"].(string)
	kind, _ := m["kind"].(string)
	if apiVersion == "" || kind == "" {
		return Object{}, errors.New(": apiVersion and kind are required")
	}
	info, known := kinds[kind]
	if !known {
		return Object{}, fmt.Errorf(": kind %q is not supported (supported: %s)", kind, strings.Join(KindNames(), ", "))
	}
	if apiVersion != info.apiVersion {
		return Object{}, fmt.Errorf(": %s must be apiVersion %s, not %q", kind, info.apiVersion, apiVersion)
	}
	md, _ := m["metadata"].(map[string]any)
	name, _ := md["name"].(string)
	ns, _ := md["namespace"].(string)
	if name == "" {
		return Object{}, fmt.Errorf(" (%s): metadata.name: required", kind)
	}
	label := fmt.Sprintf(" (%s %s)", kind, name)
	if errs := validation.IsDNS1123Subdomain(name); len(errs) > 0 {
		return Object{}, fmt.Errorf("%s: metadata.name: %s", label, strings.Join(errs, "; "))
	}
	if info.namespaced {
		if ns == "" {
			ns = DefaultNamespace
			md["namespace"] = ns
		}
		if errs := validation.IsDNS1123Label(ns); len(errs) > 0 {
			return Object{}, fmt.Errorf("%s: metadata.namespace: %q: %s", label, ns, strings.Join(errs, "; "))
		}
	} else if ns != "" {
		return Object{}, fmt.Errorf("%s: metadata.namespace: a %s has no namespace", label, kind)
	}
	if kind == "Deployment" {
		// Replicas default to 1, as the API server does, so that the engine
		// never guesses.
		if spec, ok := m["spec"].(map[string]any); ok && spec["replicas"] == nil {
			spec["replicas"] = json.Number("1")
		}
	}
	// Re-encode with the defaults; json.Number keeps numbers exact.
	data, err := json.Marshal(m)
	if err != nil {
		return Object{}, fmt.Errorf("%s: %v", label, err)
	}
	obj, err := info.decode(data)
	if err != nil {
		return Object{}, fmt.Errorf("%s: %v", label, err)
	}
	if kind == "Namespace" {
		if errs := validation.IsDNS1123Label(name); len(errs) > 0 {
			return Object{}, fmt.Errorf("%s: metadata.name: %s", label, strings.Join(errs, "; "))
		}
	}
	// Encode the typed object, so JSON and Object agree.
	data, err = json.Marshal(obj)
	if err != nil {
		return Object{}, fmt.Errorf("%s: %v", label, err)
	}
	return Object{APIVersion: apiVersion, Kind: kind, Namespace: ns, Name: name, Object: obj, JSON: data}, nil
}
