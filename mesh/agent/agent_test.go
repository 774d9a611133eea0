package agent

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
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
	"github.com/meshbed/meshbed/internal/testenv"
	"github.com/meshbed/meshbed/mesh/identity"
	"github.com/meshbed/meshbed/mesh/service"
	"github.com/meshbed/meshbed/mesh/wire"
)

// recorder is the agent's output under test: the desired states it hands
// to the datapath.
type recorder struct {
	mu   sync.Mutex
	last *state.State
	n    int
}

func (r *recorder) Apply(s *state.State) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.last, r.n = s, r.n+1
	return nil
}

func (r *recorder) get() *state.State {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.last
}

// scripted is a Remote whose sink the test drives.
type scripted struct{ sink chan RemoteSink }

func (s *scripted) Run(ctx context.Context, sink RemoteSink) error {
	s.sink <- sink
	<-ctx.Done()
	return nil
}

type plumber struct{}

func (plumber) Plumb(r state.PlumbRequest) (string, error) {
	return fmt.Sprintf("lxc%d", r.ID), nil
}
func (plumber) Unplumb(string) error { return nil }

func eventually(t *testing.T, what string, cond func() error) {
	t.Helper()
	testenv.Eventually(t, 5*time.Second, func() error {
		if err := cond(); err != nil {
			return fmt.Errorf("%s: %w", what, err)
		}
		return nil
	})
}

func ptr[T any](v T) *T { return &v }

func backendClusters(s *state.State, name string) ([]uint32, error) {
	if s == nil {
		return nil, fmt.Errorf("no state applied yet")
	}
	for _, svc := range s.Services {
		if svc.Name == name {
			var ids []uint32
			for _, b := range svc.Backends {
				if b.State == state.BackendActive && !slices.Contains(ids, b.ClusterID) {
					ids = append(ids, b.ClusterID)
				}
			}
			slices.Sort(ids)
			return ids, nil
		}
	}
	return nil, fmt.Errorf("service %s not programmed (services: %d)", name, len(s.Services))
}

func wantClusters(dp *recorder, name string, want ...uint32) func() error {
	return func() error {
		got, err := backendClusters(dp.get(), name)
		if err != nil {
			return err
		}
		if !slices.Equal(got, want) {
			return fmt.Errorf("%s backends from clusters %v, want %v", name, got, want)
		}
		return nil
	}
}

func setup(t *testing.T, mode service.Mode) (*Agent, *recorder, RemoteSink, *fake.Clientset) {
	t.Helper()
	return setupRestored(t, mode, nil)
}

func setupRestored(t *testing.T, mode service.Mode, restored *state.State) (*Agent, *recorder, RemoteSink, *fake.Clientset) {
	t.Helper()
	return setupState(t, mode, restored, t.TempDir())
}

// setupState is setupRestored with a given state directory and further
// Kubernetes objects.
func setupState(t *testing.T, mode service.Mode, restored *state.State, stateDir string, objs ...runtime.Object) (*Agent, *recorder, RemoteSink, *fake.Clientset) {
	t.Helper()
	kube := fake.NewClientset(append([]runtime.Object{
		&corev1.Node{
			ObjectMeta: metav1.ObjectMeta{Name: "node-1"},
			Spec:       corev1.NodeSpec{PodCIDR: "10.1.1.0/24"},
			Status:     corev1.NodeStatus{Addresses: []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: "172.31.1.10"}}},
		},
		&corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Name: "rebel-base", Namespace: "default",
				Annotations: map[string]string{service.AnnotationGlobal: "true"}},
			Spec: corev1.ServiceSpec{ClusterIP: "10.0.1.10", ClusterIPs: []string{"10.0.1.10"},
				Ports: []corev1.ServicePort{{Name: "http", Port: 80, Protocol: corev1.ProtocolTCP}}},
		},
		&discoveryv1.EndpointSlice{
			ObjectMeta:  metav1.ObjectMeta{Name: "rebel-base-1", Namespace: "default", Labels: map[string]string{discoveryv1.LabelServiceName: "rebel-base"}},
			AddressType: discoveryv1.AddressTypeIPv4,
			Ports:       []discoveryv1.EndpointPort{{Name: ptr("http"), Port: ptr(int32(80)), Protocol: ptr(corev1.ProtocolTCP)}},
			Endpoints: []discoveryv1.Endpoint{{Addresses: []string{"10.1.1.5"},
				Conditions: discoveryv1.EndpointConditions{Ready: ptr(true), Serving: ptr(true)}}},
		},
		&corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "x-wing", Namespace: "default", Labels: map[string]string{"name": "x-wing"}}},
	}, objs...)...)
	kinds := identity.ListKinds()
	kinds[CiliumNetworkPolicies] = "CiliumNetworkPolicyList"
	dyn := dynamicfake.NewSimpleDynamicClientWithCustomListKinds(runtime.NewScheme(), map[schema.GroupVersionResource]string(kinds))
	dp := &recorder{}
	rem := &scripted{sink: make(chan RemoteSink, 1)}
	a, err := New(Config{
		ClusterName: "cluster1", ClusterID: 1, NodeName: "node-1",
		Kube: kube, Dynamic: dyn, Datapath: dp, Plumber: plumber{}, Remote: rem,
		Mode: mode, SyncTimeout: time.Minute, StateDir: stateDir, Restored: restored,
		Logger: slog.New(slog.NewTextHandler(t.Output(), nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	return a, dp, <-rem.sink, kube
}

func remoteService(cluster string, id uint32, backend string) *wire.ClusterService {
	return &wire.ClusterService{
		Cluster: cluster, Namespace: "default", Name: "rebel-base", ClusterID: id, Shared: true,
		Frontends: map[string]wire.PortConfiguration{"10.0.2.10": {"http": {Protocol: "TCP", Port: 80}}},
		Backends:  map[string]wire.PortConfiguration{backend: {"http": {Protocol: "TCP", Port: 80}}},
	}
}

func TestAgentMergesRemoteServicesAfterSync(t *testing.T) {
	_, dp, sink, _ := setup(t, service.ModeWithdraw)
	sink.ClusterConfigured("cluster2")
	sink.ClusterUp("cluster2", 2)
	sink.Reachable("cluster2", true)
	sink.UpsertService("cluster2", remoteService("cluster2", 2, "10.2.1.7"))

	// Until cluster2's services synced, nothing is programmed for services.
	eventually(t, "state applied", func() error {
		if s := dp.get(); s == nil || len(s.Nodes) == 0 {
			return fmt.Errorf("no state with nodes yet")
		}
		return nil
	})
	if s := dp.get(); len(s.Services) != 0 {
		t.Fatalf("services programmed before remote services synced: %v", s.Services)
	}
	sink.ServicesSynced("cluster2")
	eventually(t, "merged", wantClusters(dp, "default/rebel-base", 1, 2))

	sink.Reachable("cluster2", false)
	eventually(t, "withdrawn", wantClusters(dp, "default/rebel-base", 1))
	sink.Reachable("cluster2", true)
	eventually(t, "restored", wantClusters(dp, "default/rebel-base", 1, 2))
	sink.DeleteService("cluster2", "default", "rebel-base")
	eventually(t, "deleted", wantClusters(dp, "default/rebel-base", 1))
}

func TestAgentFailStaticKeepsBackends(t *testing.T) {
	_, dp, sink, _ := setup(t, service.ModeFailStatic)
	sink.ClusterConfigured("cluster2")
	sink.ClusterUp("cluster2", 2)
	sink.Reachable("cluster2", true)
	sink.UpsertService("cluster2", remoteService("cluster2", 2, "10.2.1.7"))
	sink.ServicesSynced("cluster2")
	eventually(t, "merged", wantClusters(dp, "default/rebel-base", 1, 2))
	sink.Reachable("cluster2", false)
	// Wait for the recompute that follows the change, then check.
	dp.mu.Lock()
	before := dp.n
	dp.mu.Unlock()
	eventually(t, "recomputed", func() error {
		dp.mu.Lock()
		defer dp.mu.Unlock()
		if dp.n == before {
			return fmt.Errorf("no recompute after the reachability change")
		}
		return nil
	})
	if err := wantClusters(dp, "default/rebel-base", 1, 2)(); err != nil {
		t.Fatalf("fail-static: %v", err)
	}
}

func TestAgentRemoteIPCacheAndNodes(t *testing.T) {
	_, dp, sink, _ := setup(t, service.ModeWithdraw)
	sink.ClusterConfigured("cluster2")
	sink.ClusterUp("cluster2", 2)
	sink.UpsertNode("cluster2", &wire.Node{Name: "node-1", Cluster: "cluster2", ClusterID: 2,
		IPAddresses: []wire.NodeAddress{{Type: wire.NodeAddressInternalIP, IP: netip.MustParseAddr("172.31.2.10").AsSlice()}}})
	sink.UpsertIPCache("cluster2", &wire.IPIdentityPair{IP: netip.MustParseAddr("10.2.1.7").AsSlice(),
		HostIP: netip.MustParseAddr("172.31.2.10").AsSlice(), ID: 2<<16 | 1})
	sink.UpsertIPCache("cluster2", &wire.IPIdentityPair{IP: netip.MustParseAddr("172.31.2.10").AsSlice(), ID: state.IdentityHost})
	sink.ServicesSynced("cluster2")
	find := func(ip string) (state.IPCacheEntry, bool) {
		s := dp.get()
		if s == nil {
			return state.IPCacheEntry{}, false
		}
		for _, e := range s.IPCache {
			if e.Prefix == netip.MustParsePrefix(ip+"/32") {
				return e, true
			}
		}
		return state.IPCacheEntry{}, false
	}
	eventually(t, "remote pod in ipcache", func() error {
		e, ok := find("10.2.1.7")
		if !ok || e.Identity != 2<<16|1 || e.TunnelEndpoint != netip.MustParseAddr("172.31.2.10") || e.ClusterID != 2 {
			return fmt.Errorf("entry %+v (found %v)", e, ok)
		}
		if n, ok := find("172.31.2.10"); !ok || n.Identity != state.IdentityRemoteNode {
			return fmt.Errorf("remote node entry %+v: want remote-node identity", n)
		}
		return nil
	})
	// Loss keeps identities and ipcache entries for existing flows.
	sink.Reachable("cluster2", false)
	eventually(t, "still there after loss", func() error {
		if _, ok := find("10.2.1.7"); !ok {
			return fmt.Errorf("ipcache entry dropped on loss")
		}
		return nil
	})
	sink.ClusterDown("cluster2")
	eventually(t, "gone after removal", func() error {
		if _, ok := find("10.2.1.7"); ok {
			return fmt.Errorf("ipcache entry kept after the cluster was removed")
		}
		return nil
	})
}

func TestAgentEndpointsSurviveRestart(t *testing.T) {
	a, dp, sink, _ := setup(t, service.ModeWithdraw)
	_ = sink
	ep, err := a.AddEndpoint(t.Context(), EndpointRequest{Namespace: "default", Pod: "x-wing", NetNS: "/proc/self/ns/net"})
	if err != nil {
		t.Fatal(err)
	}
	if !netip.MustParsePrefix("10.1.1.0/24").Contains(ep.IP) || ep.ID == 0 || ep.Identity < 1<<16 {
		t.Fatalf("endpoint %+v: want an address of the pod CIDR, an ID and a cluster-1 identity", ep)
	}
	s := dp.get()
	if len(s.Endpoints) != 1 || s.Endpoints[0].IP != ep.IP || s.Endpoints[0].Interface != "lxc1" {
		t.Fatalf("endpoints programmed: %+v", s.Endpoints)
	}
	// A second agent with the same state directory restores the endpoint.
	restored := &Agent{cfg: a.cfg, endpoints: map[string]*endpoint{}, policies: a.policies, log: a.log}
	restored.ipam = &ipam{cidr: a.ipam.cidr, used: map[netip.Addr]bool{}, ids: map[uint16]bool{}, next: a.ipam.cidr.Addr().Next(), nextI: 1}
	n, rebuild, err := restored.restoreEndpointsLocked()
	if err != nil || rebuild || n != 1 || restored.endpoints["default/x-wing"].IP != ep.IP {
		t.Fatalf("restore = %d, %v", n, err)
	}
	if ip, _ := restored.ipam.allocate(); ip == ep.IP {
		t.Fatalf("restored address %s handed out again", ip)
	}
	if err := a.DeleteEndpoint(t.Context(), "default", "x-wing"); err != nil {
		t.Fatal(err)
	}
	eventually(t, "endpoint removed", func() error {
		if s := dp.get(); len(s.Endpoints) != 0 {
			return fmt.Errorf("endpoints: %+v", s.Endpoints)
		}
		return nil
	})
}

func TestAgentEndpointFollowsPodLabels(t *testing.T) {
	a, dp, _, kube := setup(t, service.ModeWithdraw)
	ep, err := a.AddEndpoint(t.Context(), EndpointRequest{Namespace: "default", Pod: "x-wing", NetNS: "/proc/self/ns/net"})
	if err != nil {
		t.Fatal(err)
	}
	pod, err := kube.CoreV1().Pods("default").Get(t.Context(), "x-wing", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	pod.Labels = map[string]string{"name": "x-wing", "squadron": "red"}
	if _, err := kube.CoreV1().Pods("default").Update(t.Context(), pod, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	want := identity.PodLabels("cluster1", "default", pod.Labels)
	eventually(t, "endpoint identity follows the labels", func() error {
		id, ok := a.ids.LookupLabels(want)
		if !ok {
			return fmt.Errorf("no identity for %s yet", want)
		}
		if id == ep.Identity {
			return fmt.Errorf("new labels got the old identity %d", id)
		}
		s := dp.get()
		if len(s.Endpoints) != 1 || s.Endpoints[0].Identity != id {
			return fmt.Errorf("programmed endpoints %+v, want identity %d", s.Endpoints, id)
		}
		return nil
	})
}

func TestAgentKeepsRestoredStateUntilSynced(t *testing.T) {
	fe := state.Frontend{IP: netip.MustParseAddr("10.0.1.10"), Port: 80, Protocol: state.TCP}
	remoteBackend := state.Backend{IP: netip.MustParseAddr("10.2.1.7"), Port: 80, Protocol: state.TCP, ClusterID: 2}
	remotePod := state.IPCacheEntry{Prefix: netip.MustParsePrefix("10.2.1.7/32"), Identity: 2<<16 | 1,
		TunnelEndpoint: netip.MustParseAddr("172.31.2.10"), ClusterID: 2}
	restored := &state.State{
		Services: []state.Service{{Frontend: fe, Backends: []state.Backend{remoteBackend}}},
		IPCache:  []state.IPCacheEntry{remotePod},
	}
	_, dp, sink, _ := setupRestored(t, service.ModeWithdraw, restored)
	sink.ClusterConfigured("cluster2")
	eventually(t, "first state applied", func() error {
		if dp.get() == nil {
			return fmt.Errorf("nothing applied")
		}
		return nil
	})
	s := dp.get()
	if len(s.Services) != 1 || len(s.Services[0].Backends) != 1 || s.Services[0].Backends[0] != remoteBackend {
		t.Fatalf("before sync, services = %+v; want the restored remote backend kept", s.Services)
	}
	found := false
	for _, e := range s.IPCache {
		found = found || e == remotePod
	}
	if !found {
		t.Fatalf("before sync, the restored remote pod %s left the ipcache", remotePod.Prefix)
	}
	// Once cluster2 has synced (without that backend), the agent's own view
	// replaces the restored one.
	sink.ClusterUp("cluster2", 2)
	sink.Reachable("cluster2", true)
	sink.ServicesSynced("cluster2")
	eventually(t, "own view after sync", wantClusters(dp, "default/rebel-base", 1))
}
