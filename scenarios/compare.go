package scenarios

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
)

// ReadReport reads a report.json.
func ReadReport(path string) (*Report, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var r Report
	if err := json.Unmarshal(data, &r); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if r.Scenario == "" {
		return nil, fmt.Errorf("%s: not a scenario report (no scenario name)", path)
	}
	return &r, nil
}

// Compare writes the reports side by side, one column each (headed by its
// target, or its position when two ran on the same target): bring-up,
// every step's time until its expectations held, requests and errors and
// longest outage where the step measured traffic, the final check, the
// whole run. The reports must be of one scenario with the same steps,
// such as the runs of one file on the simulator and on Kind.
func Compare(w io.Writer, reports ...*Report) error {
	if len(reports) < 2 {
		return fmt.Errorf("compare: want two reports or more, got %d", len(reports))
	}
	first := reports[0]
	for _, r := range reports[1:] {
		if r.Scenario != first.Scenario {
			return fmt.Errorf("compare: reports of scenarios %s and %s", first.Scenario, r.Scenario)
		}
		if len(r.Steps) != len(first.Steps) {
			return fmt.Errorf("compare: %s has %d steps in one report and %d in another", first.Scenario, len(first.Steps), len(r.Steps))
		}
		for i := range r.Steps {
			if r.Steps[i].Name != first.Steps[i].Name {
				return fmt.Errorf("compare: step %d is %q in one report and %q in another", i+1, first.Steps[i].Name, r.Steps[i].Name)
			}
		}
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', tabwriter.AlignRight)
	row := func(label string, cell func(*Report) string) {
		cells := []string{label}
		for _, r := range reports {
			cells = append(cells, cell(r))
		}
		fmt.Fprintln(tw, strings.Join(cells, "\t")+"\t")
	}
	seen := map[string]int{}
	row(first.Scenario, func(r *Report) string {
		seen[r.Target]++
		if seen[r.Target] > 1 {
			return fmt.Sprintf("%s (%d)", r.Target, seen[r.Target])
		}
		return r.Target
	})
	row("bring-up", func(r *Report) string { return secs(r.BringUpSeconds) })
	for i, s := range first.Steps {
		label := fmt.Sprintf("[%d] %s (%s)", i+1, truncate(s.Name, 44), s.Action)
		row(label, func(r *Report) string { return stepCell(r.Steps[i]) })
	}
	row("final check", func(r *Report) string { return verdict(r.Final.Passed) + " " + secs(r.Final.Seconds) })
	row("whole run", func(r *Report) string { return verdict(r.Passed) + " " + secs(r.DurationSeconds) })
	return tw.Flush()
}

// stepCell is one step of one report: pass or FAIL, the time until it
// held, and for steps that measured requests their count, errors and
// longest outage.
func stepCell(s StepReport) string {
	cell := verdict(s.Passed) + " " + secs(s.HeldAfterSeconds)
	n := s.Errors
	for _, c := range s.Responses {
		n += c
	}
	if n > 0 {
		cell += fmt.Sprintf(", %d req, %d err", n, s.Errors)
		if s.MaxOutageSeconds > 0 {
			cell += ", outage " + secs(s.MaxOutageSeconds)
		}
	}
	return cell
}

func verdict(ok bool) string {
	if ok {
		return "pass"
	}
	return "FAIL"
}

func truncate(s string, n int) string {
	if r := []rune(s); len(r) > n {
		return string(r[:n-1]) + "…"
	}
	return s
}

// CompareFiles is Compare of the reports in files (report.json).
func CompareFiles(w io.Writer, files ...string) error {
	var reps []*Report
	for _, f := range files {
		r, err := ReadReport(f)
		if err != nil {
			return err
		}
		reps = append(reps, r)
	}
	return Compare(w, reps...)
}
