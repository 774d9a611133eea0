//go:build e2e

// Package e2e runs meshbed on two real Kind clusters: the steps of
// kind/README.md (create, install, enable, connect, status --wait), then the
// seed demo, each step named, with a dump of pods, events and logs when one
// fails. `make e2e` (hack/e2e.sh) builds the images and runs it:
//
//	go test -tags e2e -v -count=1 -timeout 60m ./kind/e2e/
//
// Kind is driven from Go (sigs.k8s.io/kind/pkg/cluster), the clusters through
// client-go; the meshbed CLI under test is the binary MESHBED names. No
// kubectl is needed.
//
// Environment (hack/e2e.sh sets it): NODE_IMAGE (Kind node image),
// MESHBED_IMAGE, DEMO_IMAGE (images loaded with kind load), MESHBED (CLI),
// E2E_DIR (kubeconfig, CA, dump, report), E2E_START (Unix time at which
// `make e2e` started, for the figures), KEEP=1 (keep the clusters).
package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/tools/remotecommand"
	"sigs.k8s.io/kind/pkg/cluster"
	kindcmd "sigs.k8s.io/kind/pkg/cmd"

	"github.com/meshbed/meshbed/kind"
)

// kcluster is one Kind cluster of the run.
type kcluster struct {
	kind    string // Kind's name: c1
	name    string // meshbed's cluster name: cluster1
	id      int
	context string // kind-c1
	config  string // kind/cluster1.yaml
	rest    *rest.Config
	kube    kubernetes.Interface
	dyn     dynamic.Interface
}

type run struct {
	t                                 *testing.T
	provider                          *cluster.Provider
	nodeImage, meshbedImage, demoImag string
	cli, dir, kubeconfig, caDir, repo string
	start                             time.Time
	clusters                          []*kcluster
	figures                           []string
	// encryption is what meshbed install is given: wireguard where the
	// Kind nodes' kernel (the host's) has the WireGuard module, else none.
	encryption string
}

// e2eEncryption picks the encryption of the run: $E2E_ENCRYPTION if set
// (none or wireguard), else wireguard where the kernel has the module. The
// userspace fallback would work too, but the point of the Kind run is the
// kernel path the simulator cannot take here.
func e2eEncryption(t *testing.T) string {
	if v := os.Getenv("E2E_ENCRYPTION"); v != "" {
		return v
	}
	if _, err := os.Stat("/sys/module/wireguard"); err != nil {
		t.Logf("encryption steps skipped: the Kind nodes' kernel has no WireGuard module (/sys/module/wireguard: %v); set E2E_ENCRYPTION=wireguard to run them over the userspace implementation", err)
		return "none"
	}
	return "wireguard"
}

func env(t *testing.T, key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	if def == "" {
		t.Fatalf("%s is not set (run make e2e)", key)
	}
	return def
}

func TestKindMesh(t *testing.T) {
	repo, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	r := &run{
		t:            t,
		provider:     cluster.NewProvider(cluster.ProviderWithDocker(), cluster.ProviderWithLogger(kindcmd.NewLogger())),
		nodeImage:    env(t, "NODE_IMAGE", ""),
		meshbedImage: env(t, "MESHBED_IMAGE", ""),
		demoImag:     env(t, "DEMO_IMAGE", ""),
		cli:          env(t, "MESHBED", filepath.Join(repo, "bin", "meshbed")),
		dir:          env(t, "E2E_DIR", filepath.Join(repo, "bin", "e2e")),
		start:        time.Now(),
		repo:         repo,
		encryption:   e2eEncryption(t),
	}
	if s := os.Getenv("E2E_START"); s != "" {
		if f, err := strconv.ParseFloat(s, 64); err == nil {
			r.start = time.Unix(0, int64(f*1e9))
		}
	}
	r.kubeconfig = filepath.Join(r.dir, "kubeconfig")
	r.caDir = filepath.Join(r.dir, "ca")
	for i := 1; i <= 2; i++ {
		r.clusters = append(r.clusters, &kcluster{
			kind: fmt.Sprintf("c%d", i), name: fmt.Sprintf("cluster%d", i), id: i,
			context: fmt.Sprintf("kind-c%d", i), config: filepath.Join(repo, "kind", fmt.Sprintf("cluster%d.yaml", i)),
		})
	}
	keep := os.Getenv("KEEP") == "1"
	t.Cleanup(func() {
		if keep {
			t.Logf("KEEP=1: clusters kept; KUBECONFIG=%s; delete with hack/e2e.sh down", r.kubeconfig)
			return
		}
		r.deleteClusters()
	})

	// A previous run's clusters (KEEP=1, or killed) and CA go first: every
	// run starts from nothing.
	r.step("clean up a previous run", r.cleanPrevious)
	r.step("create two Kind clusters", r.createClusters)
	r.step("load meshbed's images", r.loadImages)
	r.step("meshbed install", r.install)
	r.step("meshbed clustermesh enable", r.enable)
	r.step("agents and mesh-apiservers ready, nodes Ready", r.ready)
	r.step("meshbed clustermesh connect", r.connect)
	r.step("meshbed clustermesh status --wait", r.status)
	r.figure("seconds from make e2e start to both clusters meshed", time.Since(r.start).Seconds())
	r.step("demo workloads: rebel-base and x-wing in both clusters", r.demo)
	r.step("x-wing in cluster1 answered by rebel-base in both clusters", r.bothAnswer)
	r.step("cross-cluster pod to pod by IP", r.podToPod)
	r.step("failover: cluster1's backends scaled to zero", r.failover)
	r.step(`service.cilium.io/shared: "false" hides cluster2's backends from cluster1`, r.sharedFalse)
	r.step("CiliumNetworkPolicy: x-wing reaches only cluster2's rebel-base", r.policy)
	if r.encryption == "wireguard" {
		r.step("every node publishes a WireGuard key (kvstore and Node)", r.wireguardKeys)
	}
	r.figure("seconds from make e2e start to the demo passing", time.Since(r.start).Seconds())
	r.step("memory of the Kind node containers", r.memory)
	// The scenario files on these clusters, through the engine's Kind
	// target: the same files the simulator runs, decision events and all.
	for _, name := range []string{"failover", "partition-recovery", "shared-service", "affinity", "policy", "agent-stop"} {
		r.step("scenario "+name+" on Kind (meshbed scenario run --target kind)", func(ctx context.Context) error {
			return r.scenario(ctx, name)
		})
	}
	r.report()
}

// step runs one named step; a failure dumps the clusters and stops the test.
func (r *run) step(name string, f func(ctx context.Context) error) {
	r.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	t0 := time.Now()
	r.t.Logf("=== step: %s", name)
	if err := f(ctx); err != nil {
		dir := r.dump()
		r.t.Fatalf("FAILED step %q after %s: %v\n(dump: %s)", name, time.Since(t0).Round(time.Second), err, dir)
	}
	r.t.Logf("--- done: %s (%s)", name, time.Since(t0).Round(100*time.Millisecond))
}

func (r *run) figure(name string, v float64) {
	line := fmt.Sprintf("%-60s %10.1f", name, v)
	r.figures = append(r.figures, line)
	r.t.Log(line)
}

func (r *run) report() {
	out := strings.Join(r.figures, "\n") + "\n"
	path := filepath.Join(r.dir, "report.txt")
	if err := os.WriteFile(path, []byte(out), 0o644); err != nil {
		r.t.Errorf("write %s: %v", path, err)
	}
	fmt.Printf("\nKind e2e figures (%s):\n%s", path, out)
}

// eventually retries f until it succeeds or the deadline passes, returning
// its last error.
func eventually(ctx context.Context, d time.Duration, f func() error) error {
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	var err error
	for {
		if err = f(); err == nil {
			return nil
		}
		if errors.Is(err, errStuck) {
			return err // no wait will help: fail now, with the dump
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("after %s: %w", d, err)
		case <-time.After(time.Second):
		}
	}
}

// errStuck marks a state that waiting does not mend (a container in
// CrashLoopBackOff): eventually returns at once.
var errStuck = errors.New("stuck")

// crashLoopRestarts is how many restarts in CrashLoopBackOff make a
// container stuck rather than starting (at bring-up an agent may restart
// once or twice while its mesh-apiserver comes up).
const crashLoopRestarts = 5

// crashLooping lists the pods of the namespaces and reports the first
// container in CrashLoopBackOff that restarted crashLoopRestarts times.
func crashLooping(ctx context.Context, kube kubernetes.Interface, namespaces ...string) error {
	for _, ns := range namespaces {
		pods, err := kube.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
		if err != nil {
			return err
		}
		if err := stuckPod(pods.Items); err != nil {
			return err
		}
	}
	return nil
}

func stuckPod(pods []corev1.Pod) error {
	for _, p := range pods {
		for _, cs := range append(slices.Clone(p.Status.InitContainerStatuses), p.Status.ContainerStatuses...) {
			if w := cs.State.Waiting; w != nil && w.Reason == "CrashLoopBackOff" && cs.RestartCount >= crashLoopRestarts {
				last := ""
				if t := cs.LastTerminationState.Terminated; t != nil {
					last = fmt.Sprintf(", last exit code %d (%s)", t.ExitCode, t.Reason)
				}
				return fmt.Errorf("%w: pod %s/%s on %s: container %s in CrashLoopBackOff after %d restarts%s",
					errStuck, p.Namespace, p.Name, p.Spec.NodeName, cs.Name, cs.RestartCount, last)
			}
		}
	}
	return nil
}

func (r *run) each(f func(c *kcluster) error) error {
	errs := make([]error, len(r.clusters))
	var wg sync.WaitGroup
	for i, c := range r.clusters {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := f(c); err != nil {
				errs[i] = fmt.Errorf("%s: %w", c.kind, err)
			}
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// meshbed runs the CLI under test.
func (r *run) meshbed(ctx context.Context, args ...string) error {
	args = append(args, "--kubeconfig", r.kubeconfig)
	cmd := exec.CommandContext(ctx, r.cli, args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	r.t.Logf("$ meshbed %s\n%s", strings.Join(args, " "), strings.TrimRight(out.String(), "\n"))
	if err != nil {
		return fmt.Errorf("meshbed %s: %w", strings.Join(args, " "), err)
	}
	return nil
}

// scenario runs scenarios/NAME.yaml on the two clusters with the CLI's
// Kind target, its report in E2E_DIR/scenario-NAME.
func (r *run) scenario(ctx context.Context, name string) error {
	args := []string{"scenario", "run", filepath.Join(r.repo, "scenarios", name+".yaml"), "--target", "kind",
		"--report", filepath.Join(r.dir, "scenario-"+name), "--ca-dir", r.caDir, "--demo-image", r.demoImag}
	for _, c := range r.clusters {
		args = append(args, "--context", c.name+"="+c.context)
	}
	start := time.Now()
	if err := r.meshbed(ctx, args...); err != nil {
		return err
	}
	r.figure("seconds, scenario "+name+" on Kind", time.Since(start).Seconds())
	return nil
}

// --- clusters ---------------------------------------------------------------

func (r *run) cleanPrevious(context.Context) error {
	r.deleteClusters()
	if err := os.RemoveAll(r.dir); err != nil {
		return err
	}
	return os.MkdirAll(r.dir, 0o755)
}

func (r *run) deleteClusters() {
	existing, err := r.provider.List()
	if err != nil {
		r.t.Logf("kind: list clusters: %v", err)
		return
	}
	for _, c := range r.clusters {
		if slices.Contains(existing, c.kind) {
			if err := r.provider.Delete(c.kind, r.kubeconfig); err != nil {
				r.t.Errorf("delete cluster %s: %v", c.kind, err)
			}
		}
	}
}

func (r *run) createClusters(ctx context.Context) error {
	// Kind creates its Docker network on first use; two creations racing
	// could each try to. Create it first, the way Kind would.
	if err := exec.CommandContext(ctx, "docker", "network", "inspect", "kind").Run(); err != nil {
		out, err := exec.CommandContext(ctx, "docker", "network", "create", "-d", "bridge",
			"-o", "com.docker.network.bridge.enable_ip_masquerade=true", "kind").CombinedOutput()
		if err != nil && !strings.Contains(string(out), "already exists") {
			return fmt.Errorf("docker network create kind: %v: %s", err, out)
		}
	}
	err := r.each(func(c *kcluster) error {
		raw, err := os.ReadFile(c.config)
		if err != nil {
			return err
		}
		if err := kind.Create(r.provider, c.kind, r.kubeconfig,
			cluster.CreateWithRawConfig(raw),
			cluster.CreateWithNodeImage(r.nodeImage),
			cluster.CreateWithKubeconfigPath(r.kubeconfig),
			// The nodes stay NotReady until meshbed, the CNI, runs.
			cluster.CreateWithWaitForReady(0),
			cluster.CreateWithDisplayUsage(false),
			cluster.CreateWithDisplaySalutation(false),
		); err != nil {
			return fmt.Errorf("kind create cluster --name %s --image %s: %w", c.kind, r.nodeImage, err)
		}
		return nil
	})
	if err != nil {
		return err
	}
	for _, c := range r.clusters {
		rules := &clientcmd.ClientConfigLoadingRules{ExplicitPath: r.kubeconfig}
		cfg, err := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, &clientcmd.ConfigOverrides{CurrentContext: c.context}).ClientConfig()
		if err != nil {
			return fmt.Errorf("context %s: %w", c.context, err)
		}
		c.rest = cfg
		if c.kube, err = kubernetes.NewForConfig(cfg); err != nil {
			return err
		}
		if c.dyn, err = dynamic.NewForConfig(cfg); err != nil {
			return err
		}
	}
	r.figure("seconds from make e2e start to both Kind clusters created", time.Since(r.start).Seconds())
	return nil
}

// loadImages is `kind load docker-image` of meshbed's images onto every
// node of both clusters.
func (r *run) loadImages(ctx context.Context) error {
	return r.each(func(c *kcluster) error {
		return kind.LoadImages(ctx, r.provider, c.kind, r.meshbedImage, r.demoImag)
	})
}

// --- meshbed ------------------------------------------------------------------

func (r *run) install(ctx context.Context) error {
	return r.each(func(c *kcluster) error {
		return r.meshbed(ctx, "install", "--context", c.context, "--cluster-name", c.name,
			"--cluster-id", strconv.Itoa(c.id), "--image", r.meshbedImage, "--encryption", r.encryption)
	})
}

func (r *run) enable(ctx context.Context) error {
	for i, c := range r.clusters {
		args := []string{"clustermesh", "enable", "--context", c.context, "--ca-dir", r.caDir}
		if i == 0 {
			args = append(args, "--create-ca")
		}
		if err := r.meshbed(ctx, args...); err != nil {
			return err
		}
	}
	return nil
}

func (r *run) ready(ctx context.Context) error {
	return r.each(func(c *kcluster) error {
		return eventually(ctx, 8*time.Minute, func() error {
			if err := crashLooping(ctx, c.kube, kind.Namespace, "kube-system"); err != nil {
				return err
			}
			ds, err := c.kube.AppsV1().DaemonSets(kind.Namespace).Get(ctx, kind.AgentName, metav1.GetOptions{})
			if err != nil {
				return err
			}
			if ds.Status.DesiredNumberScheduled == 0 || ds.Status.NumberReady != ds.Status.DesiredNumberScheduled ||
				ds.Status.UpdatedNumberScheduled != ds.Status.DesiredNumberScheduled {
				return fmt.Errorf("agents: %d of %d ready, %d updated", ds.Status.NumberReady, ds.Status.DesiredNumberScheduled, ds.Status.UpdatedNumberScheduled)
			}
			if err := deploymentReady(ctx, c.kube, kind.Namespace, kind.APIServerName); err != nil {
				return err
			}
			if err := deploymentReady(ctx, c.kube, "kube-system", "coredns"); err != nil {
				return err
			}
			nodes, err := c.kube.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
			if err != nil {
				return err
			}
			for _, n := range nodes.Items {
				if !nodeReady(&n) {
					return fmt.Errorf("node %s not Ready", n.Name)
				}
			}
			return nil
		})
	})
}

func deploymentReady(ctx context.Context, kube kubernetes.Interface, ns, name string) error {
	d, err := kube.AppsV1().Deployments(ns).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return err
	}
	want := int32(1)
	if d.Spec.Replicas != nil {
		want = *d.Spec.Replicas
	}
	if d.Status.ObservedGeneration < d.Generation || d.Status.UpdatedReplicas != want ||
		d.Status.ReadyReplicas != want || d.Status.Replicas != want {
		return fmt.Errorf("deployment %s/%s: %d of %d ready (%d updated, %d in all)", ns, name,
			d.Status.ReadyReplicas, want, d.Status.UpdatedReplicas, d.Status.Replicas)
	}
	return nil
}

func nodeReady(n *corev1.Node) bool {
	for _, c := range n.Status.Conditions {
		if c.Type == corev1.NodeReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

func (r *run) connect(ctx context.Context) error {
	return r.meshbed(ctx, "clustermesh", "connect", "--context", r.clusters[0].context, "--destination-context", r.clusters[1].context)
}

func (r *run) status(ctx context.Context) error {
	return r.each(func(c *kcluster) error {
		return r.meshbed(ctx, "clustermesh", "status", "--context", c.context, "--ca-dir", r.caDir, "--wait", "--wait-timeout", "6m")
	})
}

// --- the demo -----------------------------------------------------------------

const demoNS = "default"

func (r *run) demo(ctx context.Context) error {
	return r.each(func(c *kcluster) error {
		for _, obj := range []any{rebelBaseService(), rebelBase(c.name, r.demoImag), xwing(r.demoImag)} {
			var err error
			switch o := obj.(type) {
			case *corev1.Service:
				_, err = c.kube.CoreV1().Services(demoNS).Create(ctx, o, metav1.CreateOptions{})
			case *appsv1.Deployment:
				_, err = c.kube.AppsV1().Deployments(demoNS).Create(ctx, o, metav1.CreateOptions{})
			}
			if err != nil && !apierrors.IsAlreadyExists(err) {
				return err
			}
		}
		return eventually(ctx, 5*time.Minute, func() error {
			if err := crashLooping(ctx, c.kube, demoNS, kind.Namespace); err != nil {
				return err
			}
			if err := deploymentReady(ctx, c.kube, demoNS, "rebel-base"); err != nil {
				return err
			}
			return deploymentReady(ctx, c.kube, demoNS, "x-wing")
		})
	})
}

func rebelBaseService() *corev1.Service {
	return &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "rebel-base", Annotations: map[string]string{"service.cilium.io/global": "true"}},
		Spec: corev1.ServiceSpec{
			Selector: map[string]string{"name": "rebel-base"},
			Ports:    []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromInt32(80)}},
		},
	}
}

func deployment(name string, replicas int32, c corev1.Container) *appsv1.Deployment {
	labels := map[string]string{"name": name}
	c.Name = name
	c.ImagePullPolicy = corev1.PullIfNotPresent
	return &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: appsv1.DeploymentSpec{
			Replicas: &replicas,
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{
					Containers:                    []corev1.Container{c},
					TerminationGracePeriodSeconds: ptr(int64(2)),
				},
			},
		},
	}
}

func ptr[T any](v T) *T { return &v }

func rebelBase(clusterName, image string) *appsv1.Deployment {
	return deployment("rebel-base", 2, corev1.Container{
		Image:   image,
		Command: []string{"/usr/local/bin/meshbed-demo", "echo", "--cluster", clusterName, "--port", "80"},
		Ports:   []corev1.ContainerPort{{Name: "http", ContainerPort: 80}},
		Env: []corev1.EnvVar{
			{Name: "POD_NAME", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.name"}}},
			{Name: "NODE_NAME", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "spec.nodeName"}}},
		},
		ReadinessProbe: &corev1.Probe{
			ProbeHandler:  corev1.ProbeHandler{TCPSocket: &corev1.TCPSocketAction{Port: intstr.FromInt32(80)}},
			PeriodSeconds: 2,
		},
	})
}

func xwing(image string) *appsv1.Deployment {
	return deployment("x-wing", 1, corev1.Container{
		Image:   image,
		Command: []string{"/usr/local/bin/meshbed-demo", "idle"},
	})
}

// answer is one line of `meshbed-demo get`.
type answer struct {
	Cluster string `json:"cluster"`
	Pod     string `json:"pod"`
	Error   string `json:"error"`
	Millis  int64  `json:"ms"`
}

// get runs `meshbed-demo get` in c's x-wing pod: n requests to url.
func (r *run) get(ctx context.Context, c *kcluster, url string, n int) ([]answer, error) {
	pods, err := c.kube.CoreV1().Pods(demoNS).List(ctx, metav1.ListOptions{LabelSelector: "name=x-wing", FieldSelector: "status.phase=Running"})
	if err != nil {
		return nil, err
	}
	if len(pods.Items) == 0 {
		return nil, errors.New("no running x-wing pod")
	}
	pod := pods.Items[0].Name
	req := c.kube.CoreV1().RESTClient().Post().Resource("pods").Namespace(demoNS).Name(pod).SubResource("exec").
		VersionedParams(&corev1.PodExecOptions{
			Container: "x-wing",
			Command:   []string{"/usr/local/bin/meshbed-demo", "get", "--count", strconv.Itoa(n), "--timeout", "2s", url},
			Stdout:    true, Stderr: true,
		}, scheme.ParameterCodec)
	ex, err := remotecommand.NewSPDYExecutor(c.rest, "POST", req.URL())
	if err != nil {
		return nil, err
	}
	var stdout, stderr bytes.Buffer
	ectx, cancel := context.WithTimeout(ctx, time.Duration(n)*3*time.Second+30*time.Second)
	defer cancel()
	if err := ex.StreamWithContext(ectx, remotecommand.StreamOptions{Stdout: &stdout, Stderr: &stderr}); err != nil {
		return nil, fmt.Errorf("exec in %s/%s: %w (%s)", c.kind, pod, err, strings.TrimSpace(stderr.String()))
	}
	var as []answer
	sc := bufio.NewScanner(&stdout)
	for sc.Scan() {
		var a answer
		if err := json.Unmarshal(sc.Bytes(), &a); err != nil {
			return nil, fmt.Errorf("x-wing printed %q: %w", sc.Text(), err)
		}
		as = append(as, a)
	}
	if len(as) != n {
		return nil, fmt.Errorf("x-wing answered %d of %d requests (stderr %q)", len(as), n, stderr.String())
	}
	return as, nil
}

// tally counts answers by cluster ("" for failed requests) and keeps one
// error for the message.
func tally(as []answer) (map[string]int, string) {
	m := map[string]int{}
	var firstErr string
	for _, a := range as {
		m[a.Cluster]++
		if a.Error != "" && firstErr == "" {
			firstErr = a.Error
		}
	}
	return m, firstErr
}

const serviceURL = "http://rebel-base." + demoNS + ".svc.cluster.local/"

// expect asks x-wing in c for n answers until every one comes from the
// clusters in want, all of them occurring.
func (r *run) expect(ctx context.Context, c *kcluster, url string, n int, want ...string) error {
	var last map[string]int
	err := eventually(ctx, 3*time.Minute, func() error {
		as, err := r.get(ctx, c, url, n)
		if err != nil {
			return err
		}
		m, firstErr := tally(as)
		last = m
		for got := range m {
			if !slices.Contains(want, got) {
				return fmt.Errorf("answers by cluster %v (want only %v; an error: %s)", m, want, firstErr)
			}
		}
		for _, w := range want {
			if m[w] == 0 {
				return fmt.Errorf("answers by cluster %v: none from %s (an error: %s)", m, w, firstErr)
			}
		}
		return nil
	})
	if err == nil {
		r.t.Logf("%s's x-wing -> %s: %d answers by cluster %v", c.name, url, n, last)
	}
	return err
}

func (r *run) bothAnswer(ctx context.Context) error {
	return r.expect(ctx, r.clusters[0], serviceURL, 20, "cluster1", "cluster2")
}

func (r *run) podIP(ctx context.Context, c *kcluster) (string, error) {
	pods, err := c.kube.CoreV1().Pods(demoNS).List(ctx, metav1.ListOptions{LabelSelector: "name=rebel-base"})
	if err != nil {
		return "", err
	}
	for _, p := range pods.Items {
		if p.Status.PodIP != "" && p.DeletionTimestamp == nil {
			return p.Status.PodIP, nil
		}
	}
	return "", fmt.Errorf("no rebel-base pod with an IP in %s", c.kind)
}

func (r *run) podToPod(ctx context.Context) error {
	ip, err := r.podIP(ctx, r.clusters[1])
	if err != nil {
		return err
	}
	return r.expect(ctx, r.clusters[0], "http://"+ip+"/", 5, "cluster2")
}

func (r *run) scale(ctx context.Context, c *kcluster, n int32) error {
	patch := fmt.Sprintf(`{"spec":{"replicas":%d}}`, n)
	if _, err := c.kube.AppsV1().Deployments(demoNS).Patch(ctx, "rebel-base", types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
		return err
	}
	return eventually(ctx, 3*time.Minute, func() error {
		if n > 0 {
			return deploymentReady(ctx, c.kube, demoNS, "rebel-base")
		}
		pods, err := c.kube.CoreV1().Pods(demoNS).List(ctx, metav1.ListOptions{LabelSelector: "name=rebel-base"})
		if err != nil {
			return err
		}
		if len(pods.Items) > 0 {
			return fmt.Errorf("%d rebel-base pods left in %s", len(pods.Items), c.kind)
		}
		return nil
	})
}

func (r *run) failover(ctx context.Context) error {
	c1 := r.clusters[0]
	if err := r.scale(ctx, c1, 0); err != nil {
		return err
	}
	if err := r.expect(ctx, c1, serviceURL, 10, "cluster2"); err != nil {
		return fmt.Errorf("after scaling cluster1 to zero: %w", err)
	}
	if err := r.scale(ctx, c1, 2); err != nil {
		return err
	}
	return r.expect(ctx, c1, serviceURL, 20, "cluster1", "cluster2")
}

func (r *run) annotateShared(ctx context.Context, c *kcluster, value *string) error {
	v := "null"
	if value != nil {
		v = strconv.Quote(*value)
	}
	patch := fmt.Sprintf(`{"metadata":{"annotations":{"service.cilium.io/shared":%s}}}`, v)
	_, err := c.kube.CoreV1().Services(demoNS).Patch(ctx, "rebel-base", types.MergePatchType, []byte(patch), metav1.PatchOptions{})
	return err
}

func (r *run) sharedFalse(ctx context.Context) error {
	c1, c2 := r.clusters[0], r.clusters[1]
	if err := r.annotateShared(ctx, c2, ptr("false")); err != nil {
		return err
	}
	if err := r.expect(ctx, c1, serviceURL, 20, "cluster1"); err != nil {
		return fmt.Errorf("cluster2's service not shared, cluster1's x-wing: %w", err)
	}
	// cluster2 itself still sees both clusters' backends.
	if err := r.expect(ctx, c2, serviceURL, 20, "cluster1", "cluster2"); err != nil {
		return fmt.Errorf("cluster2's service not shared, cluster2's own x-wing: %w", err)
	}
	if err := r.annotateShared(ctx, c2, nil); err != nil {
		return err
	}
	return r.expect(ctx, c1, serviceURL, 20, "cluster1", "cluster2")
}

var cnpGVR = schema.GroupVersionResource{Group: "cilium.io", Version: "v2", Resource: "ciliumnetworkpolicies"}

func (r *run) policy(ctx context.Context) error {
	c1 := r.clusters[0]
	raw, err := os.ReadFile("../../scenarios/manifests/policy.yaml")
	if err != nil {
		return err
	}
	d := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(raw), 4096)
	var names []string
	for {
		var obj unstructured.Unstructured
		if err := d.Decode(&obj.Object); err != nil {
			if errors.Is(err, io.EOF) {
				break
			}
			return fmt.Errorf("scenarios/manifests/policy.yaml: %w", err)
		}
		if len(obj.Object) == 0 {
			continue
		}
		if _, err := c1.dyn.Resource(cnpGVR).Namespace(demoNS).Create(ctx, &obj, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("create CiliumNetworkPolicy %s: %w", obj.GetName(), err)
		}
		names = append(names, obj.GetName())
	}
	// Through the service only cluster2 answers (requests that the load
	// balancer sends to cluster1 are dropped); directly, a cluster1 pod
	// does not answer and a cluster2 pod does.
	var last map[string]int
	err = eventually(ctx, 3*time.Minute, func() error {
		as, err := r.get(ctx, c1, serviceURL, 10)
		if err != nil {
			return err
		}
		m, firstErr := tally(as)
		last = m
		if m["cluster1"] > 0 || m["cluster2"] == 0 {
			return fmt.Errorf("answers by cluster %v, want cluster2 only (an error: %s)", m, firstErr)
		}
		ip1, err := r.podIP(ctx, c1)
		if err != nil {
			return err
		}
		as, err = r.get(ctx, c1, "http://"+ip1+"/", 2)
		if err != nil {
			return err
		}
		if m, _ := tally(as); m[""] != len(as) {
			return fmt.Errorf("a cluster1 pod (%s) still answers cluster1's x-wing: %v", ip1, m)
		}
		return nil
	})
	if err != nil {
		return err
	}
	r.t.Logf("with the policy, cluster1's x-wing through the service: %v (\"\" = dropped)", last)
	ip2, err := r.podIP(ctx, r.clusters[1])
	if err != nil {
		return err
	}
	if err := r.expect(ctx, c1, "http://"+ip2+"/", 3, "cluster2"); err != nil {
		return fmt.Errorf("with the policy, directly to a cluster2 pod: %w", err)
	}
	for _, n := range names {
		if err := c1.dyn.Resource(cnpGVR).Namespace(demoNS).Delete(ctx, n, metav1.DeleteOptions{}); err != nil {
			return fmt.Errorf("delete CiliumNetworkPolicy %s: %w", n, err)
		}
	}
	return r.expect(ctx, c1, serviceURL, 20, "cluster1", "cluster2")
}

// --- figures and dumps ----------------------------------------------------------

// memory reports the resident memory of the node containers (the cgroup's
// rss/anon: what the clusters' processes hold, page cache excluded).
func (r *run) memory(ctx context.Context) error {
	var total float64
	for _, c := range r.clusters {
		nodes, err := r.provider.ListInternalNodes(c.kind)
		if err != nil {
			return err
		}
		for _, n := range nodes {
			out, err := exec.CommandContext(ctx, "docker", "inspect", "--format", "{{.Id}}", n.String()).Output()
			if err != nil {
				return fmt.Errorf("docker inspect %s: %w", n.String(), err)
			}
			b, err := containerRSS(strings.TrimSpace(string(out)))
			if err != nil {
				return fmt.Errorf("%s: %w", n.String(), err)
			}
			r.figure("MiB resident, node container "+n.String(), float64(b)/(1<<20))
			total += float64(b)
		}
	}
	r.figure("MiB resident, all Kind node containers (two clusters)", total/(1<<20))
	return nil
}

// containerRSS reads a container's resident anonymous memory from its
// memory cgroup: cgroup v1 (cgroupfs driver: /docker/ID) or v2 (systemd
// driver: system.slice/docker-ID.scope, or cgroupfs /docker/ID).
func containerRSS(id string) (uint64, error) {
	for _, p := range []struct{ file, key string }{
		{"/sys/fs/cgroup/memory/docker/" + id + "/memory.stat", "total_rss"},
		{"/sys/fs/cgroup/system.slice/docker-" + id + ".scope/memory.stat", "anon"},
		{"/sys/fs/cgroup/docker/" + id + "/memory.stat", "anon"},
	} {
		b, err := os.ReadFile(p.file)
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, p.key+" "); ok {
				return strconv.ParseUint(strings.TrimSpace(v), 10, 64)
			}
		}
	}
	return 0, fmt.Errorf("no memory cgroup found for container %s", id)
}

// dump writes what a failed step needs: per cluster the nodes, pods, events,
// meshbed's logs and status, and Kind's node logs.
func (r *run) dump() string {
	dir := filepath.Join(r.dir, "dump")
	_ = os.MkdirAll(dir, 0o755)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	for _, c := range r.clusters {
		if c.kube == nil {
			continue
		}
		var b strings.Builder
		if nodes, err := c.kube.CoreV1().Nodes().List(ctx, metav1.ListOptions{}); err == nil {
			for _, n := range nodes.Items {
				fmt.Fprintf(&b, "node %s ready=%v podCIDR=%s\n", n.Name, nodeReady(&n), n.Spec.PodCIDR)
			}
		} else {
			fmt.Fprintf(&b, "nodes: %v\n", err)
		}
		pods, err := c.kube.CoreV1().Pods("").List(ctx, metav1.ListOptions{})
		if err != nil {
			fmt.Fprintf(&b, "pods: %v\n", err)
		} else {
			for _, p := range pods.Items {
				fmt.Fprintf(&b, "pod %s/%s node=%s phase=%s ip=%s", p.Namespace, p.Name, p.Spec.NodeName, p.Status.Phase, p.Status.PodIP)
				for _, cs := range append(p.Status.InitContainerStatuses, p.Status.ContainerStatuses...) {
					fmt.Fprintf(&b, " [%s ready=%v restarts=%d", cs.Name, cs.Ready, cs.RestartCount)
					if w := cs.State.Waiting; w != nil {
						fmt.Fprintf(&b, " waiting=%s: %s", w.Reason, w.Message)
					}
					if t := cs.LastTerminationState.Terminated; t != nil {
						fmt.Fprintf(&b, " last exit=%d %s", t.ExitCode, t.Reason)
					}
					b.WriteString("]")
				}
				b.WriteString("\n")
			}
		}
		if evs, err := c.kube.CoreV1().Events("").List(ctx, metav1.ListOptions{}); err == nil {
			items := evs.Items
			slices.SortFunc(items, func(a, b corev1.Event) int { return a.LastTimestamp.Compare(b.LastTimestamp.Time) })
			if len(items) > 80 {
				items = items[len(items)-80:]
			}
			for _, e := range items {
				fmt.Fprintf(&b, "event %s %s %s/%s %s: %s\n", e.LastTimestamp.Format(time.TimeOnly), e.Type, e.InvolvedObject.Kind, e.InvolvedObject.Name, e.Reason, e.Message)
			}
		}
		summary := filepath.Join(dir, c.kind+"-state.txt")
		_ = os.WriteFile(summary, []byte(b.String()), 0o644)
		r.t.Logf("dump of %s (%s):\n%s", c.kind, summary, b.String())
		if pods != nil {
			for _, p := range pods.Items {
				if p.Namespace != kind.Namespace && p.Namespace != demoNS && p.Namespace != "kube-system" {
					continue
				}
				for _, ct := range append(p.Spec.InitContainers, p.Spec.Containers...) {
					logs, err := c.kube.CoreV1().Pods(p.Namespace).GetLogs(p.Name, &corev1.PodLogOptions{Container: ct.Name, TailLines: ptr(int64(300))}).DoRaw(ctx)
					if err != nil {
						logs = []byte(err.Error())
					}
					_ = os.WriteFile(filepath.Join(dir, fmt.Sprintf("%s-%s-%s-%s.log", c.kind, p.Namespace, p.Name, ct.Name)), logs, 0o644)
					if p.Namespace == kind.Namespace {
						r.t.Logf("--- %s %s/%s %s (last lines):\n%s", c.kind, p.Namespace, p.Name, ct.Name, tail(string(logs), 25))
					}
				}
			}
		}
		cmd := exec.CommandContext(ctx, r.cli, "clustermesh", "status", "--context", c.context, "--ca-dir", r.caDir, "--kubeconfig", r.kubeconfig)
		out, _ := cmd.CombinedOutput()
		_ = os.WriteFile(filepath.Join(dir, c.kind+"-clustermesh-status.txt"), out, 0o644)
		r.t.Logf("meshbed clustermesh status --context %s:\n%s", c.context, out)
	}
	for _, c := range r.clusters {
		if err := r.provider.CollectLogs(c.kind, filepath.Join(dir, c.kind+"-nodes")); err != nil {
			r.t.Logf("kind export logs %s: %v", c.kind, err)
		}
	}
	return dir
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// wireguardKeys checks that every node of both clusters carries the
// WireGuard key annotation its agent publishes, a key that decodes; the
// demo steps before it ran over the encrypted datapath.
func (r *run) wireguardKeys(ctx context.Context) error {
	return r.each(func(c *kcluster) error {
		nodes, err := c.kube.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
		if err != nil {
			return err
		}
		for _, n := range nodes.Items {
			k := n.Annotations["network.cilium.io/wg-pub-key"]
			if b, err := base64.StdEncoding.DecodeString(k); err != nil || len(b) != 32 {
				return fmt.Errorf("%s/%s: WireGuard key %q does not decode to 32 bytes", c.name, n.Name, k)
			}
		}
		return nil
	})
}
