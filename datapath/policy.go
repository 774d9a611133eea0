package datapath

import (
	"github.com/meshbed/meshbed/datapath/state"
)

// Prefix lengths of the policy trie's key data (bpf/lib/maps.h, struct
// policy_key after prefixlen): identity 32 bits, endpoint ID 16, direction 8
// always match; then protocol 8 and port 16.
const (
	policyFixedBits = 56
	policyProtoBits = 64
	policyFullBits  = 80
)

// Flags of struct endpoint (bpf/lib/maps.h).
const (
	epIngressEnforced = 1 << 0
	epEgressEnforced  = 1 << 1
)

// portPrefix is an aligned block of ports: start has its low 16-bits
// bits zero and the block covers 2^(16-bits) ports.
type portPrefix struct {
	start uint16
	bits  int
}

// portPrefixes splits the inclusive range lo..hi into the fewest aligned
// power-of-two blocks, each one LPM prefix over the port (at most 30).
func portPrefixes(lo, hi uint16) []portPrefix {
	var out []portPrefix
	for l := uint32(lo); l <= uint32(hi); {
		bits := 16
		for bits > 0 {
			size := uint32(1) << (16 - (bits - 1))
			if l%size != 0 || l+size-1 > uint32(hi) {
				break
			}
			bits--
		}
		out = append(out, portPrefix{start: uint16(l), bits: bits})
		l += uint32(1) << (16 - bits)
	}
	return out
}

// policyEntries returns the trie keys that implement an endpoint's policy
// and the endpoint's enforcement flags. Allow entries of a direction that is
// not enforced are left out: that direction allows everything anyway.
func policyEntries(id uint16, p *state.EndpointPolicy) (map[podPolicyKey]struct{}, uint8) {
	if p == nil {
		return nil, 0
	}
	var flags uint8
	if p.IngressEnforced {
		flags |= epIngressEnforced
	}
	if p.EgressEnforced {
		flags |= epEgressEnforced
	}
	keys := make(map[podPolicyKey]struct{})
	for _, k := range p.Allow {
		if (k.Direction == state.Ingress && !p.IngressEnforced) || (k.Direction == state.Egress && !p.EgressEnforced) {
			continue
		}
		base := podPolicyKey{Identity: k.Identity, EndpointId: id, Direction: uint8(k.Direction)}
		protos := []state.Protocol{k.Protocol}
		if k.Protocol == state.ProtoAny {
			if k.Port == 0 {
				base.Prefixlen = policyFixedBits
				keys[base] = struct{}{}
				continue
			}
			// A port without a protocol means that port on every
			// protocol that has ports.
			protos = []state.Protocol{state.TCP, state.UDP}
		}
		for _, proto := range protos {
			key := base
			key.Proto = uint8(proto)
			if k.Port == 0 {
				key.Prefixlen = policyProtoBits
				keys[key] = struct{}{}
				continue
			}
			end := k.EndPort
			if end < k.Port {
				end = k.Port
			}
			for _, pp := range portPrefixes(k.Port, end) {
				key.Port = be16(pp.start)
				key.Prefixlen = uint32(policyProtoBits + pp.bits)
				keys[key] = struct{}{}
			}
		}
	}
	return keys, flags
}
