package identity

import (
	_ "embed"
	"regexp"
	"strconv"
	"testing"

	"sigs.k8s.io/yaml"
)

//go:embed crd.yaml
var crdYAML []byte

// TestCRDMatchesCode keeps crd.yaml and the constants of the code in step,
// and checks that every identity name the allocator can produce passes the
// manifest's name pattern.
func TestCRDMatchesCode(t *testing.T) {
	var crd struct {
		Metadata struct{ Name string }
		Spec     struct {
			Group string
			Scope string
			Names struct{ Kind, ListKind, Plural string }
			// Versions carry the schema; only what the code relies on.
			Versions []struct {
				Name    string
				Served  bool
				Storage bool
				Schema  struct {
					OpenAPIV3Schema struct {
						Properties struct {
							Metadata struct {
								Properties struct {
									Name struct{ Pattern string }
								}
							}
							Spec struct {
								Properties map[string]any
							}
						}
					} `json:"openAPIV3Schema"`
				}
			}
		}
	}
	if err := yaml.Unmarshal(crdYAML, &crd); err != nil {
		t.Fatal(err)
	}
	checks := []struct{ name, got, want string }{
		{"metadata.name", crd.Metadata.Name, Resource + "." + Group},
		{"group", crd.Spec.Group, Group},
		{"scope", crd.Spec.Scope, "Cluster"},
		{"kind", crd.Spec.Names.Kind, Kind},
		{"listKind", crd.Spec.Names.ListKind, ListKind},
		{"plural", crd.Spec.Names.Plural, Resource},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("%s = %q, want %q", c.name, c.got, c.want)
		}
	}
	if len(crd.Spec.Versions) != 1 || crd.Spec.Versions[0].Name != Version || !crd.Spec.Versions[0].Served || !crd.Spec.Versions[0].Storage {
		t.Fatalf("versions %+v, want one served storage version %s", crd.Spec.Versions, Version)
	}
	v := crd.Spec.Versions[0].Schema.OpenAPIV3Schema.Properties
	if _, ok := v.Spec.Properties[securityLabelsField[1]]; !ok {
		t.Errorf("schema has no spec.%s", securityLabelsField[1])
	}
	pattern := regexp.MustCompile(v.Metadata.Properties.Name.Pattern)
	for _, id := range []uint32{1, 65537, 131071, 255<<16 | 1, 1<<24 - 1} {
		name := strconv.FormatUint(uint64(id), 10)
		if !pattern.MatchString(name) {
			t.Errorf("name %q does not match the CRD pattern %q", name, pattern)
		}
		if got, ok := parseName(name); !ok || got != id {
			t.Errorf("parseName(%q) = %d, %v", name, got, ok)
		}
	}
	for _, bad := range []string{"0", "012", "-1", "abc"} {
		if pattern.MatchString(bad) {
			t.Errorf("CRD pattern accepts %q", bad)
		}
	}
}
