package kvstoremesh

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	dynamicfake "k8s.io/client-go/dynamic/fake"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/meshbed/meshbed/datapath/state"
	"github.com/meshbed/meshbed/mesh/agent"
	"github.com/meshbed/meshbed/mesh/identity"
	"github.com/meshbed/meshbed/mesh/remote"
	"github.com/meshbed/meshbed/mesh/service"
)

// datapath records the agent's desired states: for one watched service,
// the set of active backends of each state, with the time it was applied.
type datapath struct {
	service string

	mu      sync.Mutex
	current string // sorted "ip@cluster" list of the last state
	applied time.Time
	changed chan struct{} // closed and replaced when current changes
	history []string      // every distinct successive set
}

func newDatapath(service string) *datapath {
	return &datapath{service: service, changed: make(chan struct{})}
}

func (d *datapath) Apply(s *state.State) error {
	var set []string
	for _, svc := range s.Services {
		if svc.Name != d.service {
			continue
		}
		for _, b := range svc.Backends {
			if b.State == state.BackendActive {
				if e := fmt.Sprintf("%s@%d", b.IP, b.ClusterID); !slices.Contains(set, e) {
					set = append(set, e)
				}
			}
		}
	}
	slices.Sort(set)
	now := time.Now()
	d.mu.Lock()
	defer d.mu.Unlock()
	if cur := strings.Join(set, ","); cur != d.current {
		d.current, d.applied = cur, now
		d.history = append(d.history, cur)
		close(d.changed)
		d.changed = make(chan struct{})
	}
	return nil
}

// sets returns the backend sets applied so far, in order.
func (d *datapath) sets() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return slices.Clone(d.history)
}

// backends returns the current backend set and when it was applied.
func (d *datapath) backends() (string, time.Time, <-chan struct{}) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.current, d.applied, d.changed
}

// waitFor blocks until the backend set satisfies ok and returns that set
// and when it was applied.
func (d *datapath) waitFor(ctx context.Context, ok func(set string) bool) (string, time.Time, error) {
	for {
		cur, at, changed := d.backends()
		if ok(cur) {
			return cur, at, nil
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return "", time.Time{}, fmt.Errorf("backends %q: %w", cur, ctx.Err())
		}
	}
}

// clusterIDs lists the clusters present in a backend set.
func clusterIDs(set string) []string {
	var ids []string
	for e := range strings.SplitSeq(set, ",") {
		if _, id, ok := strings.Cut(e, "@"); ok && !slices.Contains(ids, id) {
			ids = append(ids, id)
		}
	}
	slices.Sort(ids)
	return ids
}

func ptr[T any](v T) *T { return &v }

// kubeObjects is what an agent's cluster holds: its node, the global
// service rebel-base (port "http") and an EndpointSlice with backends.
func kubeObjects(id uint32, backends ...string) []runtime.Object {
	slice := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Name: "rebel-base-1", Namespace: "default",
			Labels: map[string]string{discoveryv1.LabelServiceName: "rebel-base"}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: ptr("http"), Port: ptr(int32(80)), Protocol: ptr(corev1.ProtocolTCP)}},
	}
	for _, b := range backends {
		slice.Endpoints = append(slice.Endpoints, discoveryv1.Endpoint{Addresses: []string{b},
			Conditions: discoveryv1.EndpointConditions{Ready: ptr(true), Serving: ptr(true)}})
	}
	clusterIP := fmt.Sprintf("10.96.%d.10", id)
	return []runtime.Object{
		&corev1.Node{
			ObjectMeta: metav1.ObjectMeta{Name: "node-1"},
			Spec:       corev1.NodeSpec{PodCIDR: fmt.Sprintf("10.%d.1.0/24", id)},
			Status: corev1.NodeStatus{Addresses: []corev1.NodeAddress{
				{Type: corev1.NodeInternalIP, Address: fmt.Sprintf("172.31.%d.10", id)}}},
		},
		&corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Name: "rebel-base", Namespace: "default",
				Annotations: map[string]string{service.AnnotationGlobal: "true"}},
			Spec: corev1.ServiceSpec{ClusterIP: clusterIP, ClusterIPs: []string{clusterIP},
				Ports: []corev1.ServicePort{{Name: "http", Port: 80, Protocol: corev1.ProtocolTCP}}},
		},
		slice,
	}
}

// agentConfig describes an agent of cluster name/id reading every remote
// through the kvstoremesh cache in its local etcd.
type agentConfig struct {
	name      string
	id        uint32
	localEtcd []string
	remotes   []string
	// tls is appended to every config file (trusted-ca-file etc.).
	tls string
	// pollInterval of the config directory; zero means 50 ms.
	pollInterval time.Duration
	kube         *fake.Clientset
	dyn          *dynamicfake.FakeDynamicClient
	logger       *slog.Logger
}

// dynamicClient is an in-memory dynamic API serving what the agent and the
// mesh-apiserver read (MeshIdentities, CiliumNetworkPolicies).
func dynamicClient() *dynamicfake.FakeDynamicClient {
	kinds := identity.ListKinds()
	kinds[agent.CiliumNetworkPolicies] = "CiliumNetworkPolicyList"
	return dynamicfake.NewSimpleDynamicClientWithCustomListKinds(runtime.NewScheme(), map[schema.GroupVersionResource]string(kinds))
}

// startAgent runs a real agent (fake Kubernetes clients, recording
// datapath) whose remote.Manager config dir has, for each remote cluster,
// a file pointing at the LOCAL etcd: it reads the kvstoremesh cache.
func startAgent(tb testing.TB, ac agentConfig) *datapath {
	tb.Helper()
	dir := tb.TempDir()
	for _, r := range ac.remotes {
		writeConfig(tb, dir, r, ac.localEtcd, ac.tls)
	}
	logger := ac.logger
	if logger == nil {
		logger = testLogger(tb)
	}
	if ac.pollInterval == 0 {
		ac.pollInterval = 50 * time.Millisecond
	}
	mgr, err := remote.New(remote.Config{
		ClusterName: ac.name, ClusterID: ac.id, Dir: dir,
		PollInterval: ac.pollInterval,
		MinBackoff:   20 * time.Millisecond, MaxBackoff: 300 * time.Millisecond,
		KeepAliveTime: 500 * time.Millisecond, KeepAliveTimeout: 500 * time.Millisecond,
		RequestTimeout: 2 * time.Second,
		Logger:         logger,
	})
	if err != nil {
		tb.Fatal(err)
	}
	dyn := ac.dyn
	if dyn == nil {
		dyn = dynamicClient()
	}
	dp := newDatapath("default/rebel-base")
	a, err := agent.New(agent.Config{
		ClusterName: ac.name, ClusterID: ac.id, NodeName: "node-1",
		Kube: ac.kube, Dynamic: dyn, Datapath: dp, Remote: mgr,
		Mode: service.ModeWithdraw, SyncTimeout: time.Minute,
		Logger: logger,
	})
	if err != nil {
		tb.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	tb.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			tb.Errorf("agent Run: %v", err)
		}
	})
	return dp
}

// TestAgentThroughCache runs a real agent of cluster1 that reads cluster2
// only through the kvstoremesh cache: cluster2's backends are merged, are
// withdrawn within the bound when cluster2's etcd stops, and come back
// (as cluster2 now exports them) when it restarts.
func TestAgentThroughCache(t *testing.T) {
	l := newLocal(t)
	s := newSource(t, "cluster2", 2)
	s.basic() // rebel-base backends 10.2.0.1 and 10.2.0.3
	l.connectRemote(s)
	l.start(fastConfig(t, l)) // default loss detection
	dp := startAgent(t, agentConfig{
		name: localName, id: localID, localEtcd: l.srv.Endpoints(), remotes: []string{"cluster2"},
		kube: fake.NewClientset(kubeObjects(localID, "10.1.1.5")...),
	})
	ctx := ctxT(t)
	want := func(set string) func(string) bool { return func(cur string) bool { return cur == set } }

	if _, _, err := dp.waitFor(ctx, want("10.1.1.5@1,10.2.0.1@2,10.2.0.3@2")); err != nil {
		t.Fatalf("merged backends: %v", err)
	}

	s.stopWriter()
	lostAt := time.Now()
	s.srv.Stop()
	_, at, err := dp.waitFor(ctx, want("10.1.1.5@1"))
	if err != nil {
		t.Fatalf("withdrawal: %v", err)
	}
	t.Logf("agent withdrew cluster2's backends %v after its etcd stopped (bound %v)", at.Sub(lostAt).Round(time.Millisecond), lossBound)
	if d := at.Sub(lostAt); d > lossBound {
		t.Errorf("withdrawn after %v, bound %v", d, lossBound)
	}

	lost := len(dp.sets())
	s.srv.Restart()
	s.startWriter()
	s.config()
	s.identity(s.localIdentity(1), "rebel-base")
	s.ip("10.2.0.7", s.localIdentity(1))
	s.service("rebel-base", "10.2.0.7")
	s.synced()
	back := time.Now()
	s.flush()
	_, at, err = dp.waitFor(ctx, func(cur string) bool { return slices.Equal(clusterIDs(cur), []string{"1", "2"}) })
	if err != nil {
		t.Fatalf("restore: %v", err)
	}
	t.Logf("agent restored cluster2's backends %v after its state was republished", at.Sub(back).Round(time.Millisecond))
	// No stale backend of cluster2's previous run, ever: every state since
	// the loss is either without cluster2 or with its republished backends.
	for _, set := range dp.sets()[lost:] {
		if set != "10.1.1.5@1" && set != "10.1.1.5@1,10.2.0.7@2" {
			t.Errorf("backends after the loss %q, want none or only the republished one of cluster2", set)
		}
	}
	l.equal(s, wait)
}
