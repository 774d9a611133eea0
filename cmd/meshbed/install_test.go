package main

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	dynamicfake "k8s.io/client-go/dynamic/fake"

	"github.com/meshbed/meshbed/internal/cmdutil"
	"github.com/meshbed/meshbed/kind"
	"github.com/meshbed/meshbed/mesh/clustermesh"
)

// runCLI runs the meshbed command line, with factory for
// clients, and returns what they print.
func runCLI(t *testing.T, factory clustermesh.ClientFactory, args ...string) (string, error) {
	t.Helper()
	root := newRoot(factory)
	var out bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&out)
	root.SetArgs(args)
	err := root.ExecuteContext(t.Context())
	return out.String(), err
}

// noClients fails the test if a command connects to a cluster.
func noClients(t *testing.T) clustermesh.ClientFactory {
	return func(_, kctx string) (*clustermesh.Clients, error) {
		t.Errorf("connected to context %q", kctx)
		return nil, errors.New("no cluster in this test")
	}
}

func TestInstallDryRun(t *testing.T) {
	out, err := runCLI(t, noClients(t), "install", "--cluster-name", "cluster2", "--cluster-id", "2", "--image", "ghcr.io/x/meshbed:v1", "--dry-run")
	if err != nil {
		t.Fatal(err)
	}
	want, err := kind.Render(kind.Values{ClusterName: "cluster2", ClusterID: 2, Image: "ghcr.io/x/meshbed:v1"})
	if err != nil {
		t.Fatal(err)
	}
	if out != string(want) {
		t.Errorf("--dry-run printed something else than the rendered manifests:\n%s", out)
	}
}

func TestInstallFlagErrors(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		want []string // each in the error
	}{
		{"nothing", []string{"install"}, []string{"--context is required", "--cluster-name", "--cluster-id"}},
		{"bad name", []string{"install", "--context", "c", "--cluster-name", "Cluster1", "--cluster-id", "1"}, []string{"--cluster-name", "Cluster1"}},
		{"id out of range", []string{"install", "--context", "c", "--cluster-name", "c1", "--cluster-id", "256"}, []string{"--cluster-id", "256"}},
		{"max connected", []string{"install", "--context", "c", "--cluster-name", "c1", "--cluster-id", "1", "--max-connected-clusters", "100"}, []string{"--max-connected-clusters"}},
		{"image", []string{"install", "--context", "c", "--cluster-name", "c1", "--cluster-id", "1", "--image", "a b"}, []string{"--image", `"a b"`}},
		{"pull policy", []string{"install", "--dry-run", "--cluster-name", "c1", "--cluster-id", "1", "--image-pull-policy", "Sometimes"}, []string{"--image-pull-policy"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := runCLI(t, noClients(t), tc.args...)
			var ee *cmdutil.ExitError
			if !errors.As(err, &ee) || ee.Code != 2 {
				t.Fatalf("error %v, want a usage error (exit 2)", err)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %s", err, w)
				}
			}
		})
	}
}

// fakeDynamic is a dynamic client over an in-memory API.
func fakeDynamic() *dynamicfake.FakeDynamicClient {
	return dynamicfake.NewSimpleDynamicClientWithCustomListKinds(runtime.NewScheme(), nil)
}

// TestInstallApplies installs twice into an in-memory API: everything is
// created, then replaced, except what install must keep.
func TestInstallApplies(t *testing.T) {
	dyn := fakeDynamic()
	factory := func(_, kctx string) (*clustermesh.Clients, error) {
		if kctx != "kind-c1" {
			return nil, fmt.Errorf("unknown context %q", kctx)
		}
		return &clustermesh.Clients{Dynamic: dyn}, nil
	}
	args := []string{"install", "--context", "kind-c1", "--cluster-name", "cluster1", "--cluster-id", "1"}
	out, err := runCLI(t, factory, args...)
	if err != nil {
		t.Fatal(err)
	}
	objs, err := kind.Objects(kind.Values{ClusterName: "cluster1", ClusterID: 1})
	if err != nil {
		t.Fatal(err)
	}
	get := func(o *unstructured.Unstructured) *unstructured.Unstructured {
		t.Helper()
		gvr, _ := clustermesh.ResourceOf(o.GroupVersionKind())
		got, err := dyn.Resource(gvr).Namespace(o.GetNamespace()).Get(t.Context(), o.GetName(), metav1.GetOptions{})
		if err != nil {
			t.Fatalf("%s %s: %v", o.GetKind(), o.GetName(), err)
		}
		return got
	}
	for _, o := range objs {
		if !strings.Contains(out, o.GetKind()+"/"+o.GetName()+" created") {
			t.Errorf("output does not report %s/%s created:\n%s", o.GetKind(), o.GetName(), out)
		}
		got := get(o)
		if spec, _, _ := unstructured.NestedFieldNoCopy(got.Object, "spec"); fmt.Sprint(spec) != fmt.Sprint(o.Object["spec"]) {
			t.Errorf("%s %s: stored spec differs from the manifest", o.GetKind(), o.GetName())
		}
	}

	// What enable and the cluster set since.
	secretObj := find(t, objs, "Secret", kind.SecretClusterMesh)
	secret := get(secretObj)
	if err := unstructured.SetNestedField(secret.Object, map[string]any{"cluster2": "ZW5kcG9pbnRz"}, "data"); err != nil {
		t.Fatal(err)
	}
	svcObj := find(t, objs, "Service", kind.APIServerName)
	svc := get(svcObj)
	if err := unstructured.SetNestedField(svc.Object, "10.11.0.50", "spec", "clusterIP"); err != nil {
		t.Fatal(err)
	}
	depObj := find(t, objs, "Deployment", kind.APIServerName)
	dep := get(depObj)
	if err := unstructured.SetNestedField(dep.Object, "abc", "spec", "template", "metadata", "annotations", kind.TLSHashAnnotation); err != nil {
		t.Fatal(err)
	}
	for _, o := range []*unstructured.Unstructured{secret, svc, dep} {
		gvr, _ := clustermesh.ResourceOf(o.GroupVersionKind())
		if _, err := dyn.Resource(gvr).Namespace(o.GetNamespace()).Update(t.Context(), o, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
	}

	out, err = runCLI(t, factory, append(args, "--image", "meshbed/meshbed:v2")...)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, "Secret/"+kind.SecretClusterMesh+" kept") || !strings.Contains(out, "DaemonSet/"+kind.AgentName+" configured") {
		t.Errorf("second install output:\n%s", out)
	}
	if d, _, _ := unstructured.NestedString(get(secretObj).Object, "data", "cluster2"); d != "ZW5kcG9pbnRz" {
		t.Errorf("install overwrote a Secret's data (now %q)", d)
	}
	if ip, _, _ := unstructured.NestedString(get(svcObj).Object, "spec", "clusterIP"); ip != "10.11.0.50" {
		t.Errorf("install dropped the Service's cluster IP (now %q)", ip)
	}
	gotDep := get(depObj)
	if h, _, _ := unstructured.NestedString(gotDep.Object, "spec", "template", "metadata", "annotations", kind.TLSHashAnnotation); h != "abc" {
		t.Errorf("install dropped the TLS hash (now %q): the mesh-apiserver would restart", h)
	}
	containers, _, _ := unstructured.NestedSlice(gotDep.Object, "spec", "template", "spec", "containers")
	if img := containers[0].(map[string]any)["image"]; img != "meshbed/meshbed:v2" {
		t.Errorf("image %v after reinstall with a new image", img)
	}
}

func find(t *testing.T, objs []*unstructured.Unstructured, kindName, name string) *unstructured.Unstructured {
	t.Helper()
	for _, o := range objs {
		if o.GetKind() == kindName && o.GetName() == name {
			return o
		}
	}
	t.Fatalf("no %s %s", kindName, name)
	return nil
}

func TestApplyRejectsUnknownKinds(t *testing.T) {
	u := &unstructured.Unstructured{Object: map[string]any{"apiVersion": "v1", "kind": "Pod", "metadata": map[string]any{"name": "x"}}}
	if _, err := clustermesh.ApplyObject(t.Context(), fakeDynamic(), u); err == nil || !strings.Contains(err.Error(), "not supported") {
		t.Errorf("apply of a Pod: %v", err)
	}
}

// TestReadmeCommands runs every meshbed command line of kind/README.md with
// --help added: the flags it shows must exist (cobra parses them before it
// looks at --help).
func TestReadmeCommands(t *testing.T) {
	data, err := os.ReadFile(filepath.Join("..", "..", "kind", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for line := range strings.Lines(string(data)) {
		line, _, _ = strings.Cut(strings.TrimSpace(line), "#")
		fields := strings.Fields(line)
		if len(fields) < 2 || fields[0] != "bin/meshbed" {
			continue
		}
		n++
		t.Run(strings.Join(fields[1:], " "), func(t *testing.T) {
			if _, err := runCLI(t, noClients(t), append(fields[1:], "--help")...); err != nil {
				t.Errorf("%s: %v", line, err)
			}
		})
	}
	if n < 7 {
		t.Errorf("%d meshbed commands in the README, want the 7 of the walkthrough", n)
	}
}
