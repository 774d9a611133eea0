package service

import (
	"errors"
	"fmt"
	"net/netip"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"

	"github.com/meshbed/meshbed/datapath/state"
)

// ErrUnsupportedProtocol is wrapped by FromKubernetes' error for service
// ports whose protocol the datapath does not load-balance (SCTP). The port is
// left out; the rest of the service is converted.
var ErrUnsupportedProtocol = errors.New("unsupported protocol")

// FromKubernetes converts a Service and its EndpointSlices into the merge
// input. Slices that are not labelled for this service
// (kubernetes.io/service-name) or live in another namespace are skipped, as
// are FQDN slices and endpoints without addresses. Only an endpoint's first
// address is used: the API says they are fungible and consumers may use only
// the first.
//
// The returned error (possibly several joined) reports ports that were left
// out; the LocalService is usable regardless.
func FromKubernetes(svc *corev1.Service, eps []*discoveryv1.EndpointSlice) (LocalService, error) {
	ls := LocalService{
		Namespace:   svc.Namespace,
		Name:        svc.Name,
		Annotations: svc.Annotations,
	}
	var errs []error
	ips := svc.Spec.ClusterIPs
	if len(ips) == 0 && svc.Spec.ClusterIP != "" {
		ips = []string{svc.Spec.ClusterIP}
	}
	for _, s := range ips {
		if s == corev1.ClusterIPNone {
			continue
		}
		ip, err := netip.ParseAddr(s)
		if err != nil {
			errs = append(errs, fmt.Errorf("service %s/%s: cluster IP %q: %w", svc.Namespace, svc.Name, s, err))
			continue
		}
		ls.ClusterIPs = append(ls.ClusterIPs, ip.Unmap())
	}
	for _, p := range svc.Spec.Ports {
		proto, err := kubeProtocol(p.Protocol)
		if err != nil {
			errs = append(errs, fmt.Errorf("service %s/%s port %q: %w", svc.Namespace, svc.Name, p.Name, err))
			continue
		}
		if p.Port <= 0 || p.Port > 65535 {
			continue
		}
		ls.Ports = append(ls.Ports, ServicePort{Name: p.Name, Port: uint16(p.Port), Protocol: proto})
	}
	for _, es := range eps {
		if es == nil || es.Namespace != svc.Namespace || es.Labels[discoveryv1.LabelServiceName] != svc.Name {
			continue
		}
		if es.AddressType != discoveryv1.AddressTypeIPv4 && es.AddressType != discoveryv1.AddressTypeIPv6 {
			continue
		}
		var ports []BackendPort
		for _, p := range es.Ports {
			if p.Port == nil || *p.Port <= 0 || *p.Port > 65535 {
				continue // nil means "all ports", which a ClusterIP service never uses
			}
			var kp corev1.Protocol
			if p.Protocol != nil {
				kp = *p.Protocol
			}
			proto, err := kubeProtocol(kp)
			if err != nil {
				continue // already reported for the service port, if it has one
			}
			name := ""
			if p.Name != nil {
				name = *p.Name
			}
			ports = append(ports, BackendPort{Name: name, Port: uint16(*p.Port), Protocol: proto})
		}
		for _, ep := range es.Endpoints {
			if len(ep.Addresses) == 0 {
				continue
			}
			ip, err := netip.ParseAddr(ep.Addresses[0])
			if err != nil {
				continue
			}
			ready := ep.Conditions.Ready == nil || *ep.Conditions.Ready
			serving := ready
			if ep.Conditions.Serving != nil {
				serving = *ep.Conditions.Serving
			}
			terminating := ep.Conditions.Terminating != nil && *ep.Conditions.Terminating
			ls.Backends = append(ls.Backends, LocalBackend{
				IP: ip.Unmap(), Ports: ports,
				Ready: ready && !terminating, Serving: serving, Terminating: terminating,
			})
		}
	}
	return ls, errors.Join(errs...)
}

func kubeProtocol(p corev1.Protocol) (state.Protocol, error) {
	switch p {
	case corev1.ProtocolTCP, "":
		return state.TCP, nil
	case corev1.ProtocolUDP:
		return state.UDP, nil
	}
	return 0, fmt.Errorf("%w %q", ErrUnsupportedProtocol, p)
}
