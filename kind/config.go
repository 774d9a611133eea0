package kind

import (
	"errors"
	"fmt"
	"net/netip"

	kindv1alpha4 "sigs.k8s.io/kind/pkg/apis/config/v1alpha4"
	"sigs.k8s.io/yaml"
)

// DecodeClusterConfig decodes a Kind cluster config (kind.x-k8s.io/v1alpha4
// Cluster, as `kind create cluster --config` takes it) strictly, with
// Kind's own types, and checks what a meshbed cluster needs of it: the
// default CNI disabled (meshbed's agent plumbs the pods), pod and service
// subnets that are IPv4 prefixes without host bits and do not overlap,
// and at least one control-plane node. Every problem is reported at once.
func DecodeClusterConfig(data []byte) (*kindv1alpha4.Cluster, error) {
	var c kindv1alpha4.Cluster
	if err := yaml.UnmarshalStrict(data, &c); err != nil {
		return nil, fmt.Errorf("kind cluster config: %w", err)
	}
	var errs []error
	if c.APIVersion != "kind.x-k8s.io/v1alpha4" || c.Kind != "Cluster" {
		errs = append(errs, fmt.Errorf("apiVersion/kind %q/%q, want kind.x-k8s.io/v1alpha4 Cluster", c.APIVersion, c.Kind))
	}
	if !c.Networking.DisableDefaultCNI {
		errs = append(errs, errors.New("networking.disableDefaultCNI must be true: meshbed's agent is the CNI"))
	}
	pods, err := subnet("networking.podSubnet", c.Networking.PodSubnet)
	errs = append(errs, err)
	svcs, err := subnet("networking.serviceSubnet", c.Networking.ServiceSubnet)
	errs = append(errs, err)
	if pods.IsValid() && svcs.IsValid() && pods.Overlaps(svcs) {
		errs = append(errs, fmt.Errorf("networking.podSubnet %s overlaps networking.serviceSubnet %s", pods, svcs))
	}
	control := 0
	for i, n := range c.Nodes {
		switch n.Role {
		case kindv1alpha4.ControlPlaneRole:
			control++
		case kindv1alpha4.WorkerRole:
		default:
			errs = append(errs, fmt.Errorf("nodes[%d].role %q: want control-plane or worker", i, n.Role))
		}
	}
	if len(c.Nodes) > 0 && control == 0 {
		errs = append(errs, errors.New("nodes: no control-plane node"))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("kind cluster config %q: %w", c.Name, err)
	}
	return &c, nil
}

func subnet(field, s string) (netip.Prefix, error) {
	p, err := netip.ParsePrefix(s)
	switch {
	case err != nil:
		return netip.Prefix{}, fmt.Errorf("%s %q: %w", field, s, err)
	case !p.Addr().Is4():
		return netip.Prefix{}, fmt.Errorf("%s %s: want an IPv4 prefix", field, p)
	case p.Masked() != p:
		return netip.Prefix{}, fmt.Errorf("%s %s has host bits set", field, p)
	}
	return p, nil
}
