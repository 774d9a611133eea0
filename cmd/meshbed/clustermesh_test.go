package main

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	dynamicfake "k8s.io/client-go/dynamic/fake"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/meshbed/meshbed/internal/testenv"
	"github.com/meshbed/meshbed/kind"
	"github.com/meshbed/meshbed/mesh/apiserver"
	"github.com/meshbed/meshbed/mesh/clustermesh"
	"github.com/meshbed/meshbed/mesh/etcdtest"
	"github.com/meshbed/meshbed/mesh/identity"
	"github.com/meshbed/meshbed/mesh/kvstore"
	"github.com/meshbed/meshbed/mesh/pki"
	"github.com/meshbed/meshbed/mesh/remote"
	"github.com/meshbed/meshbed/mesh/wire"
)

// testCluster is an in-memory cluster as `meshbed install` leaves it: the
// typed objects of the rendered manifests, the Service's cluster IP and node
// port assigned, and nodes.
type testCluster struct {
	kube      *fake.Clientset
	clusterIP string
	nodeIPs   []string
}

func newTestCluster(t *testing.T, name string, id uint32, clusterIP string, nodeIPs ...string) *testCluster {
	t.Helper()
	objs, err := kind.Objects(kind.Values{ClusterName: name, ClusterID: id})
	if err != nil {
		t.Fatal(err)
	}
	var typed []runtime.Object
	for _, o := range objs {
		var into runtime.Object
		switch o.GetKind() {
		case "ConfigMap":
			into = &corev1.ConfigMap{}
		case "Secret":
			into = &corev1.Secret{}
		case "Service":
			into = &corev1.Service{}
		case "Deployment":
			into = &appsv1.Deployment{}
		case "DaemonSet":
			into = &appsv1.DaemonSet{}
		default:
			continue
		}
		if err := runtime.DefaultUnstructuredConverter.FromUnstructured(o.Object, into); err != nil {
			t.Fatal(err)
		}
		if svc, ok := into.(*corev1.Service); ok {
			svc.Spec.ClusterIP, svc.Spec.ClusterIPs = clusterIP, []string{clusterIP}
		}
		typed = append(typed, into)
	}
	for i, ip := range nodeIPs {
		typed = append(typed, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("%s-node-%d", name, i)},
			Status: corev1.NodeStatus{Addresses: []corev1.NodeAddress{
				{Type: corev1.NodeHostName, Address: fmt.Sprintf("%s-node-%d", name, i)},
				{Type: corev1.NodeInternalIP, Address: ip}}}})
	}
	return &testCluster{kube: fake.NewClientset(typed...), clusterIP: clusterIP, nodeIPs: nodeIPs}
}

func (c *testCluster) secret(t *testing.T, name string) map[string][]byte {
	t.Helper()
	s, err := c.kube.CoreV1().Secrets(kind.Namespace).Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return s.Data
}

func (c *testCluster) tlsHash(t *testing.T) string {
	t.Helper()
	d, err := c.kube.AppsV1().Deployments(kind.Namespace).Get(context.Background(), kind.APIServerName, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return d.Spec.Template.Annotations[kind.TLSHashAnnotation]
}

func factoryOf(clusters map[string]*testCluster) clustermesh.ClientFactory {
	return func(_, kctx string) (*clustermesh.Clients, error) {
		c, ok := clusters[kctx]
		if !ok {
			return nil, fmt.Errorf("context %q does not exist", kctx)
		}
		return &clustermesh.Clients{Kube: c.kube}, nil
	}
}

// writeDir writes a Secret's data as the kubelet mounts it.
func writeDir(t *testing.T, data map[string][]byte) pki.Dir {
	t.Helper()
	dir := t.TempDir()
	for k, v := range data {
		if err := os.WriteFile(filepath.Join(dir, k), v, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return pki.Dir(dir)
}

func TestEnable(t *testing.T) {
	c1 := newTestCluster(t, "cluster1", 1, "10.11.0.50", "172.18.0.3", "172.18.0.2")
	factory := factoryOf(map[string]*testCluster{"kind-c1": c1})
	caDir := filepath.Join(t.TempDir(), "ca")

	if _, err := runCLI(t, factory, "clustermesh", "enable", "--context", "kind-c1", "--ca-dir", caDir); err == nil || !strings.Contains(err.Error(), "--create-ca") {
		t.Fatalf("enable without a CA: %v, want advice to pass --create-ca", err)
	}
	out, err := runCLI(t, factory, "clustermesh", "enable", "--context", "kind-c1", "--ca-dir", caDir, "--create-ca")
	if err != nil {
		t.Fatal(err)
	}
	ca, err := pki.Dir(caDir).LoadCA()
	if err != nil || ca.Key == nil {
		t.Fatalf("CA in %s: %v", caDir, err)
	}

	// The mesh-apiserver's Secret passes the mesh-apiserver's own checks
	// (cmd/meshbed-apiserver validates --tls-dir the same way).
	srv := c1.secret(t, kind.SecretAPIServerTLS)
	if got := slices.Sorted(maps.Keys(srv)); !slices.Equal(got, []string{"admin.crt", "admin.key", "ca.crt", "server.crt", "server.key"}) {
		t.Errorf("%s holds %v", kind.SecretAPIServerTLS, got)
	}
	d := writeDir(t, srv)
	if _, err := d.LoadCA(); err != nil {
		t.Error(err)
	}
	if err := d.Verify(pki.ServerName, x509.ExtKeyUsageServerAuth); err != nil {
		t.Error(err)
	}
	if err := d.Verify(pki.AdminPair, x509.ExtKeyUsageClientAuth); err != nil {
		t.Error(err)
	}
	if admin, err := d.LoadCert(pki.AdminPair); err != nil || admin.Leaf.Subject.CommonName != "admin-cluster1" {
		t.Errorf("admin pair: %v, want user admin-cluster1", err)
	}
	server, err := d.LoadCert(pki.ServerName)
	if err != nil {
		t.Fatal(err)
	}
	for _, host := range []string{"172.18.0.2", "172.18.0.3", "10.11.0.50", "127.0.0.1", "localhost"} {
		if err := server.Leaf.VerifyHostname(host); err != nil {
			t.Errorf("server certificate not valid for %s (dialled by %s): %v", host,
				map[bool]string{true: "other clusters or agents", false: "the mesh-apiserver itself"}[strings.HasPrefix(host, "1") && host != "127.0.0.1"], err)
		}
	}

	for _, w := range []struct{ secret, pair, cn string }{
		{kind.SecretAgentTLS, kind.AgentPair, "local-cluster1"},
		{kind.SecretKVStoreMeshTLS, kind.RemotePair, "remote-cluster1"},
	} {
		data := c1.secret(t, w.secret)
		if _, ok := data["ca.key"]; ok {
			t.Errorf("%s holds the CA key", w.secret)
		}
		d := writeDir(t, data)
		if err := d.Verify(w.pair, x509.ExtKeyUsageClientAuth); err != nil {
			t.Errorf("%s: %v", w.secret, err)
		}
		if p, err := d.LoadCert(w.pair); err != nil || p.Leaf.Subject.CommonName != w.cn {
			t.Errorf("%s: pair %s for user %v, want %s (%v)", w.secret, w.pair, p, w.cn, err)
		}
	}
	hash := c1.tlsHash(t)
	if hash == "" || hash != clustermesh.HashData(srv) {
		t.Errorf("mesh-apiserver TLS hash %q, want the Secret's %q", hash, clustermesh.HashData(srv))
	}
	if !strings.Contains(out, "restarted") {
		t.Errorf("output does not say the mesh-apiserver restarts:\n%s", out)
	}

	// Enabling again changes nothing (no restart of the mesh-apiserver).
	out, err = runCLI(t, factory, "clustermesh", "enable", "--context", "kind-c1", "--ca-dir", caDir)
	if err != nil {
		t.Fatal(err)
	}
	if c1.tlsHash(t) != hash || strings.Contains(out, "written") || strings.Contains(out, "restarted") {
		t.Errorf("second enable changed something:\n%s", out)
	}

	// A new node gets a new server certificate (other clusters dial it).
	if _, err := c1.kube.CoreV1().Nodes().Create(t.Context(), &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n3"},
		Status: corev1.NodeStatus{Addresses: []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: "172.18.0.9"}}}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := runCLI(t, factory, "clustermesh", "enable", "--context", "kind-c1", "--ca-dir", caDir); err != nil {
		t.Fatal(err)
	}
	if c1.tlsHash(t) == hash {
		t.Error("a new node did not renew the server certificate")
	}
}

func TestEnableErrors(t *testing.T) {
	empty := &testCluster{kube: fake.NewClientset()}
	factory := factoryOf(map[string]*testCluster{"empty": empty})
	caDir := t.TempDir()
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"no context", []string{"clustermesh", "enable"}, "--context is required"},
		{"unknown context", []string{"clustermesh", "enable", "--context", "nope", "--ca-dir", caDir, "--create-ca"}, `"nope" does not exist`},
		{"not installed", []string{"clustermesh", "enable", "--context", "empty", "--ca-dir", caDir, "--create-ca"}, "meshbed install"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := runCLI(t, factory, tc.args...); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %v, want it to mention %q", err, tc.want)
			}
		})
	}
}

// enabledPair returns two installed and enabled clusters.
func enabledPair(t *testing.T) (c1, c2 *testCluster, factory clustermesh.ClientFactory) {
	t.Helper()
	c1 = newTestCluster(t, "cluster1", 1, "10.11.0.50", "172.18.0.2", "172.18.0.3")
	c2 = newTestCluster(t, "cluster2", 2, "10.21.0.60", "172.18.0.4", "172.18.0.5")
	factory = factoryOf(map[string]*testCluster{"kind-c1": c1, "kind-c2": c2})
	caDir := t.TempDir()
	for _, args := range [][]string{
		{"clustermesh", "enable", "--context", "kind-c1", "--ca-dir", caDir, "--create-ca"},
		{"clustermesh", "enable", "--context", "kind-c2", "--ca-dir", caDir},
	} {
		if _, err := runCLI(t, factory, args...); err != nil {
			t.Fatal(err)
		}
	}
	return c1, c2, factory
}

// mountOf is the directory where the pods of workload mount secret.
func mountOf(t *testing.T, c *testCluster, secret string) string {
	t.Helper()
	var spec corev1.PodSpec
	for _, name := range []string{kind.APIServerName, kind.KVStoreMeshName} {
		if dep, err := c.kube.AppsV1().Deployments(kind.Namespace).Get(t.Context(), name, metav1.GetOptions{}); err == nil {
			spec.Volumes = append(spec.Volumes, dep.Spec.Template.Spec.Volumes...)
			spec.Containers = append(spec.Containers, dep.Spec.Template.Spec.Containers...)
		}
	}
	if ds, err := c.kube.AppsV1().DaemonSets(kind.Namespace).Get(t.Context(), kind.AgentName, metav1.GetOptions{}); err == nil {
		spec.Volumes = append(spec.Volumes, ds.Spec.Template.Spec.Volumes...)
		spec.Containers = append(spec.Containers, ds.Spec.Template.Spec.Containers...)
	}
	for _, v := range spec.Volumes {
		if v.Secret == nil || v.Secret.SecretName != secret {
			continue
		}
		for _, c := range spec.Containers {
			for _, m := range c.VolumeMounts {
				if m.Name == v.Name {
					return m.MountPath
				}
			}
		}
	}
	t.Fatalf("no pod mounts Secret %s", secret)
	return ""
}

func TestConnect(t *testing.T) {
	c1, c2, factory := enabledPair(t)
	out, err := runCLI(t, factory, "clustermesh", "connect", "--context", "kind-c1", "--destination-context", "kind-c2")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		local, other *testCluster
		otherName    string
	}{{c1, c2, "cluster2"}, {c2, c1, "cluster1"}} {
		t.Run(tc.otherName, func(t *testing.T) {
			check := func(secret string, wantEndpoints []string, tlsSecret, pair string) {
				t.Helper()
				files := tc.local.secret(t, secret)
				if len(files) != 1 {
					t.Errorf("%s holds %d files, want 1", secret, len(files))
				}
				ec, err := remote.ParseEtcdConfig(files[tc.otherName])
				if err != nil {
					t.Fatalf("%s/%s: %v", secret, tc.otherName, err)
				}
				if !slices.Equal(ec.Endpoints, wantEndpoints) {
					t.Errorf("%s/%s endpoints %v, want %v", secret, tc.otherName, ec.Endpoints, wantEndpoints)
				}
				// Every file it names is where the pod mounts tlsSecret,
				// under a key that Secret holds.
				dir := mountOf(t, tc.local, tlsSecret)
				tlsData := tc.local.secret(t, tlsSecret)
				for _, f := range []string{ec.TrustedCAFile, ec.CertFile, ec.KeyFile} {
					if filepath.Dir(f) != dir || tlsData[filepath.Base(f)] == nil {
						t.Errorf("%s/%s names %s, which is not in Secret %s mounted at %s", secret, tc.otherName, f, tlsSecret, dir)
					}
				}
				if filepath.Base(ec.CertFile) != pair+".crt" {
					t.Errorf("%s/%s uses pair %s, want %s", secret, tc.otherName, ec.CertFile, pair)
				}
			}
			var remoteEndpoints []string
			for _, ip := range tc.other.nodeIPs {
				remoteEndpoints = append(remoteEndpoints, fmt.Sprintf("https://%s:%d", ip, kind.APIServerNodePort))
			}
			check(kind.SecretKVStoreMesh, remoteEndpoints, kind.SecretKVStoreMeshTLS, kind.RemotePair)
			check(kind.SecretClusterMesh, []string{fmt.Sprintf("https://%s:%d", tc.local.clusterIP, kind.APIServerPort)}, kind.SecretAgentTLS, kind.AgentPair)
		})
	}
	want := "endpoints:\n- https://172.18.0.4:32379\n- https://172.18.0.5:32379\nkey-file: /var/lib/meshbed/kvstoremesh-tls/remote.key\n" +
		"cert-file: /var/lib/meshbed/kvstoremesh-tls/remote.crt\ntrusted-ca-file: /var/lib/meshbed/kvstoremesh-tls/ca.crt\n"
	if got := string(c1.secret(t, kind.SecretKVStoreMesh)["cluster2"]); !sameLines(got, want) {
		t.Errorf("cluster1's kvstoremesh file for cluster2:\n%s\nwant (in any order):\n%s", got, want)
	}
	if !strings.Contains(out, "connected cluster1 and cluster2") {
		t.Errorf("output:\n%s", out)
	}
	// Connecting again is harmless.
	if _, err := runCLI(t, factory, "clustermesh", "connect", "--context", "kind-c2", "--destination-context", "kind-c1"); err != nil {
		t.Fatal(err)
	}
	if n := len(c1.secret(t, kind.SecretClusterMesh)); n != 1 {
		t.Errorf("%d files after connecting twice", n)
	}
}

func sameLines(a, b string) bool {
	la, lb := strings.Split(strings.TrimSpace(a), "\n"), strings.Split(strings.TrimSpace(b), "\n")
	slices.Sort(la)
	slices.Sort(lb)
	return slices.Equal(la, lb)
}

func TestConnectErrors(t *testing.T) {
	_, _, factory := enabledPair(t)
	twin := newTestCluster(t, "cluster1", 1, "10.31.0.1", "172.18.0.9")
	fresh := newTestCluster(t, "cluster3", 3, "10.41.0.1", "172.18.0.10")
	otherCA := newTestCluster(t, "cluster4", 4, "10.51.0.1", "172.18.0.11")
	all := map[string]*testCluster{"twin": twin, "fresh": fresh, "other-ca": otherCA}
	combined := func(_, kctx string) (*clustermesh.Clients, error) {
		if c, ok := all[kctx]; ok {
			return &clustermesh.Clients{Kube: c.kube}, nil
		}
		return factory("", kctx)
	}
	for _, kctx := range []string{"twin", "other-ca"} {
		if _, err := runCLI(t, combined, "clustermesh", "enable", "--context", kctx, "--ca-dir", t.TempDir(), "--create-ca"); err != nil {
			t.Fatal(err)
		}
	}
	for _, tc := range []struct {
		name string
		args []string
		want []string
	}{
		{"no destination", []string{"--context", "kind-c1"}, []string{"--destination-context is required"}},
		{"same context", []string{"--context", "kind-c1", "--destination-context", "kind-c1"}, []string{"--destination-context", "same as --context"}},
		{"same name and ID", []string{"--context", "kind-c1", "--destination-context", "twin"}, []string{"same name", "same ID 1", "cluster cluster1 (context kind-c1)", "cluster cluster1 (context twin)"}},
		{"not enabled", []string{"--context", "kind-c1", "--destination-context", "fresh"}, []string{"cluster cluster3 (context fresh) is not enabled"}},
		{"different CAs", []string{"--context", "kind-c1", "--destination-context", "other-ca"}, []string{"different mesh CAs"}},
		{"unknown context", []string{"--context", "kind-c1", "--destination-context", "nope"}, []string{"--destination-context", `"nope"`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := runCLI(t, combined, append([]string{"clustermesh", "connect"}, tc.args...)...)
			for _, w := range tc.want {
				if err == nil || !strings.Contains(err.Error(), w) {
					t.Errorf("error %v, want it to mention %q", err, w)
				}
			}
		})
	}
}

// setReady sets the workloads' status as the controllers would.
func setReady(t *testing.T, c *testCluster, agents, desired int32) {
	t.Helper()
	ds, err := c.kube.AppsV1().DaemonSets(kind.Namespace).Get(t.Context(), kind.AgentName, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ds.Status.DesiredNumberScheduled, ds.Status.NumberReady = desired, agents
	if _, err := c.kube.AppsV1().DaemonSets(kind.Namespace).UpdateStatus(t.Context(), ds, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{kind.APIServerName, kind.KVStoreMeshName} {
		dep, err := c.kube.AppsV1().Deployments(kind.Namespace).Get(t.Context(), name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		dep.Status.ReadyReplicas, dep.Status.UpdatedReplicas = 1, 1
		if _, err := c.kube.AppsV1().Deployments(kind.Namespace).UpdateStatus(t.Context(), dep, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
}

func TestStatus(t *testing.T) {
	c1, _, factory := enabledPair(t)
	syncedAfter := 0 // probe calls before cluster2 is synced
	calls := 0
	probe := func(_ context.Context, c *clustermesh.Cluster, remotes []string) (map[string]clustermesh.RemoteSync, error) {
		calls++
		if c.Name() != "cluster1" || !slices.Equal(remotes, []string{"cluster2"}) {
			return nil, fmt.Errorf("probe of %s for %v", c.Name(), remotes)
		}
		return map[string]clustermesh.RemoteSync{"cluster2": {ID: 2, Synced: calls > syncedAfter}}, nil
	}
	status := func(wait bool) (string, error) {
		var out strings.Builder
		err := clustermesh.Status(t.Context(), &out, factory, probe, clustermesh.StatusOptions{Context: "kind-c1", Wait: wait, WaitTimeout: 5e9, Interval: 1e6})
		return out.String(), err
	}
	notReady := func(out string, err error, want string) {
		t.Helper()
		if !errors.Is(err, clustermesh.ErrNotReady) || !strings.Contains(out, want) {
			t.Errorf("status: %v, output:\n%s\nwant exit 1 and %q", err, out, want)
		}
	}

	out, err := status(false)
	notReady(out, err, "agents: 0 of 0 ready")
	setReady(t, c1, 1, 2)
	out, err = status(false)
	notReady(out, err, "agents: 1 of 2 ready")
	setReady(t, c1, 2, 2)
	out, err = status(false)
	if err != nil || !strings.Contains(out, "remote clusters:  none") {
		t.Errorf("ready but unconnected cluster: %v\n%s", err, out)
	}

	if _, err := runCLI(t, factory, "clustermesh", "connect", "--context", "kind-c1", "--destination-context", "kind-c2"); err != nil {
		t.Fatal(err)
	}
	calls, syncedAfter = 0, 3
	out, err = status(false)
	notReady(out, err, "cluster2: not synced by kvstoremesh yet")
	calls = 0
	out, err = status(true)
	if err != nil || calls != syncedAfter+1 || !strings.Contains(out, "remote cluster2:  configured, synced (ID 2)") || !strings.Contains(out, "status:           ready") {
		t.Errorf("status --wait after %d probes: %v\n%s", calls, err, out)
	}

	// A failing probe is a problem, reported with its reason.
	failing := func(context.Context, *clustermesh.Cluster, []string) (map[string]clustermesh.RemoteSync, error) {
		return nil, errors.New("connection refused")
	}
	var b strings.Builder
	err = clustermesh.Status(t.Context(), &b, factory, failing, clustermesh.StatusOptions{Context: "kind-c1", WaitTimeout: 1})
	notReady(b.String(), err, "mesh-apiserver: connection refused")
}

// TestProbeKVStore reads what kvstoremesh writes from a real etcd.
func TestProbeKVStore(t *testing.T) {
	srv := etcdtest.Start(t)
	cc, _ := json.Marshal(wire.ClusterConfig{ID: 2, Capabilities: wire.Capabilities{SyncedCanaries: true, Cached: true, MaxConnectedClusters: 255}})
	for k, v := range map[string]string{
		wire.ClusterConfigKey("cluster2"):                string(cc),
		wire.CanaryKey(wire.Services, "cluster2", true):  "2026-01-01T00:00:00Z",
		wire.ClusterConfigKey("cluster3"):                `{"id":3,"capabilities":{"cached":true}}`,
		wire.CanaryKey(wire.Services, "cluster3", false): "not the cache's canary",
	} {
		if _, err := srv.Client().Put(t.Context(), k, v); err != nil {
			t.Fatal(err)
		}
	}
	got, err := clustermesh.ProbeKVStore(t.Context(), kvstore.Config{Endpoints: srv.Endpoints()}, []string{"cluster2", "cluster3", "cluster4"})
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]clustermesh.RemoteSync{"cluster2": {ID: 2, Synced: true}, "cluster3": {ID: 3}, "cluster4": {}}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("probe = %v, want %v", got, want)
	}

	if _, err := srv.Client().Put(t.Context(), wire.ClusterConfigKey("cluster5"), `{"id":`); err != nil {
		t.Fatal(err)
	}
	if _, err := clustermesh.ProbeKVStore(t.Context(), kvstore.Config{Endpoints: srv.Endpoints()}, []string{"cluster5"}); err == nil {
		t.Error("a malformed cluster-config was accepted")
	}
}

// clientFromFile builds the etcd client config a pod gets from a file that
// connect wrote, with the TLS files it names read from tlsData (the Secret
// mounted at their directory) and the endpoints replaced (the test's
// mesh-apiserver listens on loopback, which the server certificate covers).
func clientFromFile(t *testing.T, file []byte, tlsData map[string][]byte, endpoints []string) kvstore.Config {
	t.Helper()
	ec, err := remote.ParseEtcdConfig(file)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(tlsData[filepath.Base(ec.TrustedCAFile)]) {
		t.Fatalf("no CA in %s", ec.TrustedCAFile)
	}
	pair, err := pki.ParsePair(tlsData[filepath.Base(ec.CertFile)], tlsData[filepath.Base(ec.KeyFile)])
	if err != nil {
		t.Fatal(err)
	}
	return kvstore.Config{Endpoints: endpoints, TLS: pki.ClientTLSConfig(roots, pair, ""), DialTimeout: 5 * time.Second}
}

// TestIntegrationCertificatesWorkWithAPIServer runs cluster1's real
// mesh-apiserver with the certificates enable stored and the remote readers
// connect configured, and reads from it with the files connect wrote: as
// cluster2's kvstoremesh, and as cluster1's agents.
func TestIntegrationCertificatesWorkWithAPIServer(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a mesh-apiserver (embedded etcd)")
	}
	c1, c2, factory := enabledPair(t)
	if _, err := runCLI(t, factory, "clustermesh", "connect", "--context", "kind-c1", "--destination-context", "kind-c2"); err != nil {
		t.Fatal(err)
	}
	readers := slices.Sorted(maps.Keys(c1.secret(t, kind.SecretKVStoreMesh))) // as cmd/meshbed-apiserver derives them
	srv, err := apiserver.New(apiserver.Config{
		ClusterName: "cluster1", ClusterID: 1, Kube: fake.NewClientset(),
		Dynamic:       dynamicfake.NewSimpleDynamicClientWithCustomListKinds(runtime.NewScheme(), identity.ListKinds()),
		ListenAddress: "127.0.0.1:0", TLSDir: writeDir(t, c1.secret(t, kind.SecretAPIServerTLS)),
		RemoteClusters: readers, TickMs: 10, ElectionMs: 50,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	if err := srv.Start(ctx); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
		srv.Close()
	})
	<-srv.Synced()

	for _, tc := range []struct {
		name string
		cfg  kvstore.Config
	}{
		{"cluster2's kvstoremesh", clientFromFile(t, c2.secret(t, kind.SecretKVStoreMesh)["cluster1"], c2.secret(t, kind.SecretKVStoreMeshTLS), srv.Endpoints())},
		{"cluster1's agents", clientFromFile(t, c1.secret(t, kind.SecretClusterMesh)["cluster2"], c1.secret(t, kind.SecretAgentTLS), srv.Endpoints())},
	} {
		t.Run(tc.name, func(t *testing.T) {
			kv, err := kvstore.Connect(t.Context(), tc.cfg)
			if err != nil {
				t.Fatal(err)
			}
			defer kv.Close()
			// The apiserver writes its cluster-config once it runs; Synced
			// does not wait for that write.
			var v []byte
			testenv.Eventually(t, 10*time.Second, func() error {
				var found bool
				var err error
				if v, found, err = kv.Get(t.Context(), wire.ClusterConfigKey("cluster1")); err != nil || !found {
					return fmt.Errorf("read cluster1's cluster-config: found %v, %v", found, err)
				}
				return nil
			})
			if cc, err := wire.DecodeClusterConfig(wire.ClusterConfigKey("cluster1"), v, "cluster1"); err != nil || cc.ID != 1 {
				t.Errorf("cluster-config %s: %v", v, err)
			}
			if err := kv.Put(t.Context(), "cilium/state/nodes/v1/cluster1/intruder", []byte("{}")); err == nil {
				t.Error("a reader could write")
			}
		})
	}

	// cluster1's kvstoremesh in its own process (its own Deployment on
	// Kind), with the pair enable issued into its Secret: it writes its
	// cache on a lease, as its Writer does, and nothing of the state.
	t.Run("cluster1's kvstoremesh", func(t *testing.T) {
		cfg, err := apiserver.ClientConfig(writeDir(t, c1.secret(t, kind.SecretKVStoreMeshTLS)), pki.KVStoreMeshPair, srv.Endpoints()[0])
		if err != nil {
			t.Fatal(err)
		}
		cfg.DialTimeout = 5 * time.Second
		kv, err := kvstore.Connect(t.Context(), cfg)
		if err != nil {
			t.Fatal(err)
		}
		defer kv.Close()
		lease, err := kv.Etcd().Grant(t.Context(), 60)
		if err != nil {
			t.Fatalf("grant a lease: %v", err)
		}
		for _, key := range []string{"cilium/cache/nodes/v1/cluster2/node-1", wire.SyncedRoot + "cluster2/services"} {
			if _, err := kv.Etcd().Put(t.Context(), key, "{}", clientv3.WithLease(lease.ID)); err != nil {
				t.Errorf("write %s on a lease: %v", key, err)
			}
		}
		if err := kv.Put(t.Context(), "cilium/state/nodes/v1/cluster1/intruder", []byte("{}")); err == nil {
			t.Error("kvstoremesh could write the cluster's own state")
		}
	})
}
