package engine

import (
	"errors"
	"fmt"
	"net/netip"
	"sort"
	"strings"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"

	"github.com/meshbed/meshbed/datapath/state"
	"github.com/meshbed/meshbed/scenarios"
)

// refClusterOf reads a cluster's Services and EndpointSlices as the
// reference merge takes them: every ClusterIP and TCP or UDP port of each
// Service, and per endpoint of the slices labelled for it its first address
// (the API says the addresses are fungible), the ports of its slice and its
// conditions.
func refClusterOf(c scenarios.Cluster, o *ClusterObjects) refCluster {
	rc := refCluster{Name: c.Name, ID: uint32(c.ID), Reachable: true}
	for _, svc := range o.Services {
		rs := refService{Namespace: svc.Namespace, Name: svc.Name, Annotations: svc.Annotations}
		ips := svc.Spec.ClusterIPs
		if len(ips) == 0 && svc.Spec.ClusterIP != "" {
			ips = []string{svc.Spec.ClusterIP}
		}
		for _, s := range ips {
			if ip, err := netip.ParseAddr(s); err == nil {
				rs.ClusterIPs = append(rs.ClusterIPs, ip.Unmap())
			}
		}
		for _, p := range svc.Spec.Ports {
			if proto, ok := refProtocol(p.Protocol); ok && p.Port > 0 && p.Port <= 65535 {
				rs.Ports = append(rs.Ports, refPort{Name: p.Name, Port: uint16(p.Port), Protocol: proto})
			}
		}
		for _, es := range o.EndpointSlices {
			if es.Namespace != svc.Namespace || es.Labels[discoveryv1.LabelServiceName] != svc.Name ||
				es.AddressType != discoveryv1.AddressTypeIPv4 && es.AddressType != discoveryv1.AddressTypeIPv6 {
				continue
			}
			var ports []refPort
			for _, p := range es.Ports {
				var kp corev1.Protocol
				if p.Protocol != nil {
					kp = *p.Protocol
				}
				proto, ok := refProtocol(kp)
				if !ok || p.Port == nil || *p.Port <= 0 || *p.Port > 65535 {
					continue
				}
				name := ""
				if p.Name != nil {
					name = *p.Name
				}
				ports = append(ports, refPort{Name: name, Port: uint16(*p.Port), Protocol: proto})
			}
			for _, ep := range es.Endpoints {
				if len(ep.Addresses) == 0 {
					continue
				}
				ip, err := netip.ParseAddr(ep.Addresses[0])
				if err != nil {
					continue
				}
				e := refEndpoint{IP: ip.Unmap(), Ports: ports}
				e.Ready = ep.Conditions.Ready == nil || *ep.Conditions.Ready
				e.Serving = e.Ready
				if ep.Conditions.Serving != nil {
					e.Serving = *ep.Conditions.Serving
				}
				e.Terminating = ep.Conditions.Terminating != nil && *ep.Conditions.Terminating
				rs.Endpoints = append(rs.Endpoints, e)
			}
		}
		rc.Services = append(rc.Services, rs)
	}
	return rc
}

func refProtocol(p corev1.Protocol) (state.Protocol, bool) {
	switch p {
	case "", corev1.ProtocolTCP:
		return state.TCP, true
	case corev1.ProtocolUDP:
		return state.UDP, true
	}
	return 0, false
}

// podIPs are the addresses of a cluster's pods that hold an endpoint: pods
// on the host network and pods that have finished have none.
func podIPs(o *ClusterObjects) []netip.Addr {
	var out []netip.Addr
	for _, p := range o.Pods {
		if p.Spec.HostNetwork || p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed {
			continue
		}
		ips := p.Status.PodIPs
		if len(ips) == 0 && p.Status.PodIP != "" {
			ips = []corev1.PodIP{{IP: p.Status.PodIP}}
		}
		for _, pip := range ips {
			if a, err := netip.ParseAddr(pip.IP); err == nil {
				out = append(out, a.Unmap())
			}
		}
	}
	return out
}

// checkNothingLost compares every agent's desired state with the reference
// merge of the clusters' Kubernetes state as it is now: the same frontends
// with the same active backends, and an ipcache entry for every pod of
// every connected cluster. Together with checkDatapath (maps equal desired
// state, no stale backend) it shows that nothing was lost on the way and
// nothing stale survived.
func checkNothingLost(tp *scenarios.Topology, objs map[string]*ClusterObjects, nodes map[string][]NodeState) error {
	refs := map[string]refCluster{}
	for _, c := range tp.Clusters {
		refs[c.Name] = refClusterOf(c, objs[c.Name])
	}
	failStatic := tp.RemoteLoss == scenarios.RemoteLossFailStatic
	var errs []error
	for _, c := range tp.Clusters {
		want := map[netip.Addr]bool{}
		for _, ip := range podIPs(objs[c.Name]) {
			want[ip] = true
		}
		var remotes []refCluster
		for _, p := range peers(tp, c.Name) {
			remotes = append(remotes, refs[p])
			for _, ip := range podIPs(objs[p]) {
				want[ip] = true
			}
		}
		expected := referenceMerge(refs[c.Name], remotes, failStatic)
		for _, n := range nodes[c.Name] {
			where := c.Name + "/" + n.Node
			if !n.Running {
				errs = append(errs, fmt.Errorf("%s: agent is not running", where))
				continue
			}
			desired := n.Desired
			if desired == nil {
				errs = append(errs, fmt.Errorf("%s: agent has programmed nothing", where))
				continue
			}
			errs = append(errs, compareServices(where, expected, desired.Services)...)
			have := map[netip.Addr]bool{}
			for _, e := range desired.IPCache {
				if e.Prefix.IsSingleIP() {
					have[e.Prefix.Addr()] = true
				}
			}
			var missing []string
			for ip := range want {
				if !have[ip] {
					missing = append(missing, ip.String())
				}
			}
			if len(missing) > 0 {
				sort.Strings(missing)
				errs = append(errs, fmt.Errorf("%s: ipcache lacks pods %s", where, strings.Join(missing, ", ")))
			}
		}
	}
	return errors.Join(errs...)
}

func activeBackends(s state.Service) string {
	var bs []string
	for _, b := range s.Backends {
		if b.State == state.BackendActive {
			bs = append(bs, backendKey(b))
		}
	}
	sort.Strings(bs)
	return strings.Join(bs, " ")
}

func compareServices(where string, expected, desired []state.Service) []error {
	want := map[state.Frontend]state.Service{}
	for _, s := range expected {
		want[s.Frontend] = s
	}
	got := map[state.Frontend]state.Service{}
	for _, s := range desired {
		got[s.Frontend] = s
	}
	var errs []error
	for fe, w := range want {
		g, ok := got[fe]
		switch {
		case !ok:
			errs = append(errs, fmt.Errorf("%s: service %s (%s) is missing", where, w.Name, fe))
		case activeBackends(g) != activeBackends(w):
			errs = append(errs, fmt.Errorf("%s: service %s (%s) has backends [%s], the clusters' state says [%s]",
				where, w.Name, fe, activeBackends(g), activeBackends(w)))
		}
	}
	for fe, g := range got {
		if _, ok := want[fe]; !ok {
			errs = append(errs, fmt.Errorf("%s: service %s (%s) is programmed but does not exist", where, g.Name, fe))
		}
	}
	return errs
}
