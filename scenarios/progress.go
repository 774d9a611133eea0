package scenarios

import (
	"fmt"
	"io"
	"strings"
	"time"
)

// Progress prints a run's progress for a terminal, one line per event:
//
//	scenario failover: 2 clusters, 10 steps, seed 1
//	bring-up                                              3.20s
//	[ 1/10] cluster1 clients reach both clusters (curl)
//	        pass  0.90s  held after 1.40s  cluster1 52, cluster2 48, errors 0
//	...
//	final check                                     pass  1.10s
//	PASS failover in 11.80s
//
// Write errors are ignored: progress is advisory, the report is the record.
type Progress struct {
	w     io.Writer
	steps int
}

// NewProgress returns a Progress writing to w.
func NewProgress(w io.Writer) *Progress { return &Progress{w: w} }

const progressWidth = 56

func (p *Progress) printf(format string, args ...any) {
	_, _ = fmt.Fprintf(p.w, format, args...)
}

// Begin announces the scenario.
func (p *Progress) Begin(sc *Scenario) {
	p.steps = len(sc.Steps)
	p.printf("scenario %s: %d clusters, %d steps, seed %d\n", sc.Name, len(sc.Topology.Clusters), p.steps, sc.Seed)
}

// BringUp reports the end of bring-up; err is nil when it succeeded.
func (p *Progress) BringUp(took time.Duration, err error) {
	if err != nil {
		p.printf("%-*s FAIL  %s\n        %v\n", progressWidth, "bring-up", secs(took.Seconds()), err)
		return
	}
	p.printf("%-*s %s\n", progressWidth+6, "bring-up", secs(took.Seconds()))
}

// StepStarted announces a step before it runs, so a long within is visibly
// in progress.
func (p *Progress) StepStarted(st *Step) {
	width := len(fmt.Sprint(p.steps))
	action := ""
	if a := st.Action(); a != nil {
		action = a.ActionName()
	}
	p.printf("[%*d/%d] %s (%s)\n", width, st.Index, p.steps, st.Name, action)
}

// StepDone reports a step's verdict and its measured figures.
func (p *Progress) StepDone(r StepReport) {
	verdict := "pass"
	if !r.Passed {
		verdict = "FAIL"
	}
	parts := []string{verdict, secs(r.Seconds)}
	if r.HeldAfterSeconds > 0 {
		parts = append(parts, "held after "+secs(r.HeldAfterSeconds))
	}
	if figures := stepFigures(r); figures != "" {
		parts = append(parts, figures)
	}
	p.printf("        %s\n", strings.Join(parts, "  "))
	if r.Message != "" {
		for line := range strings.SplitSeq(r.Message, "\n") {
			p.printf("        %s\n", line)
		}
	}
}

// stepFigures formats responses, errors and outage for the actions that
// measure them.
func stepFigures(r StepReport) string {
	var parts []string
	if r.Action == "curl" || r.Action == "stopTraffic" || len(r.Responses) > 0 {
		for _, c := range sortedKeys(r.Responses) {
			parts = append(parts, fmt.Sprintf("%s %d", c, r.Responses[c]))
		}
		parts = append(parts, fmt.Sprintf("errors %d", r.Errors))
	}
	if r.Action == "stopTraffic" || r.MaxOutageSeconds > 0 {
		parts = append(parts, "max outage "+secs(r.MaxOutageSeconds))
	}
	return strings.Join(parts, ", ")
}

// Final reports the final convergence check.
func (p *Progress) Final(r FinalReport) {
	verdict := "pass"
	if !r.Passed {
		verdict = "FAIL"
	}
	p.printf("%-*s %s  %s\n", progressWidth, "final check", verdict, secs(r.Seconds))
	if r.Message != "" {
		p.printf("        %s\n", r.Message)
	}
}

// End prints the verdict of the run.
func (p *Progress) End(r *Report) {
	verdict := "PASS"
	if !r.Passed {
		verdict = "FAIL"
	}
	failed := 0
	for _, s := range r.Steps {
		if !s.Passed {
			failed++
		}
	}
	for _, w := range r.Warnings {
		p.printf("warning: %s\n", w)
	}
	p.printf("%s %s in %s", verdict, r.Scenario, secs(r.DurationSeconds))
	if failed > 0 {
		p.printf(" (%d of %d steps failed)", failed, len(r.Steps))
	}
	p.printf("\n")
}
