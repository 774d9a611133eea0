package kind

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	kindv1alpha4 "sigs.k8s.io/kind/pkg/apis/config/v1alpha4"
	"sigs.k8s.io/yaml"

	"github.com/meshbed/meshbed/internal/testenv"
	"github.com/meshbed/meshbed/mesh/agent"
	"github.com/meshbed/meshbed/mesh/identity"
)

var cluster1 = Values{ClusterName: "cluster1", ClusterID: 1}

func mustObjects(t *testing.T, v Values) []*unstructured.Unstructured {
	t.Helper()
	objs, err := Objects(v)
	if err != nil {
		t.Fatal(err)
	}
	return objs
}

func find(t *testing.T, objs []*unstructured.Unstructured, kind, name string) *unstructured.Unstructured {
	t.Helper()
	for _, o := range objs {
		if o.GetKind() == kind && o.GetName() == name {
			return o
		}
	}
	t.Fatalf("no %s %s in the manifests", kind, name)
	return nil
}

// decodeStrict converts u into a typed object, failing on any field the
// type does not know: a misspelt field in a manifest is silently dropped by
// the API server, so it must fail here.
func decodeStrict(t *testing.T, u *unstructured.Unstructured, into any) {
	t.Helper()
	j, err := json.Marshal(u.Object)
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.UnmarshalStrict(j, into); err != nil {
		t.Fatalf("%s %s: %v", u.GetKind(), u.GetName(), err)
	}
}

func TestRenderGolden(t *testing.T) {
	for _, v := range []Values{cluster1, {ClusterName: "cluster2", ClusterID: 2, Image: "ghcr.io/meshbed/meshbed:v0.1.0", ImagePullPolicy: "Always", LogLevel: "debug"}} {
		t.Run(v.ClusterName, func(t *testing.T) {
			got, err := Render(v)
			if err != nil {
				t.Fatal(err)
			}
			testenv.Golden(t, filepath.Join("testdata", v.ClusterName+".golden.yaml"), got)
		})
	}
}

// TestObjectsDecodeStrictly decodes every manifest into its Go type.
func TestObjectsDecodeStrictly(t *testing.T) {
	objs := mustObjects(t, cluster1)
	seen := map[string]int{}
	for _, o := range objs {
		seen[o.GetKind()]++
		var into any
		switch o.GetKind() {
		case "Namespace":
			into = &corev1.Namespace{}
		case "ServiceAccount":
			into = &corev1.ServiceAccount{}
		case "ConfigMap":
			into = &corev1.ConfigMap{}
		case "Secret":
			into = &corev1.Secret{}
		case "Service":
			into = &corev1.Service{}
		case "ClusterRole":
			into = &rbacv1.ClusterRole{}
		case "ClusterRoleBinding":
			into = &rbacv1.ClusterRoleBinding{}
		case "DaemonSet":
			into = &appsv1.DaemonSet{}
		case "Deployment":
			into = &appsv1.Deployment{}
		case "CustomResourceDefinition":
			checkStructural(t, o)
			continue
		default:
			t.Errorf("unexpected kind %s", o.GetKind())
			continue
		}
		decodeStrict(t, o, into)
		if ns := o.GetNamespace(); o.GetKind() != "Namespace" && !strings.HasPrefix(o.GetKind(), "Cluster") && ns != Namespace {
			t.Errorf("%s %s: namespace %q, want %q", o.GetKind(), o.GetName(), ns, Namespace)
		}
	}
	want := map[string]int{"Namespace": 1, "CustomResourceDefinition": 2, "ServiceAccount": 2, "ClusterRole": 2,
		"ClusterRoleBinding": 2, "ConfigMap": 1, "Secret": 5, "DaemonSet": 1, "Deployment": 2, "Service": 1}
	for k, n := range want {
		if seen[k] != n {
			t.Errorf("%d %s objects, want %d", seen[k], k, n)
		}
	}
}

// checkStructural checks what the API server requires of a CRD schema: a
// typed root, and every object either with properties or preserving
// unknown fields.
func checkStructural(t *testing.T, crd *unstructured.Unstructured) {
	t.Helper()
	versions, _, _ := unstructured.NestedSlice(crd.Object, "spec", "versions")
	if len(versions) == 0 {
		t.Fatalf("CRD %s: no versions", crd.GetName())
	}
	for _, v := range versions {
		schema, ok, _ := unstructured.NestedMap(v.(map[string]any), "schema", "openAPIV3Schema")
		if !ok {
			t.Fatalf("CRD %s: no openAPIV3Schema", crd.GetName())
		}
		var walk func(path string, s map[string]any)
		walk = func(path string, s map[string]any) {
			typ, _ := s["type"].(string)
			if typ == "" {
				t.Errorf("CRD %s: %s has no type", crd.GetName(), path)
			}
			props, _ := s["properties"].(map[string]any)
			for name, p := range props {
				walk(path+"."+name, p.(map[string]any))
			}
			if items, ok := s["items"].(map[string]any); ok {
				walk(path+"[]", items)
			}
		}
		walk("<root>", schema)
	}
}

// TestMeshIdentityCRDIsTheCodes keeps the copy in manifests/ identical to
// mesh/identity/crd.yaml, which mesh/identity's own test checks against
// the code.
func TestMeshIdentityCRDIsTheCodes(t *testing.T) {
	ours, err := manifests.ReadFile("manifests/crd-meshidentity.yaml")
	if err != nil {
		t.Fatal(err)
	}
	theirs, err := os.ReadFile(filepath.Join("..", "mesh", "identity", "crd.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(ours, theirs) {
		t.Error("kind/manifests/crd-meshidentity.yaml differs from mesh/identity/crd.yaml: copy it over")
	}
	crd := find(t, mustObjects(t, cluster1), "CustomResourceDefinition", identity.Resource+"."+identity.Group)
	if g, _, _ := unstructured.NestedString(crd.Object, "spec", "group"); g != identity.Group {
		t.Errorf("group %q, want %q", g, identity.Group)
	}
}

func TestCiliumNetworkPolicyCRDMatchesAgent(t *testing.T) {
	gvr := agent.CiliumNetworkPolicies
	crd := find(t, mustObjects(t, cluster1), "CustomResourceDefinition", gvr.Resource+"."+gvr.Group)
	var c struct {
		Spec struct {
			Group string
			Scope string
			Names struct{ Plural, Kind string }
			// Versions are checked for the agent's version.
			Versions []struct {
				Name            string
				Served, Storage bool
			}
		}
	}
	decodeStrictLoose(t, crd, &c)
	if c.Spec.Group != gvr.Group || c.Spec.Names.Plural != gvr.Resource || c.Spec.Scope != "Namespaced" || c.Spec.Names.Kind != "CiliumNetworkPolicy" {
		t.Errorf("CRD names %+v, want group %s plural %s, namespaced", c.Spec, gvr.Group, gvr.Resource)
	}
	if len(c.Spec.Versions) != 1 || c.Spec.Versions[0].Name != gvr.Version || !c.Spec.Versions[0].Served || !c.Spec.Versions[0].Storage {
		t.Errorf("versions %+v, want %s served and stored", c.Spec.Versions, gvr.Version)
	}
	// The seed's policies must be accepted by the schema, which keeps
	// every field under spec.
	versions, _, _ := unstructured.NestedSlice(crd.Object, "spec", "versions")
	keep, _, _ := unstructured.NestedBool(versions[0].(map[string]any), "schema", "openAPIV3Schema", "properties", "spec", "x-kubernetes-preserve-unknown-fields")
	if !keep {
		t.Error("spec does not preserve unknown fields: the seed's policies would be pruned")
	}
}

// decodeStrictLoose decodes without rejecting unknown fields, for partial
// views of objects without a Go type here.
func decodeStrictLoose(t *testing.T, u *unstructured.Unstructured, into any) {
	t.Helper()
	j, err := json.Marshal(u.Object)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(j, into); err != nil {
		t.Fatal(err)
	}
}

// TestRBACCoversWhatTheComponentsRead checks both roles against the
// resources the agent and the mesh-apiserver watch and write.
func TestRBACCoversWhatTheComponentsRead(t *testing.T) {
	objs := mustObjects(t, cluster1)
	type res struct{ group, resource string }
	reads := []res{{"", "pods"}, {"", "services"}, {"", "nodes"}, {"", "namespaces"},
		{"discovery.k8s.io", "endpointslices"}, {"networking.k8s.io", "networkpolicies"},
		{agent.CiliumNetworkPolicies.Group, agent.CiliumNetworkPolicies.Resource},
		{identity.GVR.Group, identity.GVR.Resource}}
	for _, name := range []string{AgentName, APIServerName} {
		t.Run(name, func(t *testing.T) {
			var role rbacv1.ClusterRole
			decodeStrict(t, find(t, objs, "ClusterRole", name), &role)
			allowed := func(r res, verb string) bool {
				for _, rule := range role.Rules {
					if slices.Contains(rule.APIGroups, r.group) && slices.Contains(rule.Resources, r.resource) && slices.Contains(rule.Verbs, verb) {
						return true
					}
				}
				return false
			}
			for _, r := range reads {
				for _, verb := range []string{"get", "list", "watch"} {
					if !allowed(r, verb) {
						t.Errorf("%s may not %s %s.%s", name, verb, r.resource, r.group)
					}
				}
			}
			if !allowed(res{identity.GVR.Group, identity.GVR.Resource}, "create") {
				t.Errorf("%s may not create meshidentities", name)
			}
			// The agent patches its own node (its WireGuard key); the
			// mesh-apiserver writes nothing but identities.
			patchesNodes := name == AgentName
			if got := allowed(res{"", "nodes"}, "patch"); got != patchesNodes {
				t.Errorf("%s may patch nodes: %v, want %v", name, got, patchesNodes)
			}
			for _, rule := range role.Rules {
				for _, verb := range rule.Verbs {
					if verb == "patch" && patchesNodes && slices.Equal(rule.Resources, []string{"nodes"}) && slices.Equal(rule.APIGroups, []string{""}) {
						continue
					}
					if !slices.Contains([]string{"get", "list", "watch", "create"}, verb) {
						t.Errorf("%s is granted %q on %v: more than it needs", name, verb, rule.Resources)
					}
				}
			}
			var binding rbacv1.ClusterRoleBinding
			decodeStrict(t, find(t, objs, "ClusterRoleBinding", name), &binding)
			if binding.RoleRef.Name != name || len(binding.Subjects) != 1 || binding.Subjects[0].Name != name || binding.Subjects[0].Namespace != Namespace {
				t.Errorf("binding %+v does not bind service account %s/%s to role %s", binding, Namespace, name, name)
			}
		})
	}
}

func TestAgentDaemonSet(t *testing.T) {
	var ds appsv1.DaemonSet
	decodeStrict(t, find(t, mustObjects(t, cluster1), "DaemonSet", AgentName), &ds)
	spec := ds.Spec.Template.Spec
	if !spec.HostNetwork {
		t.Error("agent not on the host network")
	}
	if spec.ServiceAccountName != AgentName {
		t.Errorf("service account %q", spec.ServiceAccountName)
	}
	if len(spec.Tolerations) != 1 || spec.Tolerations[0].Operator != corev1.TolerationOpExists || spec.Tolerations[0].Key != "" {
		t.Errorf("tolerations %+v: the CNI must run on every node, tainted or not ready", spec.Tolerations)
	}
	if len(spec.Containers) != 1 || len(spec.InitContainers) != 1 {
		t.Fatalf("%d containers, %d init containers; want 1 and 1", len(spec.Containers), len(spec.InitContainers))
	}
	c := spec.Containers[0]
	if c.SecurityContext == nil || c.SecurityContext.Privileged == nil || !*c.SecurityContext.Privileged {
		t.Error("agent not privileged")
	}
	if c.Image != DefaultImage || spec.InitContainers[0].Image != DefaultImage {
		t.Errorf("images %q, %q; want %q", c.Image, spec.InitContainers[0].Image, DefaultImage)
	}
	env := map[string]string{}
	for _, e := range c.Env {
		if e.ValueFrom != nil && e.ValueFrom.FieldRef != nil {
			env[e.Name] = e.ValueFrom.FieldRef.FieldPath
		}
	}
	if env["NODE_NAME"] != "spec.nodeName" || env["HOST_IP"] != "status.hostIP" {
		t.Errorf("env from fields %v, want NODE_NAME=spec.nodeName HOST_IP=status.hostIP", env)
	}
	for _, arg := range []string{"--cluster-name=cluster1", "--cluster-id=1", "--node-name=$(NODE_NAME)", "--node-ip=$(HOST_IP)",
		"--clustermesh-config=" + AgentClusterMeshDir, "--cni-socket=" + CNISocket} {
		if !slices.Contains(c.Args, arg) {
			t.Errorf("agent args %q lack %q", c.Args, arg)
		}
	}
	volumes := map[string]corev1.Volume{}
	for _, v := range spec.Volumes {
		volumes[v.Name] = v
	}
	mounts := func(ms []corev1.VolumeMount) map[string]corev1.VolumeMount {
		out := map[string]corev1.VolumeMount{}
		for _, m := range ms {
			if _, ok := volumes[m.Name]; !ok {
				t.Errorf("mount of undeclared volume %q", m.Name)
			}
			out[m.MountPath] = m
		}
		return out
	}
	hostPath := func(m corev1.VolumeMount) string {
		if hp := volumes[m.Name].HostPath; hp != nil {
			return hp.Path
		}
		return ""
	}
	secret := func(m corev1.VolumeMount) string {
		if s := volumes[m.Name].Secret; s != nil {
			return s.SecretName
		}
		return ""
	}
	agentMounts := mounts(c.VolumeMounts)
	hostToContainer, bidirectional := corev1.MountPropagationHostToContainer, corev1.MountPropagationBidirectional
	for _, w := range []struct {
		path, host, secret string
		propagation        *corev1.MountPropagationMode
	}{
		{path: "/sys/fs/bpf", host: "/sys/fs/bpf", propagation: &bidirectional},
		{path: "/var/run/netns", host: "/var/run/netns", propagation: &hostToContainer},
		{path: RunDir, host: RunDir},
		{path: AgentClusterMeshDir, secret: SecretClusterMesh},
		{path: AgentTLSDir, secret: SecretAgentTLS},
	} {
		m, ok := agentMounts[w.path]
		switch {
		case !ok:
			t.Errorf("agent does not mount %s", w.path)
		case hostPath(m) != w.host || secret(m) != w.secret:
			t.Errorf("agent mount %s: host path %q secret %q, want %q %q", w.path, hostPath(m), secret(m), w.host, w.secret)
		case w.propagation != nil && (m.MountPropagation == nil || *m.MountPropagation != *w.propagation):
			t.Errorf("agent mount %s: propagation %v, want %v", w.path, m.MountPropagation, *w.propagation)
		}
	}
	if !strings.HasPrefix(CNISocket, RunDir+"/") {
		t.Errorf("CNI socket %s is not on the node-shared %s", CNISocket, RunDir)
	}
	ic := spec.InitContainers[0]
	initMounts := mounts(ic.VolumeMounts)
	if hostPath(initMounts["/host/opt/cni/bin"]) != "/opt/cni/bin" || hostPath(initMounts["/host/etc/cni/net.d"]) != "/etc/cni/net.d" {
		t.Errorf("install-cni mounts %v: want the node's /opt/cni/bin and /etc/cni/net.d", ic.VolumeMounts)
	}
	if !slices.Equal(ic.Command[:2], []string{"/usr/local/bin/meshbed-cni", "install"}) || !slices.Contains(ic.Command, "--socket="+CNISocket) {
		t.Errorf("install-cni command %q", ic.Command)
	}
}

func TestAPIServer(t *testing.T) {
	objs := mustObjects(t, cluster1)
	var dep appsv1.Deployment
	decodeStrict(t, find(t, objs, "Deployment", APIServerName), &dep)
	spec := dep.Spec.Template.Spec
	if !spec.HostNetwork || spec.ServiceAccountName != APIServerName {
		t.Errorf("host network %v, service account %q", spec.HostNetwork, spec.ServiceAccountName)
	}
	c := spec.Containers[0]
	for _, arg := range []string{"--cluster-name=cluster1", "--cluster-id=1", "--tls-dir=" + APIServerTLSDir,
		"--clustermesh-config=" + KVStoreMeshDir, "--listen=0.0.0.0:2391"} {
		if !slices.Contains(c.Args, arg) {
			t.Errorf("apiserver args %q lack %q", c.Args, arg)
		}
	}
	secrets := map[string]string{}
	for _, v := range spec.Volumes {
		if v.Secret != nil {
			secrets[v.Name] = v.Secret.SecretName
		}
	}
	for _, m := range c.VolumeMounts {
		delete(secrets, m.Name)
	}
	if len(secrets) != 0 {
		t.Errorf("secret volumes not mounted: %v", secrets)
	}
	var svc corev1.Service
	decodeStrict(t, find(t, objs, "Service", APIServerName), &svc)
	if svc.Spec.Type != corev1.ServiceTypeNodePort || len(svc.Spec.Ports) != 1 ||
		svc.Spec.Ports[0].Port != APIServerPort || svc.Spec.Ports[0].NodePort != APIServerNodePort ||
		svc.Spec.Ports[0].TargetPort.StrVal != c.Ports[0].Name || c.Ports[0].ContainerPort != APIServerListenPort {
		t.Errorf("service %+v does not reach container port %+v", svc.Spec, c.Ports)
	}
	for k, v := range svc.Spec.Selector {
		if dep.Spec.Template.Labels[k] != v {
			t.Errorf("service selector %s=%s does not select the apiserver pods %v", k, v, dep.Spec.Template.Labels)
		}
	}
}

func TestValuesValidation(t *testing.T) {
	for _, tc := range []struct {
		name string
		v    Values
		want string // in the error
	}{
		{"no name", Values{ClusterID: 1}, "cluster name"},
		{"bad name", Values{ClusterName: "Cluster_1", ClusterID: 1}, "cluster name"},
		{"id zero", Values{ClusterName: "c1"}, "cluster ID"},
		{"id too large", Values{ClusterName: "c1", ClusterID: 256}, "cluster ID"},
		{"id 511 needs 511", Values{ClusterName: "c1", ClusterID: 300, MaxConnectedClusters: 300}, "max connected clusters"},
		{"image with quote", Values{ClusterName: "c1", ClusterID: 1, Image: `x"y`}, "image"},
		{"unknown encryption", Values{ClusterName: "c1", ClusterID: 1, Encryption: "ipsec"}, `encryption "ipsec"`},
		{"strict without wireguard", Values{ClusterName: "c1", ClusterID: 1, EncryptionStrict: true}, "strict encryption"},
		{"image with newline", Values{ClusterName: "c1", ClusterID: 1, Image: "x\n- y"}, "image"},
		{"pull policy", Values{ClusterName: "c1", ClusterID: 1, ImagePullPolicy: "Sometimes"}, "image pull policy"},
		{"log level", Values{ClusterName: "c1", ClusterID: 1, LogLevel: "trace"}, "log level"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Render(tc.v)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Render(%+v) = %v, want an error about %s", tc.v, err, tc.want)
			}
		})
	}
	for _, img := range []string{"meshbed/meshbed:dev", "localhost:5000/meshbed:1", "ghcr.io/a/b/c:v1.2.3-rc.1",
		"registry.k8s.io/x@sha256:" + strings.Repeat("a", 64)} {
		if _, err := Render(Values{ClusterName: "c1", ClusterID: 1, Image: img}); err != nil {
			t.Errorf("image %q rejected: %v", img, err)
		}
	}
	if _, err := Render(Values{ClusterName: "c1", ClusterID: 300, MaxConnectedClusters: 511}); err != nil {
		t.Errorf("ID 300 of 511: %v", err)
	}
}

// FuzzRender: whatever values are accepted render into manifests that
// decode and carry exactly those values (no injection through a value).
func FuzzRender(f *testing.F) {
	f.Add("cluster1", uint32(1), uint32(0), "meshbed/meshbed:dev", "", "")
	f.Add("c-2", uint32(300), uint32(511), "localhost:5000/a:b", "Never", "debug")
	f.Add("x", uint32(7), uint32(255), "a\nkind: Secret", "IfNotPresent", "info")
	f.Fuzz(func(t *testing.T, name string, id, maxc uint32, image, pull, level string) {
		v := Values{ClusterName: name, ClusterID: id, MaxConnectedClusters: maxc, Image: image, ImagePullPolicy: pull, LogLevel: level}
		objs, err := Objects(v)
		if err != nil {
			return
		}
		cm := find(t, objs, "ConfigMap", ConfigMapName)
		if got, _, _ := unstructured.NestedString(cm.Object, "data", KeyClusterName); got != name {
			t.Errorf("cluster name %q rendered as %q", name, got)
		}
		if len(objs) != 19 {
			t.Errorf("%d objects, want 19", len(objs))
		}
		var ds appsv1.DaemonSet
		decodeStrict(t, find(t, objs, "DaemonSet", AgentName), &ds)
		if image != "" && ds.Spec.Template.Spec.Containers[0].Image != image {
			t.Errorf("image %q rendered as %q", image, ds.Spec.Template.Spec.Containers[0].Image)
		}
	})
}

// TestKindConfigs decodes the cluster configs with Kind's own v1alpha4
// types, strictly, and checks what the mesh needs of them.
func TestKindConfigs(t *testing.T) {
	want := []struct {
		file, name, pods, services string
	}{
		// Not the simulator's (10.10-10.21/16), so both can run at once.
		{"cluster1.yaml", "c1", "10.110.0.0/16", "10.111.0.0/16"},
		{"cluster2.yaml", "c2", "10.120.0.0/16", "10.121.0.0/16"},
	}
	var all []netip.Prefix
	for _, w := range want {
		t.Run(w.file, func(t *testing.T) {
			data, err := os.ReadFile(w.file)
			if err != nil {
				t.Fatal(err)
			}
			c, err := DecodeClusterConfig(data)
			if err != nil {
				t.Fatalf("%s: %v", w.file, err)
			}
			if c.APIVersion != "kind.x-k8s.io/v1alpha4" || c.Kind != "Cluster" {
				t.Errorf("%s/%s, want kind.x-k8s.io/v1alpha4 Cluster", c.APIVersion, c.Kind)
			}
			if c.Name != w.name {
				t.Errorf("name %q, want %q (the README's contexts are kind-%s)", c.Name, w.name, w.name)
			}
			if !c.Networking.DisableDefaultCNI {
				t.Error("the default CNI is not disabled")
			}
			if c.Networking.PodSubnet != w.pods || c.Networking.ServiceSubnet != w.services {
				t.Errorf("pod/service subnets %s %s, want %s %s", c.Networking.PodSubnet, c.Networking.ServiceSubnet, w.pods, w.services)
			}
			var roles []kindv1alpha4.NodeRole
			for _, n := range c.Nodes {
				roles = append(roles, n.Role)
			}
			if !slices.Equal(roles, []kindv1alpha4.NodeRole{kindv1alpha4.ControlPlaneRole, kindv1alpha4.WorkerRole}) {
				t.Errorf("nodes %v, want one control-plane and one worker", roles)
			}
			for _, s := range []string{c.Networking.PodSubnet, c.Networking.ServiceSubnet} {
				p, err := netip.ParsePrefix(s)
				if err != nil {
					t.Fatal(err)
				}
				all = append(all, p)
			}
		})
	}
	for i, a := range all {
		for _, b := range all[i+1:] {
			if a.Overlaps(b) {
				t.Errorf("%s overlaps %s", a, b)
			}
		}
	}
}

func TestEncryptionArgs(t *testing.T) {
	for _, tc := range []struct {
		v    Values
		want []string
		not  []string
	}{
		{Values{ClusterName: "c1", ClusterID: 1}, []string{"--encryption=none"}, []string{"--encryption-strict"}},
		{Values{ClusterName: "c1", ClusterID: 1, Encryption: "wireguard", EncryptionStrict: true}, []string{"--encryption=wireguard", "--encryption-strict"}, nil},
	} {
		y, err := Render(tc.v)
		if err != nil {
			t.Fatal(err)
		}
		for _, w := range tc.want {
			if !strings.Contains(string(y), "- "+w+"\n") {
				t.Errorf("%+v: the agent has no %s", tc.v, w)
			}
		}
		for _, w := range tc.not {
			if strings.Contains(string(y), w) {
				t.Errorf("%+v: the agent has %s", tc.v, w)
			}
		}
	}
}

// TestKVStoreMesh: kvstoremesh is a Deployment of its own that reaches the
// apiserver at its node's address and the apiserver's node port with its
// own pair, and mounts nothing of the apiserver's Secret; the apiserver
// runs no kvstoremesh of its own.
func TestKVStoreMesh(t *testing.T) {
	objs := mustObjects(t, cluster1)
	var api appsv1.Deployment
	decodeStrict(t, find(t, objs, "Deployment", APIServerName), &api)
	if !slices.Contains(api.Spec.Template.Spec.Containers[0].Args, "--kvstoremesh=false") {
		t.Errorf("apiserver args %q: want --kvstoremesh=false", api.Spec.Template.Spec.Containers[0].Args)
	}
	var dep appsv1.Deployment
	decodeStrict(t, find(t, objs, "Deployment", KVStoreMeshName), &dep)
	spec := dep.Spec.Template.Spec
	if !spec.HostNetwork {
		t.Error("kvstoremesh is not on the host network")
	}
	c := spec.Containers[0]
	for _, arg := range []string{"kvstoremesh", "--cluster-name=cluster1", "--cluster-id=1", "--tls-dir=" + KVStoreMeshTLSDir,
		"--clustermesh-config=" + KVStoreMeshDir, fmt.Sprintf("--local-endpoint=https://$(HOST_IP):%d", APIServerNodePort)} {
		if !slices.Contains(c.Args, arg) {
			t.Errorf("kvstoremesh args %q lack %q", c.Args, arg)
		}
	}
	if len(c.Env) != 1 || c.Env[0].Name != "HOST_IP" || c.Env[0].ValueFrom == nil || c.Env[0].ValueFrom.FieldRef.FieldPath != "status.hostIP" {
		t.Errorf("env %+v: want HOST_IP from status.hostIP", c.Env)
	}
	mounted := map[string]bool{}
	for _, m := range c.VolumeMounts {
		mounted[m.Name] = true
	}
	for _, v := range spec.Volumes {
		if !mounted[v.Name] {
			t.Errorf("volume %s not mounted", v.Name)
		}
		if v.Secret != nil && v.Secret.SecretName == SecretAPIServerTLS {
			t.Errorf("kvstoremesh mounts %s", SecretAPIServerTLS)
		}
	}
}
