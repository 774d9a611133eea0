package service

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/meshbed/meshbed/datapath/state"
	"github.com/meshbed/meshbed/mesh/wire"
)

const localID = 1

var globalAnn = map[string]string{AnnotationGlobal: "true"}

func ann(kv ...string) map[string]string {
	m := map[string]string{}
	for i := 0; i+1 < len(kv); i += 2 {
		m[kv[i]] = kv[i+1]
	}
	return m
}

// local builds rebel-base with one ClusterIP and port http 80/TCP.
func local(a map[string]string, backends ...LocalBackend) LocalService {
	return LocalService{
		Namespace: "default", Name: "rebel-base",
		ClusterIPs:  []netip.Addr{netip.MustParseAddr("10.96.0.10")},
		Ports:       []ServicePort{{Name: "http", Port: 80, Protocol: state.TCP}},
		Annotations: a,
		Backends:    backends,
	}
}

func ready(ip string) LocalBackend {
	return LocalBackend{IP: netip.MustParseAddr(ip), Ports: []BackendPort{{Name: "http", Port: 8080, Protocol: state.TCP}}, Ready: true, Serving: true}
}

// export builds the ClusterService cluster c (ID id) exports for rebel-base.
func export(c string, id uint32, backends ...string) *wire.ClusterService {
	cs := &wire.ClusterService{
		Cluster: c, ClusterID: id, Namespace: "default", Name: "rebel-base", Shared: true,
		Frontends: map[string]wire.PortConfiguration{"10.200.0.1": {"http": {Protocol: "TCP", Port: 80}}},
		Backends:  map[string]wire.PortConfiguration{},
	}
	for _, b := range backends {
		cs.Backends[b] = wire.PortConfiguration{"http": {Protocol: "TCP", Port: 8080}}
	}
	return cs
}

func remote(name string, id uint32, reachable bool, svcs ...*wire.ClusterService) RemoteCluster {
	return RemoteCluster{Name: name, ID: id, Reachable: reachable, Services: svcs}
}

func TestParseAnnotations(t *testing.T) {
	tests := []struct {
		name string
		in   map[string]string
		want Policy
		err  error
	}{
		{"none", nil, Policy{Affinity: AffinityNone}, nil},
		{"global defaults shared", ann(AnnotationGlobal, "true"), Policy{Global: true, Shared: true, Affinity: AffinityNone}, nil},
		{"global mixed case", ann(AnnotationGlobal, "True"), Policy{Global: true, Shared: true, Affinity: AffinityNone}, nil},
		{"global false", ann(AnnotationGlobal, "false", AnnotationAffinity, "bogus"), Policy{Affinity: AffinityNone}, nil},
		{"shared false", ann(AnnotationGlobal, "true", AnnotationShared, "FALSE"), Policy{Global: true, Affinity: AffinityNone}, nil},
		{"shared not true means false", ann(AnnotationGlobal, "true", AnnotationShared, "no"), Policy{Global: true, Affinity: AffinityNone}, nil},
		{"legacy", ann(AnnotationGlobalLegacy, "true", AnnotationSharedLegacy, "false", AnnotationAffinityLegacy, "REMOTE"), Policy{Global: true, Affinity: AffinityRemote}, nil},
		{"new key wins over legacy", ann(AnnotationGlobal, "false", AnnotationGlobalLegacy, "true"), Policy{Affinity: AffinityNone}, nil},
		{"affinity local", ann(AnnotationGlobal, "true", AnnotationAffinity, "local"), Policy{Global: true, Shared: true, Affinity: AffinityLocal}, nil},
		{"affinity empty", ann(AnnotationGlobal, "true", AnnotationAffinity, ""), Policy{Global: true, Shared: true, Affinity: AffinityNone}, nil},
		{"affinity unknown", ann(AnnotationGlobal, "true", AnnotationAffinity, "closest"), Policy{Global: true, Shared: true, Affinity: AffinityNone}, ErrUnknownAffinity},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseAnnotations(tt.in)
			if got != tt.want {
				t.Errorf("got %+v, want %+v", got, tt.want)
			}
			if !errors.Is(err, tt.err) || (tt.err == nil) != (err == nil) {
				t.Errorf("err %v, want %v", err, tt.err)
			}
		})
	}
}

// TestMergeDeterministic checks that input order never changes the output.
func TestMergeDeterministic(t *testing.T) {
	in := benchInput(50, 6, 3)
	in.Remote[2].Reachable = false
	want := Merge(in)
	r := rand.New(rand.NewPCG(1, 2))
	for i := range 20 {
		shuffled := *in
		shuffled.Local = slices.Clone(in.Local)
		shuffled.Remote = slices.Clone(in.Remote)
		r.Shuffle(len(shuffled.Local), func(i, j int) { shuffled.Local[i], shuffled.Local[j] = shuffled.Local[j], shuffled.Local[i] })
		r.Shuffle(len(shuffled.Remote), func(i, j int) { shuffled.Remote[i], shuffled.Remote[j] = shuffled.Remote[j], shuffled.Remote[i] })
		for k := range shuffled.Local {
			b := slices.Clone(shuffled.Local[k].Backends)
			r.Shuffle(len(b), func(i, j int) { b[i], b[j] = b[j], b[i] })
			shuffled.Local[k].Backends = b
		}
		if got := Merge(&shuffled); !reflect.DeepEqual(got, want) {
			t.Fatalf("shuffle %d: result differs", i)
		}
	}
}

// TestMergeServiceMatchesMerge checks the incremental entry point against the
// whole-set merge.
func TestMergeServiceMatchesMerge(t *testing.T) {
	in := benchInput(20, 4, 2)
	in.Remote[1].Reachable = false
	whole := Merge(in)
	slices.SortFunc(in.Local, func(a, b LocalService) int { return strings.Compare(a.NamespacedName(), b.NamespacedName()) })
	var got []state.Service
	for i := range in.Local {
		var imports []Import
		for _, rc := range in.Remote {
			for _, cs := range rc.Services {
				imports = append(imports, Import{Cluster: rc.Name, ClusterID: rc.ID, Reachable: rc.Reachable, Service: cs})
			}
		}
		got = append(got, MergeService(&in.Local[i], imports, in.Options).Services...)
	}
	if !reflect.DeepEqual(got, whole.Services) {
		t.Fatalf("MergeService differs from Merge:\n%+v\n%+v", got[:min(2, len(got))], whole.Services[:min(2, len(whole.Services))])
	}
}

// benchInput builds n global services (ports http/TCP and dns/UDP, one
// ClusterIP) with b local backends, and c remote clusters exporting b
// backends each.
func benchInput(n, c, b int) *Input {
	in := &Input{Options: Options{LocalClusterID: localID}}
	for i := range n {
		s := LocalService{
			Namespace: fmt.Sprintf("ns%d", i%10), Name: fmt.Sprintf("svc%d", i),
			ClusterIPs:  []netip.Addr{netip.AddrFrom4([4]byte{10, 96, byte(i >> 8), byte(i)})},
			Ports:       []ServicePort{{Name: "http", Port: 80, Protocol: state.TCP}, {Name: "dns", Port: 53, Protocol: state.UDP}},
			Annotations: map[string]string{AnnotationGlobal: "true"},
		}
		if i%3 == 0 {
			s.Annotations = map[string]string{AnnotationGlobal: "true", AnnotationAffinity: "local"}
		}
		for j := range b {
			s.Backends = append(s.Backends, LocalBackend{
				IP:    netip.AddrFrom4([4]byte{10, 1, byte(i), byte(j)}),
				Ports: []BackendPort{{Name: "http", Port: 8080, Protocol: state.TCP}, {Name: "dns", Port: 5353, Protocol: state.UDP}},
				Ready: true, Serving: true,
			})
		}
		in.Local = append(in.Local, s)
	}
	for k := range c {
		id := uint32(k + 2)
		rc := RemoteCluster{Name: fmt.Sprintf("c%d", id), ID: id, Reachable: true}
		for i := range n {
			cs := &wire.ClusterService{
				Cluster: rc.Name, ClusterID: id, Namespace: fmt.Sprintf("ns%d", i%10), Name: fmt.Sprintf("svc%d", i), Shared: true,
				Backends: map[string]wire.PortConfiguration{},
			}
			for j := range b {
				ip := netip.AddrFrom4([4]byte{10, byte(id), byte(i), byte(j)})
				cs.Backends[ip.String()] = wire.PortConfiguration{"http": {Protocol: "TCP", Port: 8080}, "dns": {Protocol: "UDP", Port: 5353}}
			}
			rc.Services = append(rc.Services, cs)
		}
		in.Remote = append(in.Remote, rc)
	}
	return in
}

func BenchmarkMerge(b *testing.B) {
	const services, clusters, backends = 1000, 16, 4
	in := benchInput(services, clusters, backends)
	var res Result
	for b.Loop() {
		res = Merge(in)
	}
	nb := 0
	for _, s := range res.Services {
		nb += len(s.Backends)
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/1e6, "ms/merge")
	b.ReportMetric(float64(len(res.Services)), "frontends")
	b.ReportMetric(float64(nb), "backends")
}
