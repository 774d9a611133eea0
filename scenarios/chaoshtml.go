package scenarios

import (
	"fmt"
	"strings"
)

// band is a fault drawn across a timeline, from injection to heal.
type band struct {
	X, Y, W, H, Class, Title string
}

// faultRow is one fault in report.html's table of chaos faults.
type faultRow struct {
	Step, Index                                           int
	Kind, Targets, Start, Hold, Outage, Converge, Message string
	Passed                                                bool
}

// faultBands draws every chaos fault of r on the timeline geometry.
func faultBands(r *Report, span float64) []band {
	x := func(t float64) float64 { return plotLeft + t/span*plotWidth }
	var out []band
	for _, st := range r.Steps {
		if st.Chaos == nil {
			continue
		}
		for _, f := range st.Chaos.Faults {
			x0, x1 := x(f.StartSeconds), x(f.EndSeconds)
			class := f.Kind
			if !f.Passed {
				class += " failed"
			}
			out = append(out, band{X: num(x0), Y: num(plotTop), W: num(max(x1-x0, 1)), H: num(plotHeight), Class: class,
				Title: fmt.Sprintf("fault %d: %s %s, %s–%s%s", f.Index, f.Kind, f.Targets, secs(f.StartSeconds), secs(f.EndSeconds), faultSummary(f))})
		}
	}
	return out
}

func worstOutage(f FaultReport) (float64, string) {
	worst, stream := 0.0, ""
	for _, o := range f.Outages {
		if o.Excused == "" && o.Seconds >= worst {
			worst, stream = o.Seconds, o.Stream
		}
	}
	return worst, stream
}

func faultSummary(f FaultReport) string {
	worst, stream := worstOutage(f)
	parts := []string{}
	if stream != "" {
		parts = append(parts, fmt.Sprintf("worst outage %s (%s)", secs(worst), stream))
	}
	if f.ConvergeSeconds >= 0 {
		parts = append(parts, "converged after "+secs(f.ConvergeSeconds))
	} else {
		parts = append(parts, "did not converge")
	}
	if f.Message != "" {
		parts = append(parts, f.Message)
	}
	return ": " + strings.Join(parts, ", ")
}

// faultRows lists every chaos fault, and says how the shrinking went.
func faultRows(r *Report) ([]faultRow, string) {
	var rows []faultRow
	var shrink []string
	for i, st := range r.Steps {
		if st.Chaos == nil {
			continue
		}
		for _, f := range st.Chaos.Faults {
			worst, stream := worstOutage(f)
			row := faultRow{Step: i + 1, Index: f.Index, Kind: f.Kind, Targets: f.Targets,
				Start: secs(f.StartSeconds), Hold: secs(f.HoldSeconds), Outage: "—", Converge: "did not converge",
				Passed: f.Passed, Message: f.Message}
			if stream != "" {
				row.Outage = fmt.Sprintf("%s (%s)", secs(worst), stream)
			}
			if f.ConvergeSeconds >= 0 {
				row.Converge = secs(f.ConvergeSeconds)
			}
			rows = append(rows, row)
		}
		if s := st.Chaos.Shrink; s != nil {
			line := fmt.Sprintf("step %d shrunk in %d replays (%s): %d faults down to %d, repro.yaml has %d steps — %s",
				i+1, s.Replays, secs(s.Seconds), s.FaultsBefore, s.FaultsAfter, s.Steps, s.Message)
			if s.BudgetSpent {
				line += " (shrink budget spent)"
			}
			shrink = append(shrink, line)
		}
	}
	return rows, strings.Join(shrink, "; ")
}
