package datapath

import (
	"errors"
	"fmt"
	"math"

	"github.com/meshbed/meshbed/datapath/state"
)

// maxClusterID is the largest cluster ID of a mesh (511 clusters, shift 15).
const maxClusterID = 511

// validate checks the whole state before anything reaches a map, so a bad
// item never leaves a half-applied change behind. Every problem is reported,
// each naming its item.
func validate(s *state.State) error {
	var errs []error
	add := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }

	frontends := make(map[state.Frontend]string, len(s.Services))
	for _, svc := range s.Services {
		fe := svc.Frontend
		// Item names are built only for errors: a state can hold
		// 100,000 backends, and Apply runs on every change.
		item := lazy(func() string { return fmt.Sprintf("service %q frontend %s", svc.Name, fe) })
		switch {
		case !fe.IP.IsValid():
			add("%s: invalid address", item)
		case !fe.IP.Is4():
			add("%s: only IPv4 is supported", item)
		}
		if fe.Port == 0 {
			add("%s: port 0", item)
		}
		if fe.Protocol != state.TCP && fe.Protocol != state.UDP {
			add("%s: protocol %s cannot be load-balanced (want TCP or UDP)", item, fe.Protocol)
		}
		if other, dup := frontends[fe]; dup {
			add("%s: duplicate frontend (also service %q)", item, other)
		}
		frontends[fe] = svc.Name
		active := 0
		for _, b := range svc.Backends {
			bitem := lazy(func() string { return fmt.Sprintf("%s backend %s", item, b) })
			switch {
			case !b.IP.IsValid():
				add("%s: invalid address", bitem)
			case !b.IP.Is4():
				add("%s: only IPv4 is supported", bitem)
			}
			if b.Port == 0 {
				add("%s: port 0", bitem)
			}
			if b.Protocol != fe.Protocol {
				add("%s: protocol %s differs from the frontend's", bitem, b.Protocol)
			}
			if b.ClusterID == 0 || b.ClusterID > maxClusterID {
				add("%s: cluster ID %d out of range 1..%d", bitem, b.ClusterID, maxClusterID)
			}
			switch b.State {
			case state.BackendActive:
				active++
			case state.BackendTerminating:
			default:
				add("%s: unknown state %d", bitem, b.State)
			}
		}
		if active > math.MaxUint16 {
			add("%s: %d active backends, at most %d fit", item, active, math.MaxUint16)
		}
	}

	prefixes := make(map[string]bool, len(s.IPCache))
	for _, e := range s.IPCache {
		item := lazy(func() string { return fmt.Sprintf("ipcache entry %s", e.Prefix) })
		switch {
		case !e.Prefix.IsValid():
			add("%s: invalid prefix", item)
			continue
		case !e.Prefix.Addr().Is4():
			add("%s: only IPv4 is supported", item)
		}
		if e.Identity == state.IdentityUnknown || e.Identity > state.IdentityMax {
			add("%s: identity %d out of range 1..%d", item, e.Identity, state.IdentityMax)
		}
		if e.TunnelEndpoint.IsValid() && !e.TunnelEndpoint.Is4() {
			add("%s: tunnel endpoint %s is not IPv4", item, e.TunnelEndpoint)
		}
		if e.ClusterID > maxClusterID {
			add("%s: cluster ID %d out of range 0..%d", item, e.ClusterID, maxClusterID)
		}
		key := e.Prefix.Masked().String()
		if prefixes[key] {
			add("%s: duplicate prefix", item)
		}
		prefixes[key] = true
	}

	ids := make(map[uint16]bool, len(s.Endpoints))
	ips := make(map[string]uint16, len(s.Endpoints))
	for _, ep := range s.Endpoints {
		item := lazy(func() string { return fmt.Sprintf("endpoint %d (%s)", ep.ID, ep.IP) })
		if ep.ID == 0 {
			add("%s: endpoint ID 0", item)
		}
		if ids[ep.ID] {
			add("%s: duplicate endpoint ID", item)
		}
		ids[ep.ID] = true
		switch {
		case !ep.IP.IsValid():
			add("%s: invalid address", item)
		case !ep.IP.Is4():
			add("%s: only IPv4 is supported", item)
		default:
			if other, dup := ips[ep.IP.String()]; dup {
				add("%s: address also used by endpoint %d", item, other)
			}
			ips[ep.IP.String()] = ep.ID
		}
		if ep.Identity == state.IdentityUnknown || ep.Identity > state.IdentityMax {
			add("%s: identity %d out of range 1..%d", item, ep.Identity, state.IdentityMax)
		}
		if ep.Interface == "" {
			add("%s: no interface", item)
		}
		if ep.Policy == nil {
			continue
		}
		for _, k := range ep.Policy.Allow {
			kitem := lazy(func() string {
				return fmt.Sprintf("%s policy %s identity %d %s port %d-%d", item, k.Direction, k.Identity, k.Protocol, k.Port, k.EndPort)
			})
			if k.Direction != state.Ingress && k.Direction != state.Egress {
				add("%s: unknown direction %d", kitem, k.Direction)
			}
			if k.Identity > state.IdentityMax {
				add("%s: identity out of range", kitem)
			}
			if k.EndPort != 0 && k.EndPort < k.Port {
				add("%s: end port below port", kitem)
			}
		}
	}
	return errors.Join(errs...)
}

// lazy is a name formatted only when printed.
type lazy func() string

func (l lazy) String() string { return l() }
