package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	dynamicfake "k8s.io/client-go/dynamic/fake"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/meshbed/meshbed/datapath/endpoint"
	"github.com/meshbed/meshbed/datapath/netns"
	"github.com/meshbed/meshbed/datapath/node"
	"github.com/meshbed/meshbed/datapath/state"
	"github.com/meshbed/meshbed/internal/testenv"
	"github.com/meshbed/meshbed/mesh/agent"
	"github.com/meshbed/meshbed/mesh/agent/cni"
	"github.com/meshbed/meshbed/mesh/identity"
)

const testPodCIDR = "10.10.1.0/24"

// discardDatapath accepts every desired state: the unprivileged tests
// exercise the CNI wiring, not the datapath.
type discardDatapath struct{}

func (discardDatapath) Apply(*state.State) error { return nil }

// recordingPlumber remembers plumbing requests instead of creating links.
type recordingPlumber struct {
	mu  sync.Mutex
	got []state.PlumbRequest
}

func (p *recordingPlumber) Plumb(r state.PlumbRequest) (string, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.got = append(p.got, r)
	return fmt.Sprintf("lxc%d", r.ID), nil
}

func (p *recordingPlumber) Unplumb(string) error { return nil }

// runAgent runs a real agent of node-1 (pod CIDR testPodCIDR) against an
// in-memory Kubernetes API holding the pod default/x-wing.
func runAgent(t *testing.T, dp state.Datapath, pl state.Plumber) *agent.Agent {
	t.Helper()
	kube := fake.NewClientset(
		&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-1"}, Spec: corev1.NodeSpec{PodCIDR: testPodCIDR},
			Status: corev1.NodeStatus{Addresses: []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: "172.31.1.10"}}}},
		&corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "x-wing", Namespace: "default", Labels: map[string]string{"name": "x-wing"}}},
	)
	kinds := identity.ListKinds()
	kinds[agent.CiliumNetworkPolicies] = "CiliumNetworkPolicyList"
	dyn := dynamicfake.NewSimpleDynamicClientWithCustomListKinds(runtime.NewScheme(), map[schema.GroupVersionResource]string(kinds))
	a, err := agent.New(agent.Config{
		ClusterName: "cluster1", ClusterID: 1, NodeName: "node-1", Kube: kube, Dynamic: dyn,
		Datapath: dp, Plumber: pl, SyncTimeout: time.Second, StateDir: t.TempDir(),
		Logger: slog.New(slog.NewTextHandler(t.Output(), nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("agent: %v", err)
		}
	})
	return a
}

// startCNI serves the CNI protocol for a on a fresh socket, stopped at
// cleanup.
func startCNI(t *testing.T, a agentEndpoints) (client *cni.Client, sock string) {
	t.Helper()
	sock = filepath.Join(t.TempDir(), "run", "cni.sock")
	stop := serveCNI(context.Background(), a, sock, slog.New(slog.NewTextHandler(t.Output(), nil)))
	t.Cleanup(stop)
	return cni.NewClient(sock), sock
}

func waitReady(t *testing.T, c *cni.Client) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := c.Health(t.Context())
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("agent not ready: %v", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestCNIServerOnAgent drives a real agent through the CNI socket.
func TestCNIServerOnAgent(t *testing.T) {
	pl := &recordingPlumber{}
	a := runAgent(t, discardDatapath{}, pl)
	c, sock := startCNI(t, a)
	waitReady(t, c)
	ctx := t.Context()
	pod := cni.Pod{Namespace: "default", Name: "x-wing"}

	ep, err := c.Add(ctx, cni.AddRequest{ContainerID: "s1", NetNS: "/var/run/netns/cni-1", IfName: "eth0", Namespace: "default", Pod: "x-wing"})
	if err != nil {
		t.Fatal(err)
	}
	if !netip.MustParsePrefix(testPodCIDR).Contains(ep.IP) {
		t.Errorf("pod IP %s not in the node's pod CIDR %s", ep.IP, testPodCIDR)
	}
	want := cni.Endpoint{Namespace: "default", Pod: "x-wing", IP: ep.IP, Gateway: endpoint.DefaultGateway,
		HostInterface: "lxc1", HostMAC: endpoint.HostMAC(ep.IP).String(), PodInterface: "eth0", PodMAC: endpoint.PodMAC(ep.IP).String()}
	if ep != want {
		t.Errorf("endpoint\n got %+v\nwant %+v", ep, want)
	}
	if len(pl.got) != 1 || pl.got[0].NetNS != "/var/run/netns/cni-1" || pl.got[0].IP != ep.IP {
		t.Errorf("plumbing requests %+v", pl.got)
	}
	if got, err := c.Get(ctx, pod, "s1"); err != nil || got != want {
		t.Errorf("CHECK: %+v, %v", got, err)
	}
	if eps := a.Endpoints(); len(eps) != 1 || eps[0].IP != ep.IP {
		t.Errorf("agent endpoints %+v", eps)
	}

	_, err = c.Add(ctx, cni.AddRequest{ContainerID: "s2", NetNS: "/n", IfName: "net1", Namespace: "default", Pod: "x-wing"})
	if !errors.Is(err, &cni.Error{Code: cni.CodeInvalidEnvironment}) || !strings.Contains(err.Error(), "net1") {
		t.Errorf("ADD with CNI_IFNAME net1: %v", err)
	}
	_, err = c.Add(ctx, cni.AddRequest{ContainerID: "s3", NetNS: "/n", IfName: "eth0", Namespace: "default", Pod: "no-such-pod"})
	if !errors.Is(err, &cni.Error{Code: cni.CodeAgent}) || !strings.Contains(err.Error(), "no-such-pod") {
		t.Errorf("ADD of an unknown pod: %v", err)
	}

	if err := c.Delete(ctx, pod, "s1"); err != nil {
		t.Fatal(err)
	}
	if eps := a.Endpoints(); len(eps) != 0 {
		t.Errorf("endpoints after DEL: %+v", eps)
	}
	if _, err := c.Get(ctx, pod, "s1"); !errors.Is(err, cni.ErrNotFound) {
		t.Errorf("CHECK after DEL: %v", err)
	}
	if _, err := os.Stat(sock); err != nil {
		t.Errorf("socket: %v", err)
	}
}

// unreadyAgent has never applied a state.
type unreadyAgent struct{ agentEndpoints }

func (unreadyAgent) State() (*state.State, error, bool) { return nil, nil, false }

type failingAgent struct{ agentEndpoints }

func (failingAgent) State() (*state.State, error, bool) {
	return &state.State{}, errors.New("map update failed"), true
}

func TestCNIReadiness(t *testing.T) {
	for _, tc := range []struct {
		name string
		a    agentEndpoints
		want string // "" for ready
	}{
		{"nothing applied", unreadyAgent{}, "no desired state"},
		{"apply failed", failingAgent{}, "map update failed"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := cniBackend{tc.a}.Ready()
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Ready() = %v, want an error about %q", err, tc.want)
			}
		})
	}
}

// TestServeCNIRetriesAndStops: a socket path that cannot be bound at first
// is retried; stop removes the socket.
func TestServeCNIRetriesAndStops(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "cni.sock")
	// A directory where the socket should be: Listen fails until it goes.
	if err := os.Mkdir(sock, 0o755); err != nil {
		t.Fatal(err)
	}
	failures := make(chan string, 16)
	log := slog.New(&notifyHandler{Handler: slog.NewTextHandler(t.Output(), nil), msgs: failures})
	stop := serveCNI(context.Background(), unreadyAgent{}, sock, log)
	select {
	case msg := <-failures:
		if !strings.Contains(msg, "CNI server down") {
			t.Fatalf("first log %q, want the failure to bind", msg)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no failure logged for an unusable socket path")
	}
	if err := os.Remove(sock); err != nil {
		t.Fatal(err)
	}
	c := cni.NewClient(sock)
	deadline := time.Now().Add(5 * time.Second)
	for {
		err := c.Health(t.Context())
		if errors.Is(err, &cni.Error{Code: cni.CodeTryAgainLater}) && strings.Contains(err.Error(), "not ready") {
			break // the server answers (the agent is not ready)
		}
		if time.Now().After(deadline) {
			t.Fatalf("CNI server never came up: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	stop()
	if _, err := os.Lstat(sock); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("socket after stop: %v", err)
	}
	if stop := serveCNI(context.Background(), unreadyAgent{}, "", nil); stop == nil {
		t.Error("disabled server returned no stop function")
	} else {
		stop()
	}
}

// notifyHandler passes the message of every record to msgs (without
// blocking).
type notifyHandler struct {
	slog.Handler
	msgs chan<- string
}

func (h *notifyHandler) Handle(ctx context.Context, r slog.Record) error {
	select {
	case h.msgs <- r.Message:
	default:
	}
	return h.Handler.Handle(ctx, r)
}

// TestIntegrationCNIPlumbsPod runs the whole node path as the runtime does:
// the meshbed-cni binary, executed with the CNI environment, reaches a real
// agent over its socket, and the agent's real datapath plumbs the pod's
// network namespace.
func TestIntegrationCNIPlumbsPod(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the plugin binary and loads BPF programs")
	}
	testenv.Privileged(t)
	suffix := fmt.Sprintf("%d", time.Now().UnixNano()%1e9)
	nodeNS, err := netns.New("cni-node-"+suffix, endpoint.NodeSysctls...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nodeNS.Close() })
	podNS, err := netns.New("cni-pod-" + suffix)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { podNS.Close() })
	dp, err := node.New(node.Config{NS: nodeNS, NodeIP: netip.MustParseAddr("172.31.1.10"), ClusterID: 1,
		Routing: state.Tunnel, Logger: slog.New(slog.NewTextHandler(t.Output(), nil))})
	if err != nil {
		t.Fatal(err)
	}
	// Cleanups run last-in first-out: the agent stops before its datapath
	// closes, and the datapath before its namespace.
	t.Cleanup(func() { dp.Close() })
	a := runAgent(t, dp, dp)
	c, sock := startCNI(t, a)
	waitReady(t, c)

	plugin := filepath.Join(t.TempDir(), "meshbed-cni")
	if out, err := exec.Command("go", "build", "-o", plugin, "../cmd/meshbed-cni").CombinedOutput(); err != nil {
		t.Fatalf("build plugin: %v\n%s", err, out)
	}
	conf := fmt.Sprintf(`{"cniVersion":"1.0.0","name":"meshbed","type":"meshbed-cni","socketPath":%q}`, sock)
	invoke := func(command string) []byte {
		cmd := exec.Command(plugin)
		cmd.Env = []string{"CNI_COMMAND=" + command, "CNI_CONTAINERID=sandbox-" + suffix, "CNI_NETNS=" + podNS.Path(),
			"CNI_IFNAME=eth0", "CNI_PATH=" + filepath.Dir(plugin), "CNI_ARGS=K8S_POD_NAMESPACE=default;K8S_POD_NAME=x-wing"}
		cmd.Stdin = strings.NewReader(conf)
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("%s: %v: %s", command, err, out)
		}
		return out
	}
	var res struct {
		IPs []struct{ Address, Gateway string }
	}
	out := invoke("ADD")
	if err := json.Unmarshal(out, &res); err != nil || len(res.IPs) != 1 {
		t.Fatalf("ADD result %s: %v", out, err)
	}
	h, err := podNS.Handle()
	if err != nil {
		t.Fatal(err)
	}
	link, err := h.LinkByName("eth0")
	if err != nil {
		t.Fatalf("pod has no eth0: %v", err)
	}
	addrs, err := h.AddrList(link, netlink.FAMILY_V4)
	if err != nil || len(addrs) != 1 || addrs[0].IPNet.String() != res.IPs[0].Address {
		t.Errorf("pod eth0 addresses %v (%v), result says %s", addrs, err, res.IPs[0].Address)
	}
	routes, err := h.RouteList(link, netlink.FAMILY_V4)
	if err != nil {
		t.Fatal(err)
	}
	var gw string
	for _, r := range routes {
		if r.Dst == nil || r.Dst.String() == "0.0.0.0/0" {
			gw = r.Gw.String()
		}
	}
	if gw != res.IPs[0].Gateway {
		t.Errorf("pod default route via %q, result says %q (routes %v)", gw, res.IPs[0].Gateway, routes)
	}
	invoke("DEL")
	if _, err := h.LinkByName("eth0"); err == nil {
		t.Error("pod still has eth0 after DEL")
	}
	if eps := a.Endpoints(); len(eps) != 0 {
		t.Errorf("agent endpoints after DEL: %+v", eps)
	}
}
