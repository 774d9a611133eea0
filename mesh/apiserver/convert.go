package apiserver

import (
	"net"
	"net/netip"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"

	"github.com/meshbed/meshbed/mesh/service"
	"github.com/meshbed/meshbed/mesh/wire"
)

// nodeSource is the Source of exported nodes, as Cilium writes it for nodes
// it learns from the Kubernetes API.
const nodeSource = "custom-resource"

// NodeValue is the exported form of a Kubernetes Node: its InternalIP and
// ExternalIP addresses (InternalIP first: it is the tunnel endpoint), its
// pod CIDRs and its labels. A node without any address is not exported
// (ok false): readers reject it, and no pod can be reached through it.
func NodeValue(cluster string, clusterID uint32, n *corev1.Node) (v wire.Node, ok bool) {
	v = wire.Node{
		Name:        n.Name,
		Cluster:     cluster,
		ClusterID:   clusterID,
		Source:      nodeSource,
		IPAddresses: []wire.NodeAddress{},
		Labels:      nonNil(n.Labels),
		Annotations: map[string]string{},
		// Passed on as published; every reader validates it.
		WireguardPubKey: n.Annotations[wire.WireguardPubKeyAnnotation],
	}
	for _, typ := range []corev1.NodeAddressType{corev1.NodeInternalIP, corev1.NodeExternalIP} {
		for _, a := range n.Status.Addresses {
			if a.Type != typ {
				continue
			}
			if ip := parseIP(a.Address); ip != nil {
				v.IPAddresses = append(v.IPAddresses, wire.NodeAddress{Type: string(typ), IP: ip})
			}
		}
	}
	cidrs := n.Spec.PodCIDRs
	if len(cidrs) == 0 && n.Spec.PodCIDR != "" {
		cidrs = []string{n.Spec.PodCIDR}
	}
	for _, c := range cidrs {
		p, err := netip.ParsePrefix(c)
		if err != nil {
			continue
		}
		p = p.Masked()
		ipn := &net.IPNet{IP: net.IP(p.Addr().AsSlice()), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
		switch {
		case p.Addr().Is4() && v.IPv4AllocCIDR == nil:
			v.IPv4AllocCIDR = ipn
		case p.Addr().Is6() && v.IPv6AllocCIDR == nil:
			v.IPv6AllocCIDR = ipn
		}
	}
	return v, len(v.IPAddresses) > 0
}

// ServiceValue is the exported form of a Service and its EndpointSlices, and
// whether the service is exported at all: only global services that are
// shared (service.cilium.io/global and /shared, or their legacy aliases;
// shared defaults to true) are. Frontends are the ClusterIPs (none for a
// headless service), backends every endpoint address that is ready or
// serving, with the target ports of its slice.
func ServiceValue(cluster string, clusterID uint32, svc *corev1.Service, slices []*discoveryv1.EndpointSlice) (wire.ClusterService, bool) {
	// An unknown affinity is the importer's concern; export regardless.
	policy, _ := service.ParseAnnotations(svc.Annotations)
	if !policy.Global || !policy.Shared {
		return wire.ClusterService{}, false
	}
	// Conversion errors only report ports the datapath cannot serve
	// (SCTP); they are left out of the export as well.
	ls, _ := service.FromKubernetes(svc, slices)
	v := wire.ClusterService{
		Cluster:         cluster,
		Namespace:       svc.Namespace,
		Name:            svc.Name,
		Frontends:       map[string]wire.PortConfiguration{},
		Backends:        map[string]wire.PortConfiguration{},
		Labels:          nonNil(svc.Labels),
		Selector:        nonNil(svc.Spec.Selector),
		IncludeExternal: true,
		Shared:          true,
		ClusterID:       clusterID,
	}
	for _, ip := range ls.ClusterIPs {
		if ip.Zone() != "" {
			continue
		}
		pc := wire.PortConfiguration{}
		for _, p := range ls.Ports {
			pc[p.Name] = &wire.PortConfig{Protocol: p.Protocol.String(), Port: p.Port}
		}
		v.Frontends[ip.String()] = pc
	}
	for _, b := range ls.Backends {
		// A zoned (link-local) address means nothing in another
		// cluster; readers reject it. A terminating endpoint is not
		// exported even while it still serves: the wire format cannot say
		// "terminating", and a remote cluster that saw it as a plain
		// backend would keep opening new connections to it (and keep a
		// draining pod alive) for its whole grace period. Established
		// connections from other clusters keep their conntrack entries.
		if !b.Ready || b.Terminating || b.IP.Zone() != "" {
			continue
		}
		addr := b.IP.String()
		pc := v.Backends[addr]
		if pc == nil {
			pc = wire.PortConfiguration{}
			v.Backends[addr] = pc
		}
		for _, p := range b.Ports {
			pc[p.Name] = &wire.PortConfig{Protocol: p.Protocol.String(), Port: p.Port}
		}
	}
	// Hostnames and zones ride along for the addresses exported.
	for _, es := range slices {
		for _, ep := range es.Endpoints {
			if len(ep.Addresses) == 0 {
				continue
			}
			a, err := netip.ParseAddr(ep.Addresses[0])
			if err != nil {
				continue
			}
			addr := a.Unmap().String()
			if _, ok := v.Backends[addr]; !ok {
				continue
			}
			if ep.Hostname != nil && *ep.Hostname != "" {
				if v.Hostnames == nil {
					v.Hostnames = map[string]string{}
				}
				v.Hostnames[addr] = *ep.Hostname
			}
			if ep.Zone != nil && *ep.Zone != "" {
				if v.Zones == nil {
					v.Zones = map[string]wire.BackendZone{}
				}
				v.Zones[addr] = wire.BackendZone{Zone: *ep.Zone}
			}
		}
	}
	return v, true
}

// PodIPs are the addresses of a pod that get ipcache entries: every pod IP
// of a running or pending pod on the pod network. Host-network pods share
// their node's address, which is the node's (remote-node) identity, not
// theirs; finished pods hold no address any more.
func PodIPs(p *corev1.Pod) []netip.Addr {
	if p.Spec.HostNetwork || p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed {
		return nil
	}
	ips := make([]netip.Addr, 0, len(p.Status.PodIPs))
	for _, pip := range p.Status.PodIPs {
		if a, err := netip.ParseAddr(pip.IP); err == nil && a.Zone() == "" {
			ips = append(ips, a.Unmap())
		}
	}
	if len(ips) == 0 && p.Status.PodIP != "" {
		if a, err := netip.ParseAddr(p.Status.PodIP); err == nil && a.Zone() == "" {
			ips = append(ips, a.Unmap())
		}
	}
	return ips
}

// IPValue is the ipcache entry of one address of pod p with identity id.
// HostIP is the node the pod runs on (status.hostIP), its tunnel endpoint.
func IPValue(p *corev1.Pod, ip netip.Addr, id uint32) wire.IPIdentityPair {
	v := wire.IPIdentityPair{
		IP:           net.IP(ip.AsSlice()),
		HostIP:       parseIP(p.Status.HostIP),
		ID:           id,
		K8sNamespace: p.Namespace,
		K8sPodName:   p.Name,
	}
	for _, c := range p.Spec.Containers {
		for _, port := range c.Ports {
			if port.Name == "" || port.ContainerPort <= 0 || port.ContainerPort > 65535 {
				continue
			}
			proto := string(port.Protocol)
			if proto == "" {
				proto = string(corev1.ProtocolTCP)
			}
			v.NamedPorts = append(v.NamedPorts, wire.NamedPort{Name: port.Name, Port: uint16(port.ContainerPort), Protocol: proto})
		}
	}
	return v
}

// parseIP returns a 4-byte slice for IPv4 so that JSON shows the plain form.
func parseIP(s string) net.IP {
	a, err := netip.ParseAddr(s)
	if err != nil {
		return nil
	}
	return net.IP(a.Unmap().AsSlice())
}

func nonNil(m map[string]string) map[string]string {
	if m == nil {
		return map[string]string{}
	}
	return m
}
