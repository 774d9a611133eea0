package scenarios

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"testing"

	"github.com/meshbed/meshbed/internal/testenv"
)

// golden compares got with the golden file, or rewrites it under -update.
func golden(t *testing.T, path string, got []byte) {
	t.Helper()
	testenv.Golden(t, path, got)
}

// TestFixtures decodes every testdata/valid-*.yaml, comparing a dump of the
// typed scenario with its .golden file, and every testdata/invalid-*.yaml,
// comparing the full error text with its .err file.
func TestFixtures(t *testing.T) {
	files, err := filepath.Glob("testdata/*.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var valid, invalid int
	for _, file := range files {
		base := filepath.Base(file)
		stem := strings.TrimSuffix(file, ".yaml")
		t.Run(base, func(t *testing.T) {
			sc, err := Load(file)
			switch {
			case strings.HasPrefix(base, "valid-"):
				valid++
				if err != nil {
					t.Fatalf("want valid, got:\n%v", err)
				}
				golden(t, stem+".golden", []byte(dump(sc)))
			case strings.HasPrefix(base, "invalid-"):
				invalid++
				if err == nil {
					t.Fatal("want an error, got none")
				}
				for line := range strings.SplitSeq(err.Error(), "\n") {
					if !strings.HasPrefix(line, file+": ") {
						t.Errorf("error line does not start with the file name: %q", line)
					}
				}
				var fe *FieldError
				if !errors.As(err, &fe) {
					t.Errorf("error holds no *FieldError: %v", err)
				}
				golden(t, stem+".err", []byte(err.Error()+"\n"))
			default:
				t.Fatalf("fixture %s is neither valid-* nor invalid-*", base)
			}
		})
	}
	if valid == 0 || invalid == 0 {
		t.Fatalf("found %d valid and %d invalid fixtures", valid, invalid)
	}
}

// TestScenarioFiles is what `meshbed scenario validate` checks: every
// scenario file shipped in this directory is valid.
func TestScenarioFiles(t *testing.T) {
	files, err := filepath.Glob("*.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if len(files) < 7 {
		t.Fatalf("found only %d scenario files: %v", len(files), files)
	}
	for _, file := range files {
		t.Run(file, func(t *testing.T) {
			sc, err := Load(file)
			if err != nil {
				t.Fatal(err)
			}
			if want := strings.TrimSuffix(file, ".yaml"); sc.Name != want {
				t.Errorf("metadata.name is %q, want the file's name %q (make scenario NAME=...)", sc.Name, want)
			}
			if sc.Description == "" {
				t.Error("no metadata.description: say what the scenario shows")
			}
			if len(sc.Steps) == 0 {
				t.Error("no steps")
			}
			for _, st := range sc.Steps {
				if st.Name == st.Action().ActionName() {
					t.Errorf("step %d has no name of its own", st.Index)
				}
			}
		})
	}
}

func TestLoadMissingFile(t *testing.T) {
	_, err := Load("testdata/does-not-exist.yaml")
	want := "testdata/does-not-exist.yaml: cannot read: no such file or directory"
	if err == nil || err.Error() != want {
		t.Fatalf("got %v, want %s", err, want)
	}
}

func TestDefaults(t *testing.T) {
	sc, err := Load("testdata/valid-minimal.yaml")
	if err != nil {
		t.Fatal(err)
	}
	want := Topology{
		Routing: RoutingTunnel, KVStoreMesh: true, RemoteLoss: RemoteLossWithdraw, Encryption: EncryptionNone,
		Clusters: []Cluster{{Name: "solo", ID: 7, Nodes: DefaultNodes,
			PodCIDR: DefaultPodCIDR(7), ServiceCIDR: DefaultServiceCIDR(7)}},
		Connections: [][2]string{},
	}
	if !reflect.DeepEqual(sc.Topology, want) {
		t.Errorf("got %+v\nwant %+v", sc.Topology, want)
	}
	if got := sc.Topology.Clusters[0].NodeNames(); !reflect.DeepEqual(got, []string{"node-1", "node-2"}) {
		t.Errorf("NodeNames() = %v", got)
	}
}

// TestDefaultCIDRsNeverOverlap checks the claim of DefaultPodCIDR over every
// pair of cluster IDs.
func TestDefaultCIDRsNeverOverlap(t *testing.T) {
	var all []netip.Prefix
	for id := 1; id <= MaxClusterID; id++ {
		all = append(all, DefaultPodCIDR(id), DefaultServiceCIDR(id))
	}
	for i, a := range all {
		for _, b := range all[i+1:] {
			if a.Overlaps(b) {
				t.Fatalf("%s overlaps %s", a, b)
			}
		}
	}
}

func TestConnections(t *testing.T) {
	sc, err := Load("shared-services.yaml")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		a, b string
		want bool
	}{
		{"tenant-a", "shared", true},
		{"shared", "tenant-b", true},
		{"tenant-a", "tenant-b", false},
		{"tenant-b", "tenant-a", false},
	} {
		if got := sc.Topology.Connected(tc.a, tc.b); got != tc.want {
			t.Errorf("Connected(%s, %s) = %t, want %t", tc.a, tc.b, got, tc.want)
		}
	}
	full, err := Load("failover.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if !full.Topology.Connected("cluster2", "cluster1") {
		t.Error("a topology without connections is not a full mesh")
	}
}

// TestStepsHaveOneAction checks Step.Action against the fields for every
// step of the full fixture.
func TestStepsHaveOneAction(t *testing.T) {
	sc, err := Load("testdata/valid-full.yaml")
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for _, st := range sc.Steps {
		v := reflect.ValueOf(st)
		set := 0
		for i := range v.NumField() {
			f := v.Field(i)
			if f.Kind() == reflect.Pointer && !f.IsNil() {
				set++
			}
		}
		if set != 1 {
			t.Errorf("step %d has %d actions set", st.Index, set)
		}
		a := st.Action()
		if a == nil {
			t.Fatalf("step %d: Action() is nil", st.Index)
		}
		seen[a.ActionName()] = true
	}
	for _, k := range actionKeys {
		if !seen[k] {
			t.Errorf("valid-full.yaml has no %s step", k)
		}
	}
}

func TestDocumentLineNumbers(t *testing.T) {
	data := "# comment\n---\napiVersion: meshbed.io/v1alpha1\nkind: Scenario\nmetadata: {name: x\n"
	_, err := Parse("f.yaml", []byte(data))
	if err == nil || !strings.Contains(err.Error(), "line 5") {
		t.Fatalf("want an error naming line 5 of the file, got %v", err)
	}
}

// dump renders a scenario's typed form, defaults included, for golden files.
func dump(sc *Scenario) string {
	var b strings.Builder
	fmt.Fprintf(&b, "scenario %s (seed %d): %s\n", sc.Name, sc.Seed, sc.Description)
	t := sc.Topology
	fmt.Fprintf(&b, "topology routing=%s kvstoremesh=%t remoteLoss=%s\n", t.Routing, t.KVStoreMesh, t.RemoteLoss)
	for _, c := range t.Clusters {
		fmt.Fprintf(&b, "  cluster %s id=%d nodes=%d pod=%s service=%s\n", c.Name, c.ID, c.Nodes, c.PodCIDR, c.ServiceCIDR)
	}
	fmt.Fprintf(&b, "  connections %v\n", t.Connections)
	for _, m := range sc.Manifests {
		dumpManifest(&b, "manifest", m)
	}
	for _, st := range sc.Steps {
		a := st.Action()
		fmt.Fprintf(&b, "step %d %q %s", st.Index, st.Name, a.ActionName())
		switch a := a.(type) {
		case *Apply:
			b.WriteString("\n")
			dumpManifest(&b, "  apply", a.Manifest)
		case *Annotate:
			fmt.Fprintf(&b, " cluster=%s service=%s/%s", a.Cluster, a.Namespace, a.Service)
			for _, k := range sortedKeys(a.Annotations) {
				if v := a.Annotations[k]; v != nil {
					fmt.Fprintf(&b, " %s=%q", k, *v)
				} else {
					fmt.Fprintf(&b, " %s=null", k)
				}
			}
			b.WriteString("\n")
		default:
			fmt.Fprintf(&b, " %+v\n", reflect.ValueOf(a).Elem().Interface())
		}
		e := st.Expect
		if e.IsZero() {
			continue
		}
		b.WriteString("  expect")
		if e.Within > 0 {
			fmt.Fprintf(&b, " within=%s", e.Within)
		}
		if e.Responses != nil {
			var parts []string
			for c, m := range e.Responses {
				parts = append(parts, c+":"+m.String())
			}
			sort.Strings(parts)
			fmt.Fprintf(&b, " responses={%s}", strings.Join(parts, " "))
		}
		if e.Errors != nil {
			fmt.Fprintf(&b, " errors=%s", e.Errors)
		}
		if e.MaxOutage != nil {
			fmt.Fprintf(&b, " maxOutage=%s", *e.MaxOutage)
		}
		if e.Encrypted != nil {
			fmt.Fprintf(&b, " encrypted=%t", *e.Encrypted)
		}
		for _, be := range e.Backends {
			fmt.Fprintf(&b, " backends=%+v", be)
		}
		for _, k := range e.KVStore {
			fmt.Fprintf(&b, " kvstore={%s key=%q exists=%t json=%v prefix=%q count=%v}",
				k.Cluster, k.Key, k.Exists, k.JSON, k.Prefix, k.Count)
		}
		for _, x := range e.Events {
			fmt.Fprintf(&b, " events={%s count %s}", x, x.Count)
		}
		b.WriteString("\n")
	}
	return b.String()
}

func dumpManifest(b *strings.Builder, label string, m Manifest) {
	fmt.Fprintf(b, "%s clusters=%v file=%q\n", label, m.Clusters, m.File)
	for _, o := range m.Objects {
		fmt.Fprintf(b, "    %s %s ns=%q name=%s %T %s\n", o.APIVersion, o.Kind, o.Namespace, o.Name, o.Object, o.JSON)
	}
}

func TestManifestNotRegularFile(t *testing.T) {
	data := `apiVersion: meshbed.io/v1alpha1
kind: Scenario
metadata: {name: x}
spec:
  topology: {clusters: [{name: c1, id: 1}]}
  manifests: [{clusters: [c1], file: /dev/zero}]
`
	_, err := Parse("x.yaml", []byte(data))
	want := `x.yaml: spec.manifests[0].file: cannot read "/dev/zero": not a regular file`
	if err == nil || err.Error() != want {
		t.Fatalf("got %v, want %s", err, want)
	}
}

// BenchmarkLoad measures decoding and validating a typical scenario file with
// its manifests.
func BenchmarkLoad(b *testing.B) {
	data, err := os.ReadFile("failover.yaml")
	if err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		if _, err := Parse("failover.yaml", data); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(len(data)), "bytes/file")
}
