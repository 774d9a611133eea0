// Package target runs scenarios on Kind clusters: it implements
// engine.Target with client-go against real clusters where meshbed is
// installed. Either it builds the topology's clusters itself (Kind clusters
// named meshbed-<cluster>, with meshbed installed, enabled and connected
// before the first step, deleted after the run unless Keep) or it uses
// clusters that exist (Contexts). Like the simulator's target it only
// translates: the engine decides what to do and what to expect.
//
// How each action maps onto a real cluster:
//   - manifests: server-side apply; the images the simulator gives behaviour
//     to (meshbed/echo, cilium/json-mock) become meshbed's echo image, which
//     answers with its cluster's name, and every other image meshbed's idle
//     image (no registry is reachable here); Substitutions lists them;
//   - curl and traffic: one long-running `meshbed-demo get --stdin` in a pod
//     of the deployment, one request per line written to it (its id), the
//     requests running concurrently;
//   - partition: iptables rules in the Kind node containers, in a chain of
//     their own (MESHBED-PARTITION), between the groups' node addresses; the
//     control plane is the mesh-apiservers' node port;
//   - stop/start/restart of the apiserver and of kvstoremesh (a Deployment
//     of its own): the Deployment scaled to zero and back, or its pod
//     deleted, kvstoremesh going with its apiserver as in the simulator;
//     the agent of a node (or of every node): the node labelled
//     kind.AgentStoppedLabel, which the DaemonSet's node affinity keeps the
//     agent off, and the label removed; or its pod deleted;
//   - events: every component container's log followed from the start of
//     the run, each decision line read back with event.ParseLogLine;
//   - backends, the final check's node reads: `meshbed-agent state` run in
//     the node's agent pod; kvstore: the cluster's mesh-apiserver at its
//     node port with a certificate from the mesh CA.
package target

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/tools/remotecommand"
	kindv1alpha4 "sigs.k8s.io/kind/pkg/apis/config/v1alpha4"
	"sigs.k8s.io/kind/pkg/cluster"
	"sigs.k8s.io/kind/pkg/cluster/nodes"

	"github.com/meshbed/meshbed/datapath/state"
	"github.com/meshbed/meshbed/kind"
	"github.com/meshbed/meshbed/mesh/clustermesh"
	"github.com/meshbed/meshbed/mesh/kvstore"
	"github.com/meshbed/meshbed/scenarios"
	"github.com/meshbed/meshbed/scenarios/engine"
	"github.com/meshbed/meshbed/sim/workload"
)

// Name is the Kind target's name in reports and errors.
const Name = "kind"

// Options of the Kind target.
type Options struct {
	// Kubeconfig holds the contexts; created clusters' contexts are
	// written to it. Empty: $KUBECONFIG or ~/.kube/config.
	Kubeconfig string
	// Contexts maps each cluster of the topology to the kubeconfig context
	// of an existing cluster where meshbed is installed and connected.
	// Empty: the target creates Kind clusters.
	Contexts map[string]string
	// CADir is the mesh CA (for created clusters it is created there if
	// missing); the target reads each mesh-apiserver with it.
	CADir string
	// Keep leaves created clusters running after Close.
	Keep bool
	// NodeImage is the Kind node image for created clusters; MeshbedImage
	// and DemoImage are loaded into them (and used on existing clusters,
	// where they must be present).
	NodeImage, MeshbedImage, DemoImage string
	Logger                             *slog.Logger
}

// Target is Kind clusters as an engine.Target.
type Target struct {
	opts     Options
	provider *cluster.Provider
	clusters map[string]*kcluster
	order    []string
	created  []string // Kind names of the clusters this target created

	mu            sync.Mutex
	partitioned   bool
	clients       []*podClient
	substitutions []string
	stopped       map[scenarios.Process]bool // stopped by Stop
	events        *eventCollector
}

type kcluster struct {
	spec    scenarios.Cluster
	context string
	kind    string // Kind's name when created here
	rest    *rest.Config
	kube    kubernetes.Interface
	dyn     dynamic.Interface
	// nodes are the cluster's nodes in name order, which is node-1..N.
	nodes []corev1.Node
	info  *clustermesh.Cluster
	// peers are the clusters the topology connects this one to.
	peers []string
}

var _ engine.Target = (*Target)(nil)

// New returns a Kind target; nothing is built or read before Up.
func New(opts Options) *Target {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	return &Target{opts: opts, clusters: map[string]*kcluster{}, stopped: map[scenarios.Process]bool{},
		provider: cluster.NewProvider(cluster.ProviderWithDocker())}
}

// Name implements engine.Target.
func (t *Target) Name() string { return Name }

// Supports implements engine.Target.
func (t *Target) Supports(c engine.Capability) bool {
	switch c {
	case engine.CapPartition, engine.CapPartitionData, engine.CapPartitionControl, engine.CapPartitionNode, engine.CapPartitionOneWay,
		engine.CapProcessAPIServer, engine.CapProcessKVStoreMesh, engine.CapProcessAgent,
		engine.CapExpectBackends, engine.CapExpectKVStore, engine.CapExpectEvents:
		return true
	}
	return false
}

// Substitutions lists the images replaced by meshbed's own, for the report.
func (t *Target) Substitutions() []string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return slices.Clone(t.substitutions)
}

// Check validates sc against what Kind can build, before anything starts.
func (t *Target) Check(sc *scenarios.Scenario) error {
	var errs []error
	tp := sc.Topology
	if tp.Routing == scenarios.RoutingNative {
		errs = append(errs, errors.New("topology.routing native: meshbed's Kind install routes through the tunnel only"))
	}
	if tp.Encryption == scenarios.EncryptionWireGuard {
		if _, err := os.Stat("/sys/module/wireguard"); err != nil {
			errs = append(errs, errors.New("topology.encryption wireguard: this kernel has no WireGuard module, and userspace WireGuard inside Kind nodes is untried"))
		}
	}
	if tp.RemoteLoss == scenarios.RemoteLossFailStatic {
		errs = append(errs, errors.New("topology.remoteLoss fail-static: meshbed's Kind install withdraws unreachable clusters' backends"))
	}
	if len(t.opts.Contexts) > 0 {
		for _, c := range tp.Clusters {
			if t.opts.Contexts[c.Name] == "" {
				errs = append(errs, fmt.Errorf("cluster %s: no --context given for it", c.Name))
			}
		}
		for name := range t.opts.Contexts {
			if !slices.ContainsFunc(tp.Clusters, func(c scenarios.Cluster) bool { return c.Name == name }) {
				errs = append(errs, fmt.Errorf("--context %s=...: the topology has no cluster %s", name, name))
			}
		}
	} else {
		for _, c := range tp.Clusters {
			if c.Nodes > 8 {
				errs = append(errs, fmt.Errorf("cluster %s: %d nodes: this target builds at most 8 Kind nodes per cluster", c.Name, c.Nodes))
			}
		}
		if t.opts.NodeImage == "" || t.opts.MeshbedImage == "" || t.opts.DemoImage == "" {
			errs = append(errs, errors.New("creating Kind clusters needs the node, meshbed and demo images (make scenario TARGET=kind builds them)"))
		}
		if len(errs) == 0 {
			errs = append(errs, checkDockerNetwork(tp), checkInotify())
		}
	}
	return errors.Join(errs...)
}

// minInotifyInstances is what Kind's known issues page asks for: each node
// container's systemd, containerd and kubelet take inotify instances, and
// with the kernel's default of 128 a machine's seventh or eighth node exits
// while booting.
const minInotifyInstances = 512

func checkInotify() error {
	b, err := os.ReadFile("/proc/sys/fs/inotify/max_user_instances")
	if err != nil {
		return nil
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || n >= minInotifyInstances {
		return nil
	}
	return fmt.Errorf("fs.inotify.max_user_instances is %d: Kind nodes fail to boot beyond a few; raise it to %d (sysctl -w fs.inotify.max_user_instances=%d; hack/docker.sh start does)", n, minInotifyInstances, minInotifyInstances)
}

// checkDockerNetwork refuses pod or service CIDRs that overlap the Docker
// network Kind puts its nodes on.
func checkDockerNetwork(tp scenarios.Topology) error {
	out, err := exec.Command("docker", "network", "inspect", "kind", "--format", "{{range .IPAM.Config}}{{.Subnet}} {{end}}").Output()
	if err != nil {
		return nil // no network yet: Kind creates 172.18.0.0/16 or the like
	}
	var errs []error
	for _, f := range strings.Fields(string(out)) {
		n, err := netip.ParsePrefix(f)
		if err != nil || !n.Addr().Is4() {
			continue
		}
		for _, c := range tp.Clusters {
			for _, p := range []netip.Prefix{c.PodCIDR, c.ServiceCIDR} {
				if p.Overlaps(n) {
					errs = append(errs, fmt.Errorf("cluster %s: %s overlaps the Docker network kind (%s)", c.Name, p, n))
				}
			}
		}
	}
	return errors.Join(errs...)
}

// Up implements engine.Target.
func (t *Target) Up(ctx context.Context, sc *scenarios.Scenario) error {
	if len(t.order) > 0 {
		return errors.New("the Kind target is already up")
	}
	began := time.Now()
	if err := t.Check(sc); err != nil {
		return err
	}
	for _, c := range sc.Topology.Clusters {
		t.order = append(t.order, c.Name)
		kc := &kcluster{spec: c, context: t.opts.Contexts[c.Name]}
		for _, o := range sc.Topology.Clusters {
			if o.Name != c.Name && sc.Topology.Connected(c.Name, o.Name) {
				kc.peers = append(kc.peers, o.Name)
			}
		}
		t.clusters[c.Name] = kc
	}
	if len(t.opts.Contexts) == 0 {
		if err := t.create(ctx, sc); err != nil {
			return err
		}
	}
	for _, name := range t.order {
		if err := t.connectClient(ctx, t.clusters[name]); err != nil {
			return err
		}
	}
	if err := t.startEvents(began); err != nil {
		return err
	}
	if len(t.opts.Contexts) > 0 {
		// Clusters that exist may hold what an earlier run left (an
		// annotation, a policy): the scenario starts from its manifests.
		return t.removeLeftovers(ctx, sc)
	}
	return nil
}

// removeLeftovers deletes, in the existing clusters, the objects a
// scenario's steps may create or change (those of its manifests and
// apply steps, and every CiliumNetworkPolicy), and waits until they are
// gone.
func (t *Target) removeLeftovers(ctx context.Context, sc *scenarios.Scenario) error {
	type ref struct{ cluster, kind, ns, name string }
	var refs []ref
	add := func(clusters []string, objs []scenarios.Object) {
		for _, cl := range clusters {
			for _, o := range objs {
				if o.Kind != "Namespace" {
					refs = append(refs, ref{cl, o.Kind, o.Namespace, o.Name})
				}
			}
		}
	}
	for _, m := range sc.Manifests {
		add(m.Clusters, m.Objects)
	}
	for _, st := range sc.Steps {
		if st.Apply != nil {
			add(st.Apply.Clusters, st.Apply.Objects)
		}
	}
	for _, name := range t.order {
		c := t.clusters[name]
		l, err := c.dyn.Resource(gvrs["CiliumNetworkPolicy"]).Namespace("").List(ctx, metav1.ListOptions{})
		if err != nil {
			return fmt.Errorf("cluster %s: %w", name, err)
		}
		for _, p := range l.Items {
			refs = append(refs, ref{name, "CiliumNetworkPolicy", p.GetNamespace(), p.GetName()})
		}
	}
	for _, r := range refs {
		if err := t.Delete(ctx, r.cluster, r.kind, r.ns, r.name, &scenarios.GracePeriod{Seconds: 0}); err != nil && !apierrors.IsNotFound(err) {
			return err
		}
	}
	return eventually(ctx, 2*time.Minute, func() error {
		for _, r := range refs {
			c := t.clusters[r.cluster]
			var ri dynamic.ResourceInterface = c.dyn.Resource(gvrs[r.kind])
			if r.ns != "" {
				ri = c.dyn.Resource(gvrs[r.kind]).Namespace(r.ns)
			}
			if _, err := ri.Get(ctx, r.name, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
				return fmt.Errorf("%s %s/%s in %s: still there (%v)", r.kind, r.ns, r.name, r.cluster, err)
			}
		}
		return nil
	})
}

func (t *Target) kubeconfig() string {
	if t.opts.Kubeconfig != "" {
		return t.opts.Kubeconfig
	}
	return clientcmd.NewDefaultClientConfigLoadingRules().GetDefaultFilename()
}

// connectClient builds the clients of c and checks that meshbed runs there
// as the topology's cluster.
func (t *Target) connectClient(ctx context.Context, c *kcluster) error {
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	rules.ExplicitPath = t.opts.Kubeconfig
	cfg, err := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, &clientcmd.ConfigOverrides{CurrentContext: c.context}).ClientConfig()
	if err != nil {
		return fmt.Errorf("cluster %s: context %q: %w", c.spec.Name, c.context, err)
	}
	cfg.QPS, cfg.Burst = 50, 100
	c.rest = cfg
	if c.kube, err = kubernetes.NewForConfig(cfg); err != nil {
		return err
	}
	if c.dyn, err = dynamic.NewForConfig(cfg); err != nil {
		return err
	}
	c.info, err = clustermesh.LoadCluster(ctx, t.factory(), t.opts.Kubeconfig, c.context)
	if err != nil {
		return fmt.Errorf("cluster %s: %w", c.spec.Name, err)
	}
	if c.info.Name() != c.spec.Name || int(c.info.ID()) != c.spec.ID {
		return fmt.Errorf("cluster %s (ID %d): context %q runs meshbed as cluster %s (ID %d)", c.spec.Name, c.spec.ID, c.context, c.info.Name(), c.info.ID())
	}
	nl, err := c.kube.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return fmt.Errorf("cluster %s: %w", c.spec.Name, err)
	}
	c.nodes = nl.Items
	sort.Slice(c.nodes, func(i, j int) bool { return c.nodes[i].Name < c.nodes[j].Name })
	if len(c.nodes) < c.spec.Nodes {
		return fmt.Errorf("cluster %s: the topology has %d nodes, context %q %d", c.spec.Name, c.spec.Nodes, c.context, len(c.nodes))
	}
	return nil
}

func (t *Target) factory() clustermesh.ClientFactory { return clustermesh.KubeClients }

// create builds, installs, enables and connects the topology's clusters.
func (t *Target) create(ctx context.Context, sc *scenarios.Scenario) error {
	log := t.opts.Logger
	existing, err := t.provider.List()
	if err != nil {
		return fmt.Errorf("kind: %w (is Docker running? hack/docker.sh start)", err)
	}
	for _, name := range t.order {
		c := t.clusters[name]
		c.kind = "meshbed-" + name
		c.context = "kind-" + c.kind
		if slices.Contains(existing, c.kind) {
			return fmt.Errorf("cluster %s: a Kind cluster %s exists already (delete it: kind delete cluster --name %s)", name, c.kind, c.kind)
		}
	}
	if err := ensureKindNetwork(ctx); err != nil {
		return err
	}
	for _, name := range t.order {
		c := t.clusters[name]
		cfg := &kindv1alpha4.Cluster{
			Networking: kindv1alpha4.Networking{
				PodSubnet: c.spec.PodCIDR.String(), ServiceSubnet: c.spec.ServiceCIDR.String(), DisableDefaultCNI: true,
			},
			Nodes: []kindv1alpha4.Node{{Role: kindv1alpha4.ControlPlaneRole}},
		}
		for i := 1; i < c.spec.Nodes; i++ {
			cfg.Nodes = append(cfg.Nodes, kindv1alpha4.Node{Role: kindv1alpha4.WorkerRole})
		}
		log.Info("Creating Kind cluster", "cluster", name, "kind", c.kind, "nodes", c.spec.Nodes)
		start := time.Now()
		t.created = append(t.created, c.kind)
		if err := kind.Create(t.provider, c.kind, t.kubeconfig(), cluster.CreateWithV1Alpha4Config(cfg), cluster.CreateWithNodeImage(t.opts.NodeImage),
			cluster.CreateWithKubeconfigPath(t.kubeconfig()), cluster.CreateWithWaitForReady(0),
			cluster.CreateWithDisplayUsage(false), cluster.CreateWithDisplaySalutation(false)); err != nil {
			return fmt.Errorf("cluster %s: kind create cluster %s: %w", name, c.kind, err)
		}
		log.Info("Kind cluster created", "cluster", name, "took", time.Since(start).Round(time.Millisecond))
		if err := kind.LoadImages(ctx, t.provider, c.kind, t.opts.MeshbedImage, t.opts.DemoImage); err != nil {
			return err
		}
		if err := clustermesh.Install(ctx, io.Discard, t.factory(), clustermesh.InstallOptions{
			Kubeconfig: t.kubeconfig(), Context: c.context,
			Values: kind.Values{ClusterName: name, ClusterID: uint32(c.spec.ID), MaxConnectedClusters: 255, Image: t.opts.MeshbedImage,
				ImagePullPolicy: "IfNotPresent", LogLevel: "info", Encryption: string(sc.Topology.Encryption)},
		}); err != nil {
			return fmt.Errorf("cluster %s: %w", name, err)
		}
	}
	for i, name := range t.order {
		c := t.clusters[name]
		if err := clustermesh.Enable(ctx, io.Discard, t.factory(), clustermesh.EnableOptions{
			Kubeconfig: t.kubeconfig(), Context: c.context, CADir: t.opts.CADir, CreateCA: i == 0,
		}); err != nil {
			return fmt.Errorf("cluster %s: %w", name, err)
		}
	}
	for _, pair := range sc.Topology.Connections {
		if err := clustermesh.Connect(ctx, io.Discard, t.factory(), clustermesh.ConnectOptions{
			Kubeconfig: t.kubeconfig(), Context: t.clusters[pair[0]].context, Destination: t.clusters[pair[1]].context,
		}); err != nil {
			return fmt.Errorf("connect %s and %s: %w", pair[0], pair[1], err)
		}
	}
	return nil
}

func ensureKindNetwork(ctx context.Context) error {
	if exec.CommandContext(ctx, "docker", "network", "inspect", "kind").Run() == nil {
		return nil
	}
	out, err := exec.CommandContext(ctx, "docker", "network", "create", "-d", "bridge",
		"-o", "com.docker.network.bridge.enable_ip_masquerade=true", "kind").CombinedOutput()
	if err != nil && !strings.Contains(string(out), "already exists") {
		return fmt.Errorf("docker network create kind: %v: %s", err, out)
	}
	return nil
}

// Close implements engine.Target: it ends the clients' exec sessions and
// deletes the clusters it created (unless Keep).
func (t *Target) Close() error {
	t.mu.Lock()
	clients := t.clients
	t.clients = nil
	t.mu.Unlock()
	for _, c := range clients {
		c.close()
	}
	if t.events != nil {
		t.events.stop()
	}
	var errs []error
	if t.partitioned {
		errs = append(errs, t.Heal(context.Background()))
	}
	if t.opts.Keep {
		return errors.Join(errs...)
	}
	for _, k := range t.created {
		if err := t.provider.Delete(k, t.kubeconfig()); err != nil {
			errs = append(errs, fmt.Errorf("kind delete cluster %s: %w", k, err))
		}
	}
	t.created = nil
	return errors.Join(errs...)
}

func (t *Target) cluster(name string) (*kcluster, error) {
	c, ok := t.clusters[name]
	if !ok || c.kube == nil {
		return nil, fmt.Errorf("no cluster %q", name)
	}
	return c, nil
}

// Settle implements engine.Target: every Deployment of every cluster
// ready, every agent and mesh-apiserver ready, and (without a partition or
// a stopped component) every connected remote cluster synced, by
// kvstoremesh and by the agent of every node.
func (t *Target) Settle(ctx context.Context) error {
	for _, name := range t.order {
		c := t.clusters[name]
		if err := eventually(ctx, 4*time.Minute, func() error { return deploymentsReady(ctx, c) }); err != nil {
			return fmt.Errorf("cluster %s: %w", name, err)
		}
		probe := clustermesh.Probe(nil)
		t.mu.Lock()
		if !t.partitioned && len(t.stopped) == 0 {
			probe = clustermesh.KVStoreProbe(t.opts.CADir)
		}
		t.mu.Unlock()
		var out bytes.Buffer
		err := clustermesh.Status(ctx, &out, t.factory(), probe, clustermesh.StatusOptions{
			Kubeconfig: t.opts.Kubeconfig, Context: c.context, Wait: true, WaitTimeout: 4 * time.Minute, Interval: time.Second,
		})
		if err != nil {
			return fmt.Errorf("cluster %s: %w\n%s", name, err, out.String())
		}
		// kvstoremesh synced is not yet every agent synced: an agent reads
		// its remote clusters from a Secret volume, which the kubelet
		// updates up to a minute or so after connect wrote it.
		if probe != nil {
			if err := eventually(ctx, 4*time.Minute, func() error { return t.agentsSynced(ctx, c) }); err != nil {
				return fmt.Errorf("cluster %s: %w", name, err)
			}
		}
	}
	return nil
}

// agentsSynced says whether every node's agent runs and has every peer
// of its cluster synced.
func (t *Target) agentsSynced(ctx context.Context, c *kcluster) error {
	reports, err := t.reports(ctx, c)
	if err != nil {
		return err
	}
	for i, r := range reports {
		if r == nil {
			return fmt.Errorf("%s: no agent running", c.nodes[i].Name)
		}
		synced := map[string]bool{}
		for _, rr := range r.Remotes {
			synced[rr.Name] = rr.Synced
		}
		for _, p := range c.peers {
			if !synced[p] {
				return fmt.Errorf("the agent on %s has %s not synced (remotes %+v)", c.nodes[i].Name, p, r.Remotes)
			}
		}
	}
	return nil
}

func deploymentsReady(ctx context.Context, c *kcluster) error {
	ds, err := c.kube.AppsV1().Deployments("").List(ctx, metav1.ListOptions{})
	if err != nil {
		return err
	}
	for _, d := range ds.Items {
		want := int32(1)
		if d.Spec.Replicas != nil {
			want = *d.Spec.Replicas
		}
		if d.Namespace == kind.Namespace && want == 0 {
			continue
		}
		if d.Status.ObservedGeneration < d.Generation || d.Status.UpdatedReplicas != want || d.Status.ReadyReplicas != want || d.Status.Replicas != want {
			return fmt.Errorf("deployment %s/%s: %d of %d ready (%d updated, %d in all)", d.Namespace, d.Name, d.Status.ReadyReplicas, want, d.Status.UpdatedReplicas, d.Status.Replicas)
		}
	}
	return nil
}

func eventually(ctx context.Context, d time.Duration, f func() error) error {
	deadline := time.Now().Add(d)
	for {
		err := f()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("after %v: %w", d, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// Recover implements engine.Target.
func (t *Target) Recover(ctx context.Context) error {
	errs := []error{t.Heal(ctx)}
	t.mu.Lock()
	stopped := slices.Collect(maps.Keys(t.stopped))
	t.mu.Unlock()
	// An apiserver before its kvstoremesh, which needs it.
	slices.SortFunc(stopped, func(a, b scenarios.Process) int {
		return cmp.Compare(startOrder(a.Component), startOrder(b.Component))
	})
	for _, p := range stopped {
		errs = append(errs, t.Start(ctx, p))
	}
	return errors.Join(errs...)
}

// startOrder ranks components for starting them again.
func startOrder(c scenarios.Component) int {
	switch c {
	case scenarios.ComponentAPIServer:
		return 0
	case scenarios.ComponentKVStoreMesh:
		return 1
	}
	return 2
}

// --- objects ------------------------------------------------------------------

var gvrs = map[string]schema.GroupVersionResource{
	"Namespace":           {Version: "v1", Resource: "namespaces"},
	"Service":             {Version: "v1", Resource: "services"},
	"ConfigMap":           {Version: "v1", Resource: "configmaps"},
	"Deployment":          {Group: "apps", Version: "v1", Resource: "deployments"},
	"NetworkPolicy":       {Group: "networking.k8s.io", Version: "v1", Resource: "networkpolicies"},
	"CiliumNetworkPolicy": {Group: "cilium.io", Version: "v2", Resource: "ciliumnetworkpolicies"},
}

// Apply implements engine.Target with server-side apply.
func (t *Target) Apply(ctx context.Context, cluster string, objs []scenarios.Object) error {
	c, err := t.cluster(cluster)
	if err != nil {
		return err
	}
	for _, o := range objs {
		gvr, ok := gvrs[o.Kind]
		if !ok {
			return fmt.Errorf("apply %s %s: kind not supported on Kind", o.Kind, o.Name)
		}
		obj := o.Object
		if d, ok := obj.(*appsv1.Deployment); ok {
			obj = t.substitute(cluster, d)
		}
		m, err := runtime.DefaultUnstructuredConverter.ToUnstructured(obj)
		if err != nil {
			return fmt.Errorf("apply %s %s: %w", o.Kind, o.Name, err)
		}
		u := &unstructured.Unstructured{Object: m}
		u.SetAPIVersion(o.APIVersion)
		u.SetKind(o.Kind)
		unstructured.RemoveNestedField(u.Object, "metadata", "creationTimestamp")
		unstructured.RemoveNestedField(u.Object, "status")
		var ri dynamic.ResourceInterface = c.dyn.Resource(gvr)
		if o.Namespace != "" {
			ri = c.dyn.Resource(gvr).Namespace(o.Namespace)
		}
		if _, err := ri.Apply(ctx, o.Name, u, metav1.ApplyOptions{FieldManager: "meshbed-scenario", Force: true}); err != nil {
			return fmt.Errorf("apply %s %s/%s in %s: %w", o.Kind, o.Namespace, o.Name, cluster, err)
		}
	}
	return nil
}

// substitute gives a Deployment meshbed's images: the echo server for the
// images the simulator serves (answering with the cluster's name, on the
// container's ports), the idle client for every other image.
func (t *Target) substitute(cluster string, d *appsv1.Deployment) *appsv1.Deployment {
	d = d.DeepCopy()
	spec := &d.Spec.Template.Spec
	for i := range spec.Containers {
		ct := &spec.Containers[i]
		orig := ct.Image
		ct.Image = t.opts.DemoImage
		ct.ImagePullPolicy = corev1.PullIfNotPresent
		ct.Args = nil
		if workload.IsEcho(orig) {
			port := int32(80)
			if len(ct.Ports) > 0 {
				port = ct.Ports[0].ContainerPort
			}
			ct.Command = []string{"/usr/local/bin/meshbed-demo", "echo", "--cluster", cluster, "--port", strconv.Itoa(int(port))}
			ct.Env = append(ct.Env,
				corev1.EnvVar{Name: "POD_NAME", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.name"}}},
				corev1.EnvVar{Name: "NODE_NAME", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "spec.nodeName"}}})
			if ct.ReadinessProbe == nil {
				ct.ReadinessProbe = &corev1.Probe{ProbeHandler: corev1.ProbeHandler{TCPSocket: &corev1.TCPSocketAction{Port: intstr.FromInt32(port)}}, PeriodSeconds: 1}
			}
		} else {
			ct.Command = []string{"/usr/local/bin/meshbed-demo", "idle"}
		}
		t.mu.Lock()
		s := fmt.Sprintf("%s %s/%s container %s: %s -> %s (%s)", cluster, d.Namespace, d.Name, ct.Name, orig, t.opts.DemoImage, strings.Join(ct.Command[1:2], ""))
		if !slices.Contains(t.substitutions, s) {
			t.substitutions = append(t.substitutions, s)
		}
		t.mu.Unlock()
	}
	return d
}

// Delete implements engine.Target. A Deployment deleted with a grace
// period: its pods are deleted with that grace period, then it.
func (t *Target) Delete(ctx context.Context, cluster, kindName, namespace, name string, grace *scenarios.GracePeriod) error {
	c, err := t.cluster(cluster)
	if err != nil {
		return err
	}
	gvr, ok := gvrs[kindName]
	if !ok {
		return fmt.Errorf("delete %s %s: kind not supported", kindName, name)
	}
	if kindName == "Deployment" && grace != nil {
		if err := t.deletePods(ctx, c, namespace, name, grace.Seconds, false); err != nil {
			return err
		}
	}
	var ri dynamic.ResourceInterface = c.dyn.Resource(gvr)
	if namespace != "" {
		ri = c.dyn.Resource(gvr).Namespace(namespace)
	}
	err = ri.Delete(ctx, name, metav1.DeleteOptions{})
	if err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("delete %s %s/%s in %s: %w", kindName, namespace, name, cluster, err)
	}
	return nil
}

// deletePods deletes the deployment's pods with grace seconds (only those
// already terminating when terminatingOnly: a second delete shortens their
// grace period).
func (t *Target) deletePods(ctx context.Context, c *kcluster, namespace, deployment string, grace int64, terminatingOnly bool) error {
	d, err := c.kube.AppsV1().Deployments(namespace).Get(ctx, deployment, metav1.GetOptions{})
	if err != nil {
		return err
	}
	sel, err := metav1.LabelSelectorAsSelector(d.Spec.Selector)
	if err != nil {
		return err
	}
	pods, err := c.kube.CoreV1().Pods(namespace).List(ctx, metav1.ListOptions{LabelSelector: sel.String()})
	if err != nil {
		return err
	}
	for _, p := range pods.Items {
		if terminatingOnly && p.DeletionTimestamp == nil {
			continue
		}
		err := c.kube.CoreV1().Pods(namespace).Delete(ctx, p.Name, metav1.DeleteOptions{GracePeriodSeconds: &grace})
		if err != nil && !apierrors.IsNotFound(err) {
			return err
		}
	}
	return nil
}

// Scale implements engine.Target; with a grace period, the pods the
// scale-down removes are deleted again with it.
func (t *Target) Scale(ctx context.Context, cluster, namespace, deployment string, replicas int, grace *scenarios.GracePeriod) error {
	c, err := t.cluster(cluster)
	if err != nil {
		return err
	}
	patch := fmt.Sprintf(`{"spec":{"replicas":%d}}`, replicas)
	if _, err := c.kube.AppsV1().Deployments(namespace).Patch(ctx, deployment, types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
		return fmt.Errorf("scale %s/%s in %s: %w", namespace, deployment, cluster, err)
	}
	if grace == nil {
		return nil
	}
	// The ReplicaSet controller marks the victims terminating shortly.
	return eventually(ctx, 10*time.Second, func() error {
		if err := t.deletePods(ctx, c, namespace, deployment, grace.Seconds, true); err != nil {
			return err
		}
		d, err := c.kube.AppsV1().Deployments(namespace).Get(ctx, deployment, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if d.Status.Replicas > int32(replicas) {
			return fmt.Errorf("%d pods, want %d", d.Status.Replicas, replicas)
		}
		return nil
	})
}

// Annotate implements engine.Target.
func (t *Target) Annotate(ctx context.Context, cluster, namespace, service string, annotations map[string]*string) error {
	c, err := t.cluster(cluster)
	if err != nil {
		return err
	}
	patch, err := json.Marshal(map[string]any{"metadata": map[string]any{"annotations": annotations}})
	if err != nil {
		return err
	}
	if _, err := c.kube.CoreV1().Services(namespace).Patch(ctx, service, types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
		return fmt.Errorf("annotate service %s/%s in %s: %w", namespace, service, cluster, err)
	}
	return nil
}

// --- clients ------------------------------------------------------------------

// Client implements engine.Target: a `meshbed-demo get --stdin` session in
// the first running, ready pod of the deployment.
func (t *Target) Client(ctx context.Context, from scenarios.Workload, url string, timeout time.Duration) (engine.Client, error) {
	c, err := t.cluster(from.Cluster)
	if err != nil {
		return nil, err
	}
	pod, container, err := readyPod(ctx, c, from.Namespace, from.Deployment)
	if err != nil {
		return nil, fmt.Errorf("client %s: %w", from, err)
	}
	pc, err := startClient(c, from.Namespace, pod, container, url, timeout)
	if err != nil {
		return nil, fmt.Errorf("client %s: %w", from, err)
	}
	t.mu.Lock()
	t.clients = append(t.clients, pc)
	t.mu.Unlock()
	return pc, nil
}

func readyPod(ctx context.Context, c *kcluster, namespace, deployment string) (pod, container string, err error) {
	d, err := c.kube.AppsV1().Deployments(namespace).Get(ctx, deployment, metav1.GetOptions{})
	if err != nil {
		return "", "", err
	}
	sel, err := metav1.LabelSelectorAsSelector(d.Spec.Selector)
	if err != nil {
		return "", "", err
	}
	pods, err := c.kube.CoreV1().Pods(namespace).List(ctx, metav1.ListOptions{LabelSelector: sel.String()})
	if err != nil {
		return "", "", err
	}
	sort.Slice(pods.Items, func(i, j int) bool { return pods.Items[i].Name < pods.Items[j].Name })
	for _, p := range pods.Items {
		if p.DeletionTimestamp == nil && p.Status.Phase == corev1.PodRunning && podReady(&p) && len(p.Spec.Containers) > 0 {
			return p.Name, p.Spec.Containers[0].Name, nil
		}
	}
	return "", "", errors.New("no running, ready pod")
}

func podReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// podClient is one exec session of meshbed-demo get --stdin.
type podClient struct {
	name   string
	mu     sync.Mutex // stdin, next, waiting, ended
	stdin  *io.PipeWriter
	next   uint64
	ended  error
	cancel context.CancelFunc
	done   chan error
	// waiting holds the request of each id written and not yet answered.
	waiting map[string]chan line
}

// line is one line of meshbed-demo get.
type line struct {
	ID      string `json:"id"`
	Cluster string `json:"cluster"`
	Error   string `json:"error"`
	Millis  int64  `json:"ms"`
}

func startClient(c *kcluster, namespace, pod, container, url string, timeout time.Duration) (*podClient, error) {
	req := c.kube.CoreV1().RESTClient().Post().Resource("pods").Namespace(namespace).Name(pod).SubResource("exec").
		VersionedParams(&corev1.PodExecOptions{
			Container: container,
			Command:   []string{"/usr/local/bin/meshbed-demo", "get", "--stdin", "--timeout", timeout.String(), url},
			Stdin:     true, Stdout: true, Stderr: true,
		}, scheme.ParameterCodec)
	ex, err := remotecommand.NewSPDYExecutor(c.rest, "POST", req.URL())
	if err != nil {
		return nil, err
	}
	inR, inW := io.Pipe()
	outR, outW := io.Pipe()
	ctx, cancel := context.WithCancel(context.Background())
	pc := &podClient{name: namespace + "/" + pod, stdin: inW, cancel: cancel, done: make(chan error, 1), waiting: map[string]chan line{}}
	go pc.read(outR)
	var stderr bytes.Buffer
	go func() {
		err := ex.StreamWithContext(ctx, remotecommand.StreamOptions{Stdin: inR, Stdout: outW, Stderr: &stderr})
		if err != nil {
			err = fmt.Errorf("exec in %s: %w (%s)", pc.name, err, strings.TrimSpace(stderr.String()))
		}
		outW.CloseWithError(errOr(err, io.EOF))
		pc.done <- err
	}()
	return pc, nil
}

func errOr(err, def error) error {
	if err != nil {
		return err
	}
	return def
}

// read hands each line of meshbed-demo get to the request of its id;
// when the session ends, every request still waiting fails.
func (p *podClient) read(r io.Reader) {
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		var l line
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			l = line{Error: fmt.Sprintf("client %s printed %q: %v", p.name, sc.Text(), err)}
		}
		p.mu.Lock()
		ch, ok := p.waiting[l.ID]
		delete(p.waiting, l.ID)
		p.mu.Unlock()
		if ok {
			ch <- l
		}
	}
	err := sc.Err()
	if err == nil {
		err = io.ErrUnexpectedEOF
	}
	p.mu.Lock()
	p.ended = fmt.Errorf("client %s: %w", p.name, err)
	for id, ch := range p.waiting {
		ch <- line{Error: p.ended.Error()}
		delete(p.waiting, id)
	}
	p.mu.Unlock()
}

// Get implements engine.Client: one request, answered by the line of its
// id. Requests run concurrently in the pod, as the simulator's do, so a
// request that waits for its timeout holds up no other.
func (p *podClient) Get(ctx context.Context) engine.Result {
	start := time.Now()
	ch := make(chan line, 1)
	p.mu.Lock()
	if p.ended != nil {
		err := p.ended
		p.mu.Unlock()
		return engine.Result{Start: start, Err: err}
	}
	p.next++
	id := strconv.FormatUint(p.next, 10)
	p.waiting[id] = ch
	_, err := p.stdin.Write([]byte(id + "\n"))
	if err != nil {
		delete(p.waiting, id)
	}
	p.mu.Unlock()
	if err != nil {
		return engine.Result{Start: start, Err: fmt.Errorf("client %s: %w", p.name, err)}
	}
	var l line
	select {
	case l = <-ch:
	case <-ctx.Done():
		p.mu.Lock()
		delete(p.waiting, id)
		p.mu.Unlock()
		return engine.Result{Start: start, Duration: time.Since(start), Err: ctx.Err()}
	}
	r := engine.Result{Start: start, Duration: time.Duration(l.Millis) * time.Millisecond, Cluster: l.Cluster}
	if l.Error != "" {
		r.Err, r.Cluster = errors.New(l.Error), ""
	}
	return r
}

func (p *podClient) close() {
	p.stdin.Close()
	select {
	case <-p.done:
	case <-time.After(5 * time.Second):
		p.cancel()
	}
}

// --- faults -------------------------------------------------------------------

const partitionChain = "MESHBED-PARTITION"

// kindNode is the Kind node (container) of a Kubernetes node.
func (t *Target) kindNode(c *kcluster, node string) (nodes.Node, error) {
	ns, err := t.provider.ListNodes(kindName(c))
	if err != nil {
		return nil, err
	}
	for _, n := range ns {
		if n.String() == node {
			return n, nil
		}
	}
	return nil, fmt.Errorf("cluster %s: no Kind node %s", c.spec.Name, node)
}

// kindName is the Kind cluster name of c: made here, or the context's
// kind-<name> convention.
func kindName(c *kcluster) string {
	if c.kind != "" {
		return c.kind
	}
	return strings.TrimPrefix(c.context, "kind-")
}

type endpointSet struct {
	ips      []string
	nodePort int32
}

func (t *Target) members(g []scenarios.Member) (map[string][]string, []endpointSet, error) {
	nodesOf := map[string][]string{} // cluster → Kubernetes node names
	var eps []endpointSet
	for _, m := range g {
		c, err := t.cluster(m.Cluster)
		if err != nil {
			return nil, nil, err
		}
		var es endpointSet
		es.nodePort = c.info.NodePort
		for i, n := range c.nodes {
			if m.Node != "" && scenarios.NodeName(i+1) != m.Node {
				continue
			}
			nodesOf[m.Cluster] = append(nodesOf[m.Cluster], n.Name)
			es.ips = append(es.ips, internalIP(&n))
		}
		eps = append(eps, es)
	}
	return nodesOf, eps, nil
}

func internalIP(n *corev1.Node) string {
	for _, a := range n.Status.Addresses {
		if a.Type == corev1.NodeInternalIP {
			return a.Address
		}
	}
	return ""
}

// Partition implements engine.Target: in every node of every group, rules
// that drop what is exchanged with the nodes of the other groups (plane
// both), all of it but the mesh-apiservers' node ports (data), or only
// those (control). With oneWay only the first group's nodes get rules, and
// only for what they send (as the simulator drops at the sender): traffic
// from the first group to the others is cut, the other way it flows.
func (t *Target) Partition(ctx context.Context, groups [][]scenarios.Member, plane scenarios.Plane, oneWay bool) error {
	type side struct {
		nodes map[string][]string
		eps   []endpointSet
	}
	sides := make([]side, len(groups))
	for i, g := range groups {
		n, e, err := t.members(g)
		if err != nil {
			return err
		}
		sides[i] = side{n, e}
	}
	t.mu.Lock()
	t.partitioned = true
	t.mu.Unlock()
	for i, s := range sides {
		if oneWay && i > 0 {
			break
		}
		var peers []endpointSet
		for j, o := range sides {
			if j != i {
				peers = append(peers, o.eps...)
			}
		}
		for cl, ns := range s.nodes {
			c := t.clusters[cl]
			for _, node := range ns {
				kn, err := t.kindNode(c, node)
				if err != nil {
					return err
				}
				rules := partitionRules(plane, c.info.NodePort, peers, oneWay)
				if err := applyRules(kn, rules); err != nil {
					return fmt.Errorf("partition on %s: %w", node, err)
				}
			}
		}
	}
	return nil
}

// partitionRules are the iptables rule specs (after "-A chain") that cut a
// node from peers; ownPort is the node port of the node's own cluster's
// mesh-apiserver. With sendOnly the rules match only what the node sends
// to the peers.
func partitionRules(plane scenarios.Plane, ownPort int32, peers []endpointSet, sendOnly bool) [][]string {
	var rules [][]string
	for _, p := range peers {
		for _, ip := range p.ips {
			peerPort, own := strconv.Itoa(int(p.nodePort)), strconv.Itoa(int(ownPort))
			// The control plane: connections to the peer's mesh-apiserver
			// and from the peer to this cluster's.
			ctl := [][]string{
				{"-d", ip, "-p", "tcp", "--dport", peerPort},
				{"-d", ip, "-p", "tcp", "--sport", own},
			}
			all := [][]string{{"-d", ip}}
			if !sendOnly {
				ctl = append(ctl,
					[]string{"-s", ip, "-p", "tcp", "--sport", peerPort},
					[]string{"-s", ip, "-p", "tcp", "--dport", own})
				all = append([][]string{{"-s", ip}}, all...)
			}
			switch plane {
			case scenarios.PlaneControl:
				for _, r := range ctl {
					rules = append(rules, append(r, "-j", "DROP"))
				}
			case scenarios.PlaneData:
				for _, r := range ctl {
					rules = append(rules, append(r, "-j", "RETURN"))
				}
				fallthrough
			default:
				for _, r := range all {
					rules = append(rules, append(r, "-j", "DROP"))
				}
			}
		}
	}
	return rules
}

func run(n nodes.Node, args ...string) error {
	var out bytes.Buffer
	cmd := n.Command(args[0], args[1:]...)
	cmd.SetStdout(&out)
	cmd.SetStderr(&out)
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(out.String()))
	}
	return nil
}

// applyRules adds rules to the node's partition chain, creating the chain
// and its jumps from INPUT, OUTPUT and FORWARD first.
func applyRules(n nodes.Node, rules [][]string) error {
	if err := run(n, "iptables", "-w", "-N", partitionChain); err != nil && !strings.Contains(err.Error(), "exists") {
		return err
	}
	for _, hook := range []string{"INPUT", "OUTPUT", "FORWARD"} {
		if run(n, "iptables", "-w", "-C", hook, "-j", partitionChain) != nil {
			if err := run(n, "iptables", "-w", "-I", hook, "1", "-j", partitionChain); err != nil {
				return err
			}
		}
	}
	for _, r := range rules {
		if err := run(n, append([]string{"iptables", "-w", "-A", partitionChain}, r...)...); err != nil {
			return err
		}
	}
	return nil
}

// Heal implements engine.Target: the partition chain of every node is
// emptied.
func (t *Target) Heal(context.Context) error {
	var errs []error
	for _, name := range t.order {
		c := t.clusters[name]
		ns, err := t.provider.ListNodes(kindName(c))
		if err != nil {
			errs = append(errs, err)
			continue
		}
		for _, n := range ns {
			if err := run(n, "iptables", "-w", "-F", partitionChain); err != nil && !strings.Contains(err.Error(), "No chain") {
				errs = append(errs, err)
			}
		}
	}
	if len(errs) == 0 {
		t.mu.Lock()
		t.partitioned = false
		t.mu.Unlock()
	}
	return errors.Join(errs...)
}

// Stop implements engine.Target: the apiserver's or kvstoremesh's
// Deployment scaled to zero; an agent kept off its node (or every node) by
// kind.AgentStoppedLabel, which makes the DaemonSet delete its pod. As in
// the simulator, kvstoremesh lives on its apiserver: stopping the
// apiserver stops kvstoremesh too, and starting it starts kvstoremesh
// again unless kvstoremesh was stopped on its own. Stop returns once the
// pods are gone.
func (t *Target) Stop(ctx context.Context, p scenarios.Process) error {
	switch p.Component {
	case scenarios.ComponentAPIServer:
		if err := t.scale(ctx, p.Cluster, kind.KVStoreMeshName, 0); err != nil {
			return err
		}
		if err := t.scale(ctx, p.Cluster, kind.APIServerName, 0); err != nil {
			return err
		}
	case scenarios.ComponentKVStoreMesh:
		if err := t.scale(ctx, p.Cluster, kind.KVStoreMeshName, 0); err != nil {
			return err
		}
	case scenarios.ComponentAgent:
		if err := t.labelAgentNodes(ctx, p, true); err != nil {
			return err
		}
	default:
		return fmt.Errorf("stop %s: %w", p.Component, engine.ErrUnsupported)
	}
	t.mu.Lock()
	t.stopped[p] = true
	t.mu.Unlock()
	return nil
}

// Start implements engine.Target; it returns once the component's pods
// run and are ready.
func (t *Target) Start(ctx context.Context, p scenarios.Process) error {
	km := scenarios.Process{Component: scenarios.ComponentKVStoreMesh, Cluster: p.Cluster}
	api := scenarios.Process{Component: scenarios.ComponentAPIServer, Cluster: p.Cluster}
	switch p.Component {
	case scenarios.ComponentAPIServer:
		if err := t.scale(ctx, p.Cluster, kind.APIServerName, 1); err != nil {
			return err
		}
		t.mu.Lock()
		kmStopped := t.stopped[km]
		t.mu.Unlock()
		if !kmStopped {
			if err := t.scale(ctx, p.Cluster, kind.KVStoreMeshName, 1); err != nil {
				return err
			}
		}
	case scenarios.ComponentKVStoreMesh:
		t.mu.Lock()
		apiStopped := t.stopped[api]
		t.mu.Unlock()
		if apiStopped {
			// The simulator refuses this too; kvstoremesh starts with
			// the apiserver.
			t.mu.Lock()
			delete(t.stopped, p)
			t.mu.Unlock()
			return fmt.Errorf("start kvstoremesh of %s: the apiserver is not running", p.Cluster)
		}
		if err := t.scale(ctx, p.Cluster, kind.KVStoreMeshName, 1); err != nil {
			return err
		}
	case scenarios.ComponentAgent:
		if err := t.labelAgentNodes(ctx, p, false); err != nil {
			return err
		}
	default:
		return fmt.Errorf("start %s: %w", p.Component, engine.ErrUnsupported)
	}
	t.mu.Lock()
	delete(t.stopped, p)
	t.mu.Unlock()
	return nil
}

// scale sets the replicas of one of meshbed's Deployments and waits until
// that many pods run ready (or none is left).
func (t *Target) scale(ctx context.Context, cluster, name string, n int) error {
	c, err := t.cluster(cluster)
	if err != nil {
		return err
	}
	patch := fmt.Sprintf(`{"spec":{"replicas":%d}}`, n)
	if _, err = c.kube.AppsV1().Deployments(kind.Namespace).Patch(ctx, name, types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
		return err
	}
	return eventually(ctx, 3*time.Minute, func() error {
		pods, err := componentPods(ctx, c, name)
		if err != nil {
			return err
		}
		if err := podsAre(pods, "", n); err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		return nil
	})
}

// agentNodes is the Kubernetes nodes of p: its node, or every node of the
// cluster.
func (t *Target) agentNodes(p scenarios.Process) (*kcluster, []string, error) {
	c, err := t.cluster(p.Cluster)
	if err != nil {
		return nil, nil, err
	}
	if p.Node == "" {
		names := make([]string, len(c.nodes))
		for i, n := range c.nodes {
			names[i] = n.Name
		}
		return c, names, nil
	}
	for i, n := range c.nodes {
		if scenarios.NodeName(i+1) == p.Node {
			return c, []string{n.Name}, nil
		}
	}
	return nil, nil, fmt.Errorf("cluster %s has no node %s", p.Cluster, p.Node)
}

// labelAgentNodes sets (stop) or removes kind.AgentStoppedLabel on p's
// nodes and waits for their agent pods to be gone, or to run ready again.
func (t *Target) labelAgentNodes(ctx context.Context, p scenarios.Process, stop bool) error {
	c, nodeNames, err := t.agentNodes(p)
	if err != nil {
		return err
	}
	patch := fmt.Sprintf(`{"metadata":{"labels":{%q:null}}}`, kind.AgentStoppedLabel)
	if stop {
		patch = fmt.Sprintf(`{"metadata":{"labels":{%q:"true"}}}`, kind.AgentStoppedLabel)
	}
	for _, n := range nodeNames {
		if _, err := c.kube.CoreV1().Nodes().Patch(ctx, n, types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
			return fmt.Errorf("%s: node %s: %w", p, n, err)
		}
	}
	want := 1
	if stop {
		want = 0
	}
	return eventually(ctx, 3*time.Minute, func() error {
		pods, err := componentPods(ctx, c, kind.AgentName)
		if err != nil {
			return err
		}
		for _, n := range nodeNames {
			if err := podsAre(pods, n, want); err != nil {
				return fmt.Errorf("%s: %w", p, err)
			}
		}
		return nil
	})
}

// componentPods lists the pods of a meshbed component.
func componentPods(ctx context.Context, c *kcluster, name string) ([]corev1.Pod, error) {
	pods, err := c.kube.CoreV1().Pods(kind.Namespace).List(ctx, metav1.ListOptions{LabelSelector: labels.Set{"app.kubernetes.io/name": name}.String()})
	if err != nil {
		return nil, err
	}
	return pods.Items, nil
}

// podsAre reports whether the pods (those of node, when not empty) are
// exactly want pods, all running and ready; for want 0, no pod at all,
// not even a terminating one.
func podsAre(pods []corev1.Pod, node string, want int) error {
	n, ready := 0, 0
	for i := range pods {
		if node != "" && pods[i].Spec.NodeName != node {
			continue
		}
		n++
		if pods[i].DeletionTimestamp == nil && podReady(&pods[i]) {
			ready++
		}
	}
	where := ""
	if node != "" {
		where = " on node " + node
	}
	if n != want || ready != want {
		return fmt.Errorf("%d pods%s (%d ready), want %d ready", n, where, ready, want)
	}
	return nil
}

// Restart implements engine.Target: the component's pods (for an agent,
// those of its node, or of every node) are deleted and come back; it
// returns once they run ready again.
func (t *Target) Restart(ctx context.Context, p scenarios.Process) error {
	c, err := t.cluster(p.Cluster)
	if err != nil {
		return err
	}
	var name string
	var nodeNames []string
	switch p.Component {
	case scenarios.ComponentAPIServer:
		// kvstoremesh lives on its apiserver (see Stop): it restarts too.
		t.mu.Lock()
		kmStopped := t.stopped[scenarios.Process{Component: scenarios.ComponentKVStoreMesh, Cluster: p.Cluster}]
		t.mu.Unlock()
		if err := t.restartPods(ctx, c, p, kind.APIServerName, nil); err != nil || kmStopped {
			return err
		}
		return t.restartPods(ctx, c, p, kind.KVStoreMeshName, nil)
	case scenarios.ComponentKVStoreMesh:
		name = kind.KVStoreMeshName
	case scenarios.ComponentAgent:
		name = kind.AgentName
		if _, nodeNames, err = t.agentNodes(p); err != nil {
			return err
		}
	default:
		return fmt.Errorf("restart %s: %w", p.Component, engine.ErrUnsupported)
	}
	return t.restartPods(ctx, c, p, name, nodeNames)
}

// restartPods deletes the pods of component name (on nodeNames only, when
// set) and waits until new ones run ready in their place.
func (t *Target) restartPods(ctx context.Context, c *kcluster, p scenarios.Process, name string, nodeNames []string) error {
	pods, err := componentPods(ctx, c, name)
	if err != nil {
		return err
	}
	old := map[types.UID]bool{}
	for _, pod := range pods {
		if nodeNames != nil && !slices.Contains(nodeNames, pod.Spec.NodeName) {
			continue
		}
		old[pod.UID] = true
		if err := c.kube.CoreV1().Pods(kind.Namespace).Delete(ctx, pod.Name, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
			return err
		}
	}
	return eventually(ctx, 3*time.Minute, func() error {
		pods, err := componentPods(ctx, c, name)
		if err != nil {
			return err
		}
		var fresh []corev1.Pod
		for _, pod := range pods {
			if old[pod.UID] {
				return fmt.Errorf("%s: pod %s still there", p, pod.Name)
			}
			fresh = append(fresh, pod)
		}
		if nodeNames == nil {
			return podsAre(fresh, "", 1)
		}
		for _, n := range nodeNames {
			if err := podsAre(fresh, n, 1); err != nil {
				return fmt.Errorf("%s: %w", p, err)
			}
		}
		return nil
	})
}

// --- reads --------------------------------------------------------------------

// report runs `meshbed-agent state` in the agent pod of each node.
func (t *Target) reports(ctx context.Context, c *kcluster) ([]*state.NodeReport, error) {
	pods, err := c.kube.CoreV1().Pods(kind.Namespace).List(ctx, metav1.ListOptions{LabelSelector: labels.Set{"app.kubernetes.io/name": kind.AgentName}.String()})
	if err != nil {
		return nil, err
	}
	byNode := map[string]string{}
	for _, p := range pods.Items {
		if p.DeletionTimestamp == nil && p.Status.Phase == corev1.PodRunning {
			byNode[p.Spec.NodeName] = p.Name
		}
	}
	out := make([]*state.NodeReport, len(c.nodes))
	for i, n := range c.nodes {
		pod, ok := byNode[n.Name]
		if !ok {
			continue // agent not running there
		}
		b, err := execOut(ctx, c, kind.Namespace, pod, "agent", "/usr/local/bin/meshbed-agent", "state")
		if err != nil {
			return nil, fmt.Errorf("node %s: %w", n.Name, err)
		}
		var r state.NodeReport
		if err := json.Unmarshal(b, &r); err != nil {
			return nil, fmt.Errorf("node %s: meshbed-agent state: %w", n.Name, err)
		}
		out[i] = &r
	}
	return out, nil
}

func execOut(ctx context.Context, c *kcluster, namespace, pod, container string, cmd ...string) ([]byte, error) {
	req := c.kube.CoreV1().RESTClient().Post().Resource("pods").Namespace(namespace).Name(pod).SubResource("exec").
		VersionedParams(&corev1.PodExecOptions{Container: container, Command: cmd, Stdout: true, Stderr: true}, scheme.ParameterCodec)
	ex, err := remotecommand.NewSPDYExecutor(c.rest, "POST", req.URL())
	if err != nil {
		return nil, err
	}
	var stdout, stderr bytes.Buffer
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := ex.StreamWithContext(ctx, remotecommand.StreamOptions{Stdout: &stdout, Stderr: &stderr}); err != nil {
		return nil, fmt.Errorf("exec %s in %s/%s: %w (%s)", strings.Join(cmd, " "), namespace, pod, err, strings.TrimSpace(stderr.String()))
	}
	return stdout.Bytes(), nil
}

// Nodes implements engine.Reader.
func (t *Target) Nodes(ctx context.Context, cluster string) ([]engine.NodeState, error) {
	c, err := t.cluster(cluster)
	if err != nil {
		return nil, err
	}
	rs, err := t.reports(ctx, c)
	if err != nil {
		return nil, fmt.Errorf("cluster %s: %w", cluster, err)
	}
	var out []engine.NodeState
	for i, r := range rs {
		ns := engine.NodeState{Node: scenarios.NodeName(i + 1)}
		if r != nil {
			ns.Running, ns.Desired, ns.Services, ns.IPCache = true, r.Desired, r.Services, r.IPCache
		}
		out = append(out, ns)
	}
	return out, nil
}

// Backends implements engine.Target from every node's BPF service map.
func (t *Target) Backends(ctx context.Context, cluster, namespace, service string) ([]engine.NodeBackends, error) {
	c, err := t.cluster(cluster)
	if err != nil {
		return nil, err
	}
	svc, err := c.kube.CoreV1().Services(namespace).Get(ctx, service, metav1.GetOptions{})
	if err != nil {
		return nil, err
	}
	ip, err := netip.ParseAddr(svc.Spec.ClusterIP)
	if err != nil {
		return nil, fmt.Errorf("service %s/%s has no ClusterIP", namespace, service)
	}
	rs, err := t.reports(ctx, c)
	if err != nil {
		return nil, err
	}
	var out []engine.NodeBackends
	for i, r := range rs {
		nb := engine.NodeBackends{Node: scenarios.NodeName(i + 1)}
		if r == nil {
			return nil, fmt.Errorf("node %s: no agent running", c.nodes[i].Name)
		}
		for _, s := range r.Services {
			if s.Frontend.IP != ip {
				continue
			}
			for _, b := range s.Backends {
				if b.State == state.BackendActive && !slices.Contains(nb.ClusterIDs, b.ClusterID) {
					nb.ClusterIDs = append(nb.ClusterIDs, b.ClusterID)
				}
			}
		}
		slices.Sort(nb.ClusterIDs)
		out = append(out, nb)
	}
	return out, nil
}

// Policies implements engine.Target from the agents' reports.
func (t *Target) Policies(ctx context.Context, cluster string) (map[string][]string, map[string]string, error) {
	c, err := t.cluster(cluster)
	if err != nil {
		return nil, nil, err
	}
	rs, err := t.reports(ctx, c)
	if err != nil {
		return nil, nil, err
	}
	warnings, rejected := map[string][]string{}, map[string]string{}
	for _, r := range rs {
		if r == nil {
			continue
		}
		for ref, ws := range r.PolicyWarnings {
			for _, w := range ws {
				if !slices.Contains(warnings[ref], w) {
					warnings[ref] = append(warnings[ref], w)
				}
			}
		}
		maps.Copy(rejected, r.PolicyErrors)
	}
	return warnings, rejected, nil
}

// Objects implements engine.Reader.
func (t *Target) Objects(ctx context.Context, cluster string) (*engine.ClusterObjects, error) {
	c, err := t.cluster(cluster)
	if err != nil {
		return nil, err
	}
	svcs, err := c.kube.CoreV1().Services("").List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, err
	}
	eps, err := c.kube.DiscoveryV1().EndpointSlices("").List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, err
	}
	pods, err := c.kube.CoreV1().Pods("").List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, err
	}
	return &engine.ClusterObjects{Services: svcs.Items, EndpointSlices: eps.Items, Pods: pods.Items}, nil
}

func (t *Target) kv(ctx context.Context, cluster string) (*kvstore.Client, error) {
	c, err := t.cluster(cluster)
	if err != nil {
		return nil, err
	}
	cfg, err := clustermesh.KVStoreConfig(t.opts.CADir, c.info)
	if err != nil {
		return nil, fmt.Errorf("cluster %s: %w", cluster, err)
	}
	return kvstore.Connect(ctx, cfg)
}

// KVGet implements engine.Reader.
func (t *Target) KVGet(ctx context.Context, cluster, key string) ([]byte, bool, error) {
	kv, err := t.kv(ctx, cluster)
	if err != nil {
		return nil, false, err
	}
	defer kv.Close()
	return kv.Get(ctx, key)
}

// KVList implements engine.Reader.
func (t *Target) KVList(ctx context.Context, cluster, prefix string) (map[string][]byte, error) {
	kv, err := t.kv(ctx, cluster)
	if err != nil {
		return nil, err
	}
	defer kv.Close()
	return kv.ListKeyPrefix(ctx, prefix)
}

// SettleTimeout is the engine's settle timeout on Kind: pods start and
// agents sync in seconds, not milliseconds.
const SettleTimeout = 5 * time.Minute

// ParseContexts reads CLUSTER=CONTEXT pairs (the --context flags, or
// MESHBED_KIND_CONTEXTS split at commas) into Options.Contexts.
func ParseContexts(pairs []string) (map[string]string, error) {
	if len(pairs) == 0 {
		return nil, nil
	}
	m := map[string]string{}
	var errs []error
	for _, f := range pairs {
		name, kctx, ok := strings.Cut(f, "=")
		switch {
		case !ok || name == "" || kctx == "":
			errs = append(errs, fmt.Errorf("--context %q: want CLUSTER=CONTEXT", f))
		case m[name] != "":
			errs = append(errs, fmt.Errorf("--context %q: cluster %s given twice", f, name))
		default:
			m[name] = kctx
		}
	}
	return m, errors.Join(errs...)
}
