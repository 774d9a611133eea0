package scenarios

import (
	"path/filepath"
	"testing"
)

// TestEncodeRoundTrip: every valid fixture and every shipped scenario file,
// encoded and parsed again, is the same scenario (manifests come back
// inline).
func TestEncodeRoundTrip(t *testing.T) {
	files, _ := filepath.Glob("testdata/valid-*.yaml")
	shipped, _ := filepath.Glob("*.yaml")
	files = append(files, shipped...)
	for _, file := range files {
		t.Run(file, func(t *testing.T) {
			sc, err := Load(file)
			if err != nil {
				t.Fatal(err)
			}
			data, err := Encode(sc)
			if err != nil {
				t.Fatal(err)
			}
			again, err := Parse("encoded.yaml", data)
			if err != nil {
				t.Fatalf("encoded file does not parse: %v\n%s", err, data)
			}
			for _, s := range []*Scenario{sc, again} {
				for i := range s.Manifests {
					s.Manifests[i].File = ""
				}
				for i := range s.Steps {
					if a := s.Steps[i].Apply; a != nil {
						a.File = ""
					}
				}
			}
			if got, want := dump(again), dump(sc); got != want {
				t.Errorf("round trip changed the scenario:\n--- got\n%s\n--- want\n%s\n--- file\n%s", got, want, data)
			}
		})
	}
}
