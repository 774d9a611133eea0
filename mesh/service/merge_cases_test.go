package service_test

import (
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/meshbed/meshbed/mesh/service"
	"github.com/meshbed/meshbed/mesh/service/servicetest"
)

// TestMerge runs the table of merge cases, which the scenario engine's
// reference merge runs too (scenarios/engine TestReferenceMergeAgrees).
func TestMerge(t *testing.T) {
	for _, tt := range servicetest.MergeCases() {
		t.Run(tt.Name, func(t *testing.T) {
			res := service.Merge(&service.Input{Options: service.Options{LocalClusterID: servicetest.LocalID, Mode: tt.Mode}, Local: tt.Local, Remote: tt.Remote})
			if got := servicetest.Render(res.Services); !slices.Equal(got, tt.Want) {
				t.Errorf("services:\n got  %q\n want %q", got, tt.Want)
			}
			if got := servicetest.RenderDecisions(res.Decisions); !slices.Equal(got, tt.Decisions) {
				t.Errorf("decisions:\n got  %q\n want %q", got, tt.Decisions)
			}
			switch {
			case tt.Warning == nil && len(res.Warnings) > 0:
				t.Errorf("unexpected warnings %v", res.Warnings)
			case tt.Warning != nil && (len(res.Warnings) != 1 || !errors.Is(res.Warnings[0], tt.Warning)):
				t.Errorf("warnings %v, want one wrapping %v", res.Warnings, tt.Warning)
			}
			for _, w := range res.Warnings {
				if !strings.Contains(w.Error(), "default/rebel-base") {
					t.Errorf("warning %q does not name the service", w)
				}
			}
		})
	}
}
