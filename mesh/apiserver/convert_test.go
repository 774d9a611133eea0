package apiserver

import (
	"maps"
	"net"
	"net/netip"
	"slices"
	"testing"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/meshbed/meshbed/mesh/wire"
)

func ptr[T any](v T) *T { return &v }

func node(name, internalIP, podCIDR string) *corev1.Node {
	n := &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec:       corev1.NodeSpec{PodCIDR: podCIDR},
	}
	if podCIDR != "" {
		n.Spec.PodCIDRs = []string{podCIDR}
	}
	if internalIP != "" {
		n.Status.Addresses = []corev1.NodeAddress{
			{Type: corev1.NodeHostName, Address: name},
			{Type: corev1.NodeInternalIP, Address: internalIP},
		}
	}
	return n
}

func svc(ns, name string, ann map[string]string, clusterIPs ...string) *corev1.Service {
	s := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Annotations: ann},
		Spec: corev1.ServiceSpec{
			Selector: map[string]string{"name": name},
			Ports:    []corev1.ServicePort{{Name: "http", Protocol: corev1.ProtocolTCP, Port: 80}},
		},
	}
	if len(clusterIPs) > 0 {
		s.Spec.ClusterIP = clusterIPs[0]
		s.Spec.ClusterIPs = clusterIPs
	}
	return s
}

type ep struct {
	addr                        string
	ready, serving, terminating *bool
}

func slice(ns, svcName, sliceName string, port int32, eps ...ep) *discoveryv1.EndpointSlice {
	es := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: sliceName,
			Labels: map[string]string{discoveryv1.LabelServiceName: svcName}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: ptr("http"), Protocol: ptr(corev1.ProtocolTCP), Port: ptr(port)}},
	}
	for _, e := range eps {
		es.Endpoints = append(es.Endpoints, discoveryv1.Endpoint{
			Addresses:  []string{e.addr},
			Conditions: discoveryv1.EndpointConditions{Ready: e.ready, Serving: e.serving, Terminating: e.terminating},
		})
	}
	return es
}

var (
	yes = ptr(true)
	no  = ptr(false)
)

func pod(ns, name, ip, hostIP string, labels map[string]string) *corev1.Pod {
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: labels},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{
			Name:  "main",
			Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 80, Protocol: corev1.ProtocolTCP}, {ContainerPort: 9090}},
		}}},
		Status: corev1.PodStatus{Phase: corev1.PodRunning, HostIP: hostIP, PodIP: ip},
	}
	if ip != "" {
		p.Status.PodIPs = []corev1.PodIP{{IP: ip}}
	}
	return p
}

// The JSON of docs/wire.md's examples, byte for byte (the exporter writes what
// encoding/json makes of the wire types, so field order is theirs).
func TestValuesMatchWireExamples(t *testing.T) {
	n, ok := NodeValue("cluster1", 1, node("cluster1-worker", "172.18.0.3", "10.10.1.0/24"))
	if !ok {
		t.Fatal("node not exported")
	}
	p := pod("default", "rebel-base-6d4f8-abcde", "10.10.1.7", "172.18.0.3", nil)
	p.Spec.Containers[0].Ports = p.Spec.Containers[0].Ports[:1]
	s := svc("default", "rebel-base", map[string]string{"service.cilium.io/global": "true"}, "10.11.0.42")
	cs, export := ServiceValue("cluster1", 1, s, []*discoveryv1.EndpointSlice{slice("default", "rebel-base", "rb-1", 80, ep{addr: "10.10.1.7"})})
	if !export {
		t.Fatal("global service not exported")
	}
	tests := []struct {
		name string
		v    any
		want string
	}{
		{"node", n, `{"Name":"cluster1-worker","Cluster":"cluster1","ClusterID":1,"Source":"custom-resource",` +
			`"IPAddresses":[{"Type":"InternalIP","IP":"172.18.0.3"}],` +
			`"IPv4AllocCIDR":{"IP":"10.10.1.0","Mask":"////AA=="},` +
			`"EncryptionKey":0,"Labels":{},"Annotations":{}}`},
		{"ipcache", IPValue(p, netip.MustParseAddr("10.10.1.7"), 65793), `{"IP":"10.10.1.7","HostIP":"172.18.0.3","ID":65793,"Key":0,` +
			`"K8sNamespace":"default","K8sPodName":"rebel-base-6d4f8-abcde",` +
			`"NamedPorts":[{"Name":"http","Port":80,"Protocol":"TCP"}]}`},
		{"service", cs, `{"cluster":"cluster1","namespace":"default","name":"rebel-base",` +
			`"frontends":{"10.11.0.42":{"http":{"Protocol":"TCP","Port":80}}},` +
			`"backends":{"10.10.1.7":{"http":{"Protocol":"TCP","Port":80}}},` +
			`"labels":{},"selector":{"name":"rebel-base"},` +
			`"includeExternal":true,"shared":true,"clusterID":1}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := string(mustJSON(tt.v)); got != tt.want {
				t.Fatalf("got\n%s\nwant\n%s", got, tt.want)
			}
		})
	}
}

func TestServiceExportRules(t *testing.T) {
	eps := []*discoveryv1.EndpointSlice{slice("default", "s", "s-1", 8080, ep{addr: "10.0.0.1"})}
	tests := []struct {
		name   string
		ann    map[string]string
		export bool
	}{
		{"no annotation", nil, false},
		{"global", map[string]string{"service.cilium.io/global": "true"}, true},
		{"global, any case", map[string]string{"service.cilium.io/global": "TRUE"}, true},
		{"global false", map[string]string{"service.cilium.io/global": "false"}, false},
		{"global yes is not true", map[string]string{"service.cilium.io/global": "yes"}, false},
		{"global, shared true", map[string]string{"service.cilium.io/global": "true", "service.cilium.io/shared": "True"}, true},
		{"global, shared false", map[string]string{"service.cilium.io/global": "true", "service.cilium.io/shared": "false"}, false},
		{"global, shared garbage", map[string]string{"service.cilium.io/global": "true", "service.cilium.io/shared": "nope"}, false},
		{"shared without global", map[string]string{"service.cilium.io/shared": "true"}, false},
		{"legacy global", map[string]string{"io.cilium/global-service": "true"}, true},
		{"legacy shared false", map[string]string{"io.cilium/global-service": "true", "io.cilium/shared-service": "false"}, false},
		{"affinity does not matter", map[string]string{"service.cilium.io/global": "true", "service.cilium.io/affinity": "sideways"}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, export := ServiceValue("c1", 1, svc("default", "s", tt.ann, "10.96.0.10"), eps)
			if export != tt.export {
				t.Fatalf("exported = %v, want %v", export, tt.export)
			}
		})
	}
}

func TestServiceBackends(t *testing.T) {
	global := map[string]string{"service.cilium.io/global": "true"}
	tests := []struct {
		name      string
		svc       *corev1.Service
		slices    []*discoveryv1.EndpointSlice
		frontends []string
		backends  []string
	}{
		{"ready, unknown and serving-terminating kept; not serving dropped",
			svc("ns", "s", global, "10.96.0.10"),
			[]*discoveryv1.EndpointSlice{slice("ns", "s", "s-1", 8080,
				ep{addr: "10.0.0.1", ready: yes},
				ep{addr: "10.0.0.2"},
				ep{addr: "10.0.0.3", ready: no, serving: yes, terminating: yes},
				ep{addr: "10.0.0.4", ready: no, serving: no, terminating: yes},
				ep{addr: "10.0.0.5", ready: no},
			)},
			[]string{"10.96.0.10"}, []string{"10.0.0.1", "10.0.0.2", "10.0.0.3"}},
		{"headless: backends only", svc("ns", "s", global, "None"),
			[]*discoveryv1.EndpointSlice{slice("ns", "s", "s-1", 8080, ep{addr: "10.0.0.1"})},
			nil, []string{"10.0.0.1"}},
		{"dual stack frontends", svc("ns", "s", global, "10.96.0.10", "fd00::10"), nil,
			[]string{"10.96.0.10", "fd00::10"}, nil},
		{"slices of another service ignored", svc("ns", "s", global, "10.96.0.10"),
			[]*discoveryv1.EndpointSlice{slice("ns", "other", "o-1", 8080, ep{addr: "10.0.0.9"})},
			[]string{"10.96.0.10"}, nil},
		{"two slices merge", svc("ns", "s", global, "10.96.0.10"),
			[]*discoveryv1.EndpointSlice{
				slice("ns", "s", "s-1", 8080, ep{addr: "10.0.0.1"}),
				slice("ns", "s", "s-2", 8080, ep{addr: "10.0.0.2"}),
			},
			[]string{"10.96.0.10"}, []string{"10.0.0.1", "10.0.0.2"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v, ok := ServiceValue("c1", 1, tt.svc, tt.slices)
			if !ok {
				t.Fatal("not exported")
			}
			if got := sortedKeys(v.Frontends); !slices.Equal(got, tt.frontends) {
				t.Fatalf("frontends %v, want %v", got, tt.frontends)
			}
			if got := sortedKeys(v.Backends); !slices.Equal(got, tt.backends) {
				t.Fatalf("backends %v, want %v", got, tt.backends)
			}
			for addr, pc := range v.Backends {
				if pc["http"] == nil || pc["http"].Port != 8080 || pc["http"].Protocol != "TCP" {
					t.Fatalf("backend %s ports %v, want http → TCP 8080 (target port)", addr, pc)
				}
			}
			// What is exported, the reader accepts.
			key := wire.ServiceKey("c1", "ns", "s")
			if _, err := wire.DecodeClusterService(key, mustJSON(v), "c1", 1); err != nil {
				t.Fatalf("reader rejects export: %v", err)
			}
		})
	}
}

func TestPodIPs(t *testing.T) {
	hostNet := pod("ns", "h", "172.18.0.3", "172.18.0.3", nil)
	hostNet.Spec.HostNetwork = true
	done := pod("ns", "d", "10.0.0.9", "172.18.0.3", nil)
	done.Status.Phase = corev1.PodSucceeded
	dual := pod("ns", "dual", "10.0.0.1", "172.18.0.3", nil)
	dual.Status.PodIPs = append(dual.Status.PodIPs, corev1.PodIP{IP: "fd00::1"})
	legacy := pod("ns", "legacy", "10.0.0.2", "172.18.0.3", nil)
	legacy.Status.PodIPs = nil
	tests := []struct {
		name string
		pod  *corev1.Pod
		want []string
	}{
		{"running", pod("ns", "r", "10.0.0.1", "172.18.0.3", nil), []string{"10.0.0.1"}},
		{"no IP yet", pod("ns", "p", "", "", nil), nil},
		{"host network", hostNet, nil},
		{"finished", done, nil},
		{"dual stack", dual, []string{"10.0.0.1", "fd00::1"}},
		{"podIP only", legacy, []string{"10.0.0.2"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got []string
			for _, a := range PodIPs(tt.pod) {
				got = append(got, a.String())
			}
			if !slices.Equal(got, tt.want) {
				t.Fatalf("PodIPs = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestNodeValue(t *testing.T) {
	dual := node("n", "172.18.0.3", "")
	dual.Spec.PodCIDRs = []string{"10.10.1.0/24", "fd00:10:1::/64"}
	dual.Status.Addresses = append(dual.Status.Addresses,
		corev1.NodeAddress{Type: corev1.NodeExternalIP, Address: "203.0.113.7"},
		corev1.NodeAddress{Type: corev1.NodeInternalIP, Address: "fc00::3"})
	tests := []struct {
		name   string
		node   *corev1.Node
		ok     bool
		addrs  string
		v4, v6 string
	}{
		{"plain", node("n", "172.18.0.3", "10.10.1.0/24"), true, `[{"Type":"InternalIP","IP":"172.18.0.3"}]`, "10.10.1.0/24", ""},
		{"no address", node("n", "", "10.10.1.0/24"), false, `[]`, "10.10.1.0/24", ""},
		{"not canonical pod CIDR is masked", node("n", "172.18.0.3", "10.10.1.5/24"), true, `[{"Type":"InternalIP","IP":"172.18.0.3"}]`, "10.10.1.0/24", ""},
		{"garbage pod CIDR skipped", node("n", "172.18.0.3", "bogus"), true, `[{"Type":"InternalIP","IP":"172.18.0.3"}]`, "", ""},
		{"dual stack, internal first", dual, true,
			`[{"Type":"InternalIP","IP":"172.18.0.3"},{"Type":"InternalIP","IP":"fc00::3"},{"Type":"ExternalIP","IP":"203.0.113.7"}]`,
			"10.10.1.0/24", "fd00:10:1::/64"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v, ok := NodeValue("c1", 1, tt.node)
			if ok != tt.ok {
				t.Fatalf("ok = %v, want %v", ok, tt.ok)
			}
			if got := string(mustJSON(v.IPAddresses)); got != tt.addrs {
				t.Fatalf("addresses %s, want %s", got, tt.addrs)
			}
			if got := cidr(v.IPv4AllocCIDR); got != tt.v4 {
				t.Fatalf("IPv4AllocCIDR %q, want %q", got, tt.v4)
			}
			if got := cidr(v.IPv6AllocCIDR); got != tt.v6 {
				t.Fatalf("IPv6AllocCIDR %q, want %q", got, tt.v6)
			}
			if ok {
				if _, err := wire.DecodeNode(wire.NodeKey("c1", "n"), mustJSON(v), "c1", 1); err != nil {
					t.Fatalf("reader rejects export: %v", err)
				}
			}
		})
	}
}

// FuzzExportAccepted feeds arbitrary strings where Kubernetes objects carry
// addresses, CIDRs and ports, and checks that whatever the apiserver
// exports, the readers of other clusters accept: a cluster never publishes
// a value its peers would reject.
func FuzzExportAccepted(f *testing.F) {
	f.Add("172.18.0.3", "10.10.1.0/24", "10.96.0.10", "10.0.0.1", "10.0.0.1", "172.18.0.3", int32(8080), "http")
	f.Add("::ffff:1.2.3.4", "fd00::/8", "None", "fe80::1%eth0", "::1", "", int32(0), "")
	f.Add("", "1.2.3.4/33", "", "x", "10.0.0.1", "bogus", int32(70000), "a;b")
	f.Fuzz(func(t *testing.T, nodeIP, podCIDR, clusterIP, epAddr, podIP, hostIP string, port int32, portName string) {
		n := node("n", nodeIP, podCIDR)
		if v, ok := NodeValue("c1", 1, n); ok {
			if _, err := wire.DecodeNode(wire.NodeKey("c1", "n"), mustJSON(v), "c1", 1); err != nil {
				t.Fatalf("node %q %q: reader rejects export: %v", nodeIP, podCIDR, err)
			}
		}
		s := svc("ns", "s", map[string]string{"service.cilium.io/global": "true"}, clusterIP)
		s.Spec.Ports[0].Name = portName
		s.Spec.Ports[0].Port = port
		es := slice("ns", "s", "s-1", port, ep{addr: epAddr})
		es.Ports[0].Name = &portName
		if v, ok := ServiceValue("c1", 1, s, []*discoveryv1.EndpointSlice{es}); ok {
			if _, err := wire.DecodeClusterService(wire.ServiceKey("c1", "ns", "s"), mustJSON(v), "c1", 1); err != nil {
				t.Fatalf("service %q %q: reader rejects export: %v", clusterIP, epAddr, err)
			}
		}
		p := pod("ns", "p", podIP, hostIP, nil)
		for _, ip := range PodIPs(p) {
			v := IPValue(p, ip, 65537)
			if _, err := wire.DecodeIPIdentityPair(wire.IPKey(ip.String()), mustJSON(v), "c1", 1, 255); err != nil {
				t.Fatalf("pod IP %q host %q: reader rejects export: %v", podIP, hostIP, err)
			}
		}
	})
}

func cidr(n *net.IPNet) string {
	if n == nil {
		return ""
	}
	return n.String()
}

func sortedKeys[V any](m map[string]V) []string { return slices.Sorted(maps.Keys(m)) }

func BenchmarkServiceValue(b *testing.B) {
	s := svc("default", "s", map[string]string{"service.cilium.io/global": "true"}, "10.96.0.10")
	var eps []ep
	for i := range 100 {
		eps = append(eps, ep{addr: netip.AddrFrom4([4]byte{10, 0, byte(i / 250), byte(i%250 + 1)}).String()})
	}
	slices := []*discoveryv1.EndpointSlice{slice("default", "s", "s-1", 8080, eps...)}
	for b.Loop() {
		v, ok := ServiceValue("c1", 1, s, slices)
		if !ok || len(v.Backends) != 100 {
			b.Fatal("bad export")
		}
		_ = mustJSON(v)
	}
	b.ReportMetric(100, "backends/op")
}
