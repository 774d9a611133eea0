package datapath

import (
	"testing"

	"github.com/meshbed/meshbed/datapath/state"
)

func TestPortPrefixes(t *testing.T) {
	tests := []struct {
		lo, hi uint16
		want   []portPrefix
	}{
		{80, 80, []portPrefix{{80, 16}}},
		{80, 81, []portPrefix{{80, 15}}},
		{80, 90, []portPrefix{{80, 13}, {88, 15}, {90, 16}}},
		{0, 65535, []portPrefix{{0, 0}}},
		{1, 65535, nil}, // checked by count below
	}
	for _, tt := range tests {
		got := portPrefixes(tt.lo, tt.hi)
		checkCover(t, tt.lo, tt.hi, got)
		if tt.want != nil && !equalPrefixes(got, tt.want) {
			t.Errorf("portPrefixes(%d, %d) = %v, want %v", tt.lo, tt.hi, got, tt.want)
		}
	}
	if n := len(portPrefixes(1, 65534)); n != 30 {
		t.Errorf("1-65534 takes %d prefixes, want the worst case 30", n)
	}
}

func equalPrefixes(a, b []portPrefix) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// checkCover asserts that ps are aligned, disjoint and cover exactly lo..hi.
func checkCover(t *testing.T, lo, hi uint16, ps []portPrefix) {
	t.Helper()
	if len(ps) > 30 {
		t.Fatalf("%d-%d: %d prefixes", lo, hi, len(ps))
	}
	next := uint32(lo)
	for _, p := range ps {
		size := uint32(1) << (16 - p.bits)
		if uint32(p.start)%size != 0 {
			t.Fatalf("%d-%d: prefix %v not aligned", lo, hi, p)
		}
		if uint32(p.start) != next {
			t.Fatalf("%d-%d: prefix %v leaves a gap or overlaps at %d", lo, hi, p, next)
		}
		next += size
	}
	if next != uint32(hi)+1 {
		t.Fatalf("%d-%d: prefixes end at %d", lo, hi, next-1)
	}
}

func FuzzPortPrefixes(f *testing.F) {
	f.Add(uint16(80), uint16(90))
	f.Add(uint16(0), uint16(65535))
	f.Add(uint16(1), uint16(65534))
	f.Fuzz(func(t *testing.T, a, b uint16) {
		lo, hi := min(a, b), max(a, b)
		checkCover(t, lo, hi, portPrefixes(lo, hi))
	})
}

func TestPolicyEntries(t *testing.T) {
	pol := &state.EndpointPolicy{IngressEnforced: true, Allow: []state.PolicyKey{
		{Direction: state.Ingress, Identity: 5, Protocol: state.ProtoAny},
		{Direction: state.Ingress, Identity: 6, Protocol: state.ProtoAny, Port: 53},
		{Direction: state.Ingress, Identity: 7, Protocol: state.UDP},
		{Direction: state.Egress, Identity: 8, Protocol: state.TCP, Port: 80}, // egress not enforced: left out
	}}
	keys, flags := policyEntries(3, pol)
	if flags != epIngressEnforced {
		t.Errorf("flags %b", flags)
	}
	want := map[podPolicyKey]struct{}{
		{Prefixlen: policyFixedBits, Identity: 5, EndpointId: 3}:                           {},
		{Prefixlen: policyFullBits, Identity: 6, EndpointId: 3, Proto: 6, Port: be16(53)}:  {},
		{Prefixlen: policyFullBits, Identity: 6, EndpointId: 3, Proto: 17, Port: be16(53)}: {},
		{Prefixlen: policyProtoBits, Identity: 7, EndpointId: 3, Proto: 17}:                {},
	}
	if len(keys) != len(want) {
		t.Fatalf("keys %v, want %v", keys, want)
	}
	for k := range want {
		if _, ok := keys[k]; !ok {
			t.Errorf("missing %+v", k)
		}
	}
	if keys, flags := policyEntries(3, nil); keys != nil || flags != 0 {
		t.Errorf("nil policy gave %v %b", keys, flags)
	}
}
