package scenarios

import (
	"fmt"
	"html/template"
	"io"
	"math"
	"strconv"
	"strings"
)

// palette holds the colours of answering clusters, in the order of their
// sorted names; failures are always red. Beyond ten clusters, colours
// repeat (the legend and tooltips still tell them apart).
var palette = []string{"#4e79a7", "#59a14f", "#f28e2b", "#b07aa1", "#76b7b2",
	"#edc948", "#9c755f", "#86bcb6", "#bab0ac", "#8cd17d"}

// Timeline geometry, in SVG user units.
const (
	svgWidth   = 960
	plotLeft   = 44
	plotRight  = 20
	plotTop    = 24
	plotHeight = 120
	svgHeight  = plotTop + plotHeight + 24
	plotWidth  = svgWidth - plotLeft - plotRight
)

type htmlView struct {
	Name              string
	Passed            bool
	Seed              int64
	Target            string
	Substitutions     []string
	BringUp, Duration string
	Final             FinalReport
	FinalSeconds      string
	Legend            []legendItem
	Timelines         []timelineView
	Steps             []stepRow
	Palette           []string
	W, H              int
	Warnings          []string
}

type legendItem struct {
	Name  string
	Class string
}

type timelineView struct {
	Name, From, URL, Summary string
	Grid                     []line
	Ticks                    []label
	Bars                     []bar
	Markers                  []marker
}

type line struct{ X1, Y1, X2, Y2 string }

type label struct {
	X, Y, Text string
}

type bar struct {
	Title string
	Rects []rect
}

type rect struct{ X, Y, W, H, Class string }

type marker struct {
	Line         line
	Label        label
	Class, Title string
	ShowLabel    bool
	LabelClass   string
}

type stepRow struct {
	Index                                      int
	Name, Action, Start, Took, Held, Responses string
	Errors, MaxOutage, Message                 string
	Passed                                     bool
}

// secs formats seconds for people.
func secs(s float64) string { return strconv.FormatFloat(s, 'f', 2, 64) + "s" }

// num formats an SVG coordinate.
func num(f float64) string { return strconv.FormatFloat(f, 'f', 1, 64) }

// WriteHTML writes r as report.html: a single self-contained page (inline
// CSS and SVG, no scripts or external resources) with a timeline of every
// traffic stream and a table of the steps.
func (r *Report) WriteHTML(w io.Writer) error {
	v := htmlView{
		Name: r.Scenario, Target: r.Target, Passed: r.Passed, Seed: r.Seed, Substitutions: r.Substitutions,
		BringUp: secs(r.BringUpSeconds), Duration: secs(r.DurationSeconds),
		Final: r.Final, FinalSeconds: secs(r.Final.Seconds),
		Palette: palette, W: svgWidth, H: svgHeight, Warnings: r.Warnings,
	}
	classOf := map[string]string{}
	for i, c := range r.clusters() {
		cl := fmt.Sprintf("c%d", i%len(palette))
		classOf[c] = cl
		v.Legend = append(v.Legend, legendItem{Name: c, Class: cl})
	}
	span := r.timeSpan()
	for _, s := range r.Streams {
		v.Timelines = append(v.Timelines, timeline(s, r.Steps, span, classOf))
	}
	for i, s := range r.Steps {
		v.Steps = append(v.Steps, row(i+1, s))
	}
	if err := reportTemplate.Execute(w, v); err != nil {
		return fmt.Errorf("write report.html: %w", err)
	}
	return nil
}

// timeSpan is the length of the run clock the timelines show.
func (r *Report) timeSpan() float64 {
	span := r.DurationSeconds
	for _, s := range r.Steps {
		span = max(span, s.StartSeconds+max(s.Seconds, s.HeldAfterSeconds))
	}
	for _, s := range r.Streams {
		span = max(span, s.EndSeconds())
	}
	return max(span, 1)
}

// tickStep picks a round interval giving at most a dozen x-axis ticks.
func tickStep(span float64) float64 {
	for _, step := range []float64{0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 1800, 3600} {
		if span/step <= 12 {
			return step
		}
	}
	return math.Ceil(span / 12)
}

// stepKind classes an action for its timeline marker.
func stepKind(action string) string {
	switch action {
	case "partition", "stop", "restart":
		return "fault"
	case "heal", "start":
		return "recovery"
	case "apply", "delete", "scale", "annotate":
		return "change"
	}
	return "plain"
}

func timeline(s Stream, steps []StepReport, span float64, classOf map[string]string) timelineView {
	x := func(t float64) float64 { return plotLeft + t/span*plotWidth }
	bottom := float64(plotTop + plotHeight)
	tv := timelineView{Name: s.Name, From: s.From, URL: s.URL}

	// Summary: shares over the whole stream.
	responses, errs := s.Totals()
	total := errs
	for _, n := range responses {
		total += n
	}
	parts := []string{fmt.Sprintf("%d requests", total)}
	for _, c := range sortedKeys(responses) {
		parts = append(parts, fmt.Sprintf("%s %s", c, percent(responses[c], total)))
	}
	parts = append(parts, "failed "+percent(errs, total))
	tv.Summary = strings.Join(parts, " · ")

	for _, f := range []float64{0, 0.5, 1} {
		y := num(bottom - f*plotHeight)
		tv.Grid = append(tv.Grid, line{num(plotLeft), y, num(plotLeft + plotWidth), y})
		tv.Ticks = append(tv.Ticks, label{num(plotLeft - 6), y, fmt.Sprintf("%d%%", int(f*100))})
	}
	step := tickStep(span)
	for t := 0.0; t <= span+1e-9; t += step {
		tv.Ticks = append(tv.Ticks, label{num(x(t)), num(bottom + 16), strconv.FormatFloat(t, 'f', -1, 64) + "s"})
	}

	for i, b := range s.Buckets {
		n := b.Total()
		if n == 0 {
			continue
		}
		t0 := s.StartSeconds + float64(i)*s.BucketSeconds
		x0, x1 := x(t0), x(t0+s.BucketSeconds)
		width := x1 - x0
		if width > 3 {
			width -= 0.5 // a hairline between bars
		}
		var tip []string
		var rects []rect
		acc := 0.0
		for _, c := range sortedKeys(b.Responses) {
			h := float64(b.Responses[c]) / float64(n) * plotHeight
			rects = append(rects, rect{num(x0), num(bottom - acc - h), num(width), num(h), classOf[c]})
			acc += h
			tip = append(tip, fmt.Sprintf("%s %d", c, b.Responses[c]))
		}
		if b.Errors > 0 {
			h := float64(b.Errors) / float64(n) * plotHeight
			rects = append(rects, rect{num(x0), num(bottom - acc - h), num(width), num(h), "fail"})
			tip = append(tip, fmt.Sprintf("failed %d", b.Errors))
		}
		tv.Bars = append(tv.Bars, bar{
			Title: fmt.Sprintf("%s–%s: %s", secs(t0), secs(t0+s.BucketSeconds), strings.Join(tip, ", ")),
			Rects: rects,
		})
	}

	lastLabel := math.Inf(-1)
	for i, st := range steps {
		mx := x(st.StartSeconds)
		m := marker{
			Line:  line{num(mx), num(plotTop - 4), num(mx), num(bottom)},
			Label: label{num(mx), num(plotTop - 8), strconv.Itoa(i + 1)},
			Class: stepKind(st.Action),
			Title: fmt.Sprintf("step %d: %s (%s) at %s", i+1, st.Name, st.Action, secs(st.StartSeconds)),
		}
		// Steps close together would print their numbers on top of each
		// other; the line and its tooltip remain.
		if mx-lastLabel >= 14 {
			m.ShowLabel = true
			lastLabel = mx
		}
		if !st.Passed {
			m.LabelClass = "failed"
		}
		tv.Markers = append(tv.Markers, m)
	}
	return tv
}

func percent(n, total int) string {
	if total == 0 {
		return "0%"
	}
	return strconv.FormatFloat(float64(n)*100/float64(total), 'f', 1, 64) + "%"
}

func row(i int, s StepReport) stepRow {
	r := stepRow{Index: i, Name: s.Name, Action: s.Action, Passed: s.Passed,
		Start: secs(s.StartSeconds), Took: secs(s.Seconds), Held: secs(s.HeldAfterSeconds),
		Responses: "—", Errors: "—", MaxOutage: "—", Message: s.Message}
	if s.Action == "curl" || s.Action == "stopTraffic" || len(s.Responses) > 0 || s.Errors > 0 {
		var parts []string
		total := s.Errors
		for _, n := range s.Responses {
			total += n
		}
		for _, c := range sortedKeys(s.Responses) {
			parts = append(parts, fmt.Sprintf("%s %d", c, s.Responses[c]))
		}
		r.Responses = strings.Join(parts, ", ")
		if r.Responses == "" {
			r.Responses = "none"
		}
		r.Errors = fmt.Sprintf("%d (%s)", s.Errors, percent(s.Errors, total))
	}
	if s.Action == "stopTraffic" || s.MaxOutageSeconds > 0 {
		r.MaxOutage = secs(s.MaxOutageSeconds)
	}
	return r
}

var reportTemplate = template.Must(template.New("report").Parse(`<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{.Name}}: {{if .Passed}}PASS{{else}}FAIL{{end}} — meshbed scenario</title>
<style>
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#222;margin:24px auto;max-width:1000px;padding:0 16px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #ddd;padding-bottom:4px}
.badge{display:inline-block;padding:1px 10px;border-radius:4px;color:#fff;font-size:15px;vertical-align:middle}
.badge.ok{background:#2e7d32}.badge.bad{background:#c62828}
.facts{color:#555;margin:4px 0}
.legend{margin:4px 0 10px}.key{margin-right:14px;white-space:nowrap}
.swatch{display:inline-block;width:12px;height:12px;border-radius:2px;vertical-align:-1px;margin-right:4px}
figure{margin:0 0 18px}figcaption{margin-bottom:2px}figcaption .sum{color:#555}
svg{display:block;width:100%;height:auto}
svg text{font:11px system-ui,sans-serif;fill:#555}
.grid{stroke:#e4e4e4}.axis text.y{text-anchor:end;dominant-baseline:middle}.axis text.x{text-anchor:middle}
{{range $i, $c := .Palette}}.c{{$i}}{fill:{{$c}};background:{{$c}}}{{end}}
.fail{fill:#d62728}.swatch.fail{background:#d62728}
.m line{stroke-width:1}.m text{text-anchor:middle;font-weight:600}
.m.plain line{stroke:#999;stroke-dasharray:1 3}
.m.change line{stroke:#555;stroke-dasharray:4 3}
.m.fault line{stroke:#c62828;stroke-width:2;stroke-dasharray:6 3}.m.fault text{fill:#c62828}
.m.recovery line{stroke:#2e7d32;stroke-width:2;stroke-dasharray:6 3}.m.recovery text{fill:#2e7d32}
.m text.failed{fill:#fff;paint-order:stroke;stroke:#c62828;stroke-width:3px}
table{border-collapse:collapse;width:100%;font-size:13px}
th,td{text-align:left;padding:4px 6px;border-bottom:1px solid #eee;vertical-align:top}
th{background:#f6f6f6}td.n{text-align:right;white-space:nowrap}
tr.failed td{background:#fdecea}
span.ok{color:#2e7d32;font-weight:600}span.bad{color:#c62828;font-weight:600}.badge.ok,.badge.bad{color:#fff}
.msg{white-space:pre-wrap}
.kinds span{margin-right:14px}
</style>
</head>
<body>
<h1>{{.Name}} <span class="badge {{if .Passed}}ok{{else}}bad{{end}}">{{if .Passed}}PASS{{else}}FAIL{{end}}</span></h1>
<p class="facts">{{if .Target}}target {{.Target}} · {{end}}seed {{.Seed}} · bring-up {{.BringUp}} · run {{.Duration}} · final check
<span class="{{if .Final.Passed}}ok{{else}}bad{{end}}">{{if .Final.Passed}}passed{{else}}failed{{end}}</span> in {{.FinalSeconds}}{{if .Final.Message}}: {{.Final.Message}}{{end}}</p>
{{if .Warnings}}
<h2>Warnings</h2>
<ul>{{range .Warnings}}<li>{{.}}</li>{{end}}</ul>
{{end}}{{if .Substitutions}}
<h2>Images replaced</h2>
<ul>{{range .Substitutions}}<li>{{.}}</li>{{end}}</ul>
{{end}}{{if .Timelines}}
<h2>Traffic</h2>
<p class="legend">answered by {{range .Legend}}<span class="key"><span class="swatch {{.Class}}"></span>{{.Name}}</span>{{end}}<span class="key"><span class="swatch fail"></span>failed</span></p>
<p class="legend kinds">step markers: <span style="color:#c62828">fault</span><span style="color:#2e7d32">recovery</span><span style="color:#555">change</span><span style="color:#999">other</span> — numbers are step numbers; hover for details</p>
{{range .Timelines}}
<figure>
<figcaption><b>{{.Name}}</b> {{.From}} → {{.URL}} <span class="sum">— {{.Summary}}</span></figcaption>
<svg viewBox="0 0 {{$.W}} {{$.H}}" role="img" aria-label="timeline of {{.Name}}">
<g class="axis">{{range .Grid}}<line class="grid" x1="{{.X1}}" y1="{{.Y1}}" x2="{{.X2}}" y2="{{.Y2}}"/>{{end}}
{{range $i, $t := .Ticks}}<text class="{{if lt $i 3}}y{{else}}x{{end}}" x="{{$t.X}}" y="{{$t.Y}}">{{$t.Text}}</text>{{end}}</g>
<g class="bars">{{range .Bars}}<g><title>{{.Title}}</title>{{range .Rects}}<rect class="{{.Class}}" x="{{.X}}" y="{{.Y}}" width="{{.W}}" height="{{.H}}"/>{{end}}</g>
{{end}}</g>
<g class="markers">{{range .Markers}}<g class="m {{.Class}}"><title>{{.Title}}</title><line x1="{{.Line.X1}}" y1="{{.Line.Y1}}" x2="{{.Line.X2}}" y2="{{.Line.Y2}}"/>{{if .ShowLabel}}<text class="{{.LabelClass}}" x="{{.Label.X}}" y="{{.Label.Y}}">{{.Label.Text}}</text>{{end}}</g>
{{end}}</g>
</svg>
</figure>
{{end}}{{end}}
<h2>Steps</h2>
<table>
<thead><tr><th>#</th><th>step</th><th>action</th><th>result</th><th>start</th><th>took</th><th>held after</th><th>responses</th><th>errors</th><th>max outage</th><th>message</th></tr></thead>
<tbody>
{{range .Steps}}<tr{{if not .Passed}} class="failed"{{end}}><td class="n">{{.Index}}</td><td>{{.Name}}</td><td>{{.Action}}</td><td>{{if .Passed}}<span class="ok">pass</span>{{else}}<span class="bad">FAIL</span>{{end}}</td><td class="n">{{.Start}}</td><td class="n">{{.Took}}</td><td class="n">{{.Held}}</td><td>{{.Responses}}</td><td class="n">{{.Errors}}</td><td class="n">{{.MaxOutage}}</td><td class="msg">{{.Message}}</td></tr>
{{end}}</tbody>
</table>
</body>
</html>
`))
