package engine

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/meshbed/meshbed/datapath/state"
	"github.com/meshbed/meshbed/scenarios"
)

// fakeReader serves fixed objects and node states.
type fakeReader struct {
	objs  map[string]*ClusterObjects
	nodes map[string][]NodeState
}

func (f *fakeReader) KVGet(context.Context, string, string) ([]byte, bool, error) {
	return nil, false, fmt.Errorf("no kvstore")
}
func (f *fakeReader) KVList(context.Context, string, string) (map[string][]byte, error) {
	return nil, fmt.Errorf("no kvstore")
}
func (f *fakeReader) Objects(_ context.Context, c string) (*ClusterObjects, error) {
	return f.objs[c], nil
}
func (f *fakeReader) Nodes(_ context.Context, c string) ([]NodeState, error) { return f.nodes[c], nil }

// twoClusters is rebel-base, global, with one ready backend in each of
// cluster1 (ID 1) and cluster2 (ID 2), and agents that got it right.
func twoClusters() (*scenarios.Topology, *fakeReader) {
	tp := &scenarios.Topology{Clusters: []scenarios.Cluster{{Name: "cluster1", ID: 1, Nodes: 1}, {Name: "cluster2", ID: 2, Nodes: 1}},
		Connections: [][2]string{{"cluster1", "cluster2"}}, RemoteLoss: scenarios.RemoteLossWithdraw}
	f := &fakeReader{objs: map[string]*ClusterObjects{}, nodes: map[string][]NodeState{}}
	name, port, tcp, yes := "http", int32(8080), corev1.ProtocolTCP, true
	for i, c := range tp.Clusters {
		id := i + 1
		podIP := fmt.Sprintf("10.%d.0.5", id)
		f.objs[c.Name] = &ClusterObjects{
			Services: []corev1.Service{{
				ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "rebel-base", Annotations: map[string]string{"service.cilium.io/global": "true"}},
				Spec: corev1.ServiceSpec{ClusterIP: fmt.Sprintf("10.96.%d.10", id),
					Ports: []corev1.ServicePort{{Name: "http", Port: 80, Protocol: corev1.ProtocolTCP}}},
			}},
			EndpointSlices: []discoveryv1.EndpointSlice{{
				ObjectMeta:  metav1.ObjectMeta{Namespace: "default", Name: "rebel-base-x", Labels: map[string]string{discoveryv1.LabelServiceName: "rebel-base"}},
				AddressType: discoveryv1.AddressTypeIPv4,
				Ports:       []discoveryv1.EndpointPort{{Name: &name, Port: &port, Protocol: &tcp}},
				Endpoints:   []discoveryv1.Endpoint{{Addresses: []string{podIP}, Conditions: discoveryv1.EndpointConditions{Ready: &yes}}},
			}},
			Pods: []corev1.Pod{{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "rebel-base-x"},
				Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIP: podIP}}},
		}
	}
	for i, c := range tp.Clusters {
		fe := state.Frontend{IP: netip.MustParseAddr(fmt.Sprintf("10.96.%d.10", i+1)), Port: 80, Protocol: state.TCP}
		var bs []state.Backend
		var ipc []state.IPCacheEntry
		for id := uint32(1); id <= 2; id++ {
			ip := netip.MustParseAddr(fmt.Sprintf("10.%d.0.5", id))
			bs = append(bs, state.Backend{IP: ip, Port: 8080, Protocol: state.TCP, ClusterID: id})
			ipc = append(ipc, state.IPCacheEntry{Prefix: netip.PrefixFrom(ip, 32), Identity: id<<16 | 1, ClusterID: id})
		}
		svcs := []state.Service{{Name: "default/rebel-base", Frontend: fe, Backends: bs}}
		f.nodes[c.Name] = []NodeState{{Node: "node-1", Running: true,
			Desired:  &state.State{Services: svcs, IPCache: ipc},
			Services: svcs, IPCache: ipc}}
	}
	return tp, f
}

// withServices replaces a node's desired services and maps alike.
func withServices(f *fakeReader, cluster string, bs ...state.Backend) {
	n := &f.nodes[cluster][0]
	svc := n.Desired.Services[0]
	svc.Backends = bs
	n.Desired = &state.State{Services: []state.Service{svc}, IPCache: n.Desired.IPCache}
	n.Services = []state.Service{svc}
}

func backend(id uint32) state.Backend {
	return state.Backend{IP: netip.MustParseAddr(fmt.Sprintf("10.%d.0.5", id)), Port: 8080, Protocol: state.TCP, ClusterID: id}
}

func TestFinalCheck(t *testing.T) {
	tests := []struct {
		name    string
		breakIt func(*fakeReader)
		want    []string // substrings of the error; none: it passes
	}{
		{name: "converged", breakIt: func(*fakeReader) {}},
		{
			name:    "remote backend lost",
			breakIt: func(f *fakeReader) { withServices(f, "cluster1", backend(1)) },
			want:    []string{"cluster1/node-1: service default/rebel-base (10.96.1.10:80/TCP) has backends [10.1.0.5:8080/TCP@1], the clusters' state says [10.1.0.5:8080/TCP@1 10.2.0.5:8080/TCP@2]"},
		},
		{
			name: "stale backend of a pod that is gone",
			breakIt: func(f *fakeReader) {
				o := f.objs["cluster2"]
				o.EndpointSlices[0].Endpoints = nil
				o.Pods = nil
			},
			want: []string{"cluster1/node-1: service default/rebel-base has stale backend 10.2.0.5:8080/TCP@2",
				"the clusters' state says [10.1.0.5:8080/TCP@1]"},
		},
		{
			name: "map differs from desired state",
			breakIt: func(f *fakeReader) {
				n := &f.nodes["cluster2"][0]
				n.Services = []state.Service{{Name: "default/rebel-base", Frontend: n.Desired.Services[0].Frontend, Backends: []state.Backend{backend(2)}}}
			},
			want: []string{"cluster2/node-1: frontend 10.96.2.10:80/TCP has backends [10.2.0.5:8080/TCP@2] in the map, the agent wants [10.1.0.5:8080/TCP@1 10.2.0.5:8080/TCP@2]"},
		},
		{
			name: "ipcache lacks a remote pod",
			breakIt: func(f *fakeReader) {
				n := &f.nodes["cluster1"][0]
				n.Desired.IPCache = n.Desired.IPCache[:1]
				n.IPCache = n.IPCache[:1]
			},
			want: []string{"cluster1/node-1: ipcache lacks pods 10.2.0.5"},
		},
		{
			name: "shared=false is not exported",
			breakIt: func(f *fakeReader) {
				f.objs["cluster2"].Services[0].Annotations["service.cilium.io/shared"] = "false"
			},
			want: []string{"cluster1/node-1: service default/rebel-base (10.96.1.10:80/TCP) has backends [10.1.0.5:8080/TCP@1 10.2.0.5:8080/TCP@2], the clusters' state says [10.1.0.5:8080/TCP@1]"},
		},
		{
			name: "a remote endpoint that is not ready is no backend",
			breakIt: func(f *fakeReader) {
				no := false
				f.objs["cluster2"].EndpointSlices[0].Endpoints[0].Conditions.Ready = &no
				withServices(f, "cluster2", backend(1))
			},
			want: []string{"cluster1/node-1: service default/rebel-base (10.96.1.10:80/TCP) has backends [10.1.0.5:8080/TCP@1 10.2.0.5:8080/TCP@2], the clusters' state says [10.1.0.5:8080/TCP@1]"},
		},
		{
			name:    "agent stopped",
			breakIt: func(f *fakeReader) { f.nodes["cluster2"][0] = NodeState{Node: "node-1"} },
			want:    []string{"cluster2/node-1: agent is not running"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tp, f := twoClusters()
			tt.breakIt(f)
			err := FinalCheck(context.Background(), f, tp)
			if len(tt.want) == 0 {
				if err != nil {
					t.Fatalf("FinalCheck: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatal("FinalCheck passed")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error does not say %q:\n%v", w, err)
				}
			}
		})
	}
}
