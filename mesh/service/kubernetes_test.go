package service

import (
	"errors"
	"net/netip"
	"reflect"
	"testing"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/meshbed/meshbed/datapath/state"
)

func ptr[T any](v T) *T { return &v }

func TestFromKubernetes(t *testing.T) {
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "rebel-base", Annotations: globalAnn},
		Spec: corev1.ServiceSpec{
			ClusterIP:  "10.96.0.10",
			ClusterIPs: []string{"10.96.0.10", "fd00::10"},
			Ports: []corev1.ServicePort{
				{Name: "http", Port: 80, Protocol: corev1.ProtocolTCP},
				{Name: "dns", Port: 53, Protocol: corev1.ProtocolUDP},
				{Name: "sig", Port: 99, Protocol: corev1.ProtocolSCTP},
			},
		},
	}
	slice := func(name, svcName string, at discoveryv1.AddressType, eps ...discoveryv1.Endpoint) *discoveryv1.EndpointSlice {
		return &discoveryv1.EndpointSlice{
			ObjectMeta:  metav1.ObjectMeta{Namespace: "default", Name: name, Labels: map[string]string{discoveryv1.LabelServiceName: svcName}},
			AddressType: at,
			Ports: []discoveryv1.EndpointPort{
				{Name: ptr("http"), Port: ptr(int32(8080)), Protocol: ptr(corev1.ProtocolTCP)},
				{Name: ptr("dns"), Port: ptr(int32(5353)), Protocol: ptr(corev1.ProtocolUDP)},
				{Name: ptr("all"), Port: nil},
			},
			Endpoints: eps,
		}
	}
	eps := []*discoveryv1.EndpointSlice{
		slice("a", "rebel-base", discoveryv1.AddressTypeIPv4,
			discoveryv1.Endpoint{Addresses: []string{"10.1.0.1", "10.1.0.99"}},                                                   // nil conditions: ready
			discoveryv1.Endpoint{Addresses: []string{"10.1.0.2"}, Conditions: discoveryv1.EndpointConditions{Ready: ptr(false)}}, // not ready
			discoveryv1.Endpoint{Addresses: []string{"10.1.0.3"}, Conditions: discoveryv1.EndpointConditions{Ready: ptr(false), Serving: ptr(true), Terminating: ptr(true)}},
			discoveryv1.Endpoint{Addresses: nil},
		),
		slice("b", "other", discoveryv1.AddressTypeIPv4, discoveryv1.Endpoint{Addresses: []string{"10.1.9.9"}}),
		slice("c", "rebel-base", discoveryv1.AddressTypeFQDN, discoveryv1.Endpoint{Addresses: []string{"example.org"}}),
		slice("d", "rebel-base", discoveryv1.AddressTypeIPv6, discoveryv1.Endpoint{Addresses: []string{"fd00:1::1"}}),
		nil,
	}
	got, err := FromKubernetes(svc, eps)
	if !errors.Is(err, ErrUnsupportedProtocol) {
		t.Errorf("err = %v, want one wrapping ErrUnsupportedProtocol for the SCTP port", err)
	}
	bports := []BackendPort{{Name: "http", Port: 8080, Protocol: state.TCP}, {Name: "dns", Port: 5353, Protocol: state.UDP}}
	want := LocalService{
		Namespace: "default", Name: "rebel-base", Annotations: globalAnn,
		ClusterIPs: []netip.Addr{netip.MustParseAddr("10.96.0.10"), netip.MustParseAddr("fd00::10")},
		Ports:      []ServicePort{{Name: "http", Port: 80, Protocol: state.TCP}, {Name: "dns", Port: 53, Protocol: state.UDP}},
		Backends: []LocalBackend{
			{IP: netip.MustParseAddr("10.1.0.1"), Ports: bports, Ready: true, Serving: true},
			{IP: netip.MustParseAddr("10.1.0.2"), Ports: bports},
			{IP: netip.MustParseAddr("10.1.0.3"), Ports: bports, Serving: true, Terminating: true},
			{IP: netip.MustParseAddr("fd00:1::1"), Ports: bports, Ready: true, Serving: true},
		},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got  %+v\nwant %+v", got, want)
	}

	t.Run("headless", func(t *testing.T) {
		h := svc.DeepCopy()
		h.Spec.ClusterIP, h.Spec.ClusterIPs = corev1.ClusterIPNone, []string{corev1.ClusterIPNone}
		got, _ := FromKubernetes(h, eps)
		if len(got.ClusterIPs) != 0 {
			t.Fatalf("headless service has frontends %v", got.ClusterIPs)
		}
	})
}
