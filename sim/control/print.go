package control

import (
	"bytes"
	"fmt"
	"io"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// Print writes the view as `meshbed clustermesh status --cluster` shows it,
// in the manner of `cilium clustermesh status`.
func (v *ClusterMeshView) Print(w io.Writer) {
	yn := func(b bool) string {
		if b {
			return "yes"
		}
		return "no"
	}
	table := func(rows []RemoteView, agents bool) {
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		head := "REMOTE\tCONNECTED\tSYNCED\tNODES\tSERVICES\tIDENTITIES\tENDPOINTS\tFOR\tFAILURES\tLAST ERROR"
		if agents {
			head = "NODE\tVIA\t" + head
		}
		fmt.Fprintln(tw, head)
		for _, r := range rows {
			state := "—"
			if r.Since != "" {
				state = fmt.Sprintf("%s (%s)", (time.Duration(r.ForSeconds * float64(time.Second))).Round(100*time.Millisecond), map[bool]string{true: "synced", false: "not synced"}[r.Synced])
			}
			line := fmt.Sprintf("%s\t%s\t%s\t%d\t%d\t%d\t%d\t%s\t%d\t%s", r.Remote, yn(r.Connected), yn(r.Synced),
				r.Nodes, r.Services, r.Identities, r.Endpoints, state, r.Failures, r.LastError)
			if agents {
				via := "direct"
				if r.Cached {
					via = "kvstoremesh"
				}
				line = r.Node + "\t" + via + "\t" + line
			}
			fmt.Fprintln(tw, line)
		}
		tw.Flush()
	}
	fmt.Fprintf(w, "Cluster %s\n", v.Cluster)
	fmt.Fprintf(w, "\nKVStoreMesh: %s\n", v.KVStoreMesh)
	if len(v.Cache) > 0 {
		table(v.Cache, false)
	}
	fmt.Fprintf(w, "\nAgents: %d running", v.Running)
	if len(v.Stopped) > 0 {
		fmt.Fprintf(w, ", stopped on %s", strings.Join(v.Stopped, ", "))
	}
	fmt.Fprintln(w)
	if len(v.Agents) > 0 {
		table(v.Agents, true)
	}
}

// FilterMetrics re-encodes the families of a text exposition whose name
// begins with one of prefixes (all when none) and the series whose labels
// have the wanted values (an empty value matches any).
func FilterMetrics(w io.Writer, body []byte, prefixes []string, want map[string]string) error {
	parser := expfmt.NewTextParser(model.LegacyValidation)
	fams, err := parser.TextToMetricFamilies(bytes.NewReader(body))
	if err != nil {
		return fmt.Errorf("metrics of the mesh: %w", err)
	}
	names := make([]string, 0, len(fams))
	for n := range fams {
		names = append(names, n)
	}
	sort.Strings(names)
	enc := expfmt.NewEncoder(w, expfmt.NewFormat(expfmt.TypeTextPlain))
	matched := 0
	for _, n := range names {
		if len(prefixes) > 0 && !hasAnyPrefix(n, prefixes) {
			continue
		}
		f := fams[n]
		kept := f.Metric[:0]
		for _, m := range f.Metric {
			ok := true
			for _, lp := range m.Label {
				if v := want[lp.GetName()]; v != "" && v != lp.GetValue() {
					ok = false
				}
			}
			if ok {
				kept = append(kept, m)
			}
		}
		if len(kept) == 0 {
			continue
		}
		f.Metric = kept
		matched++
		if err := enc.Encode(f); err != nil {
			return err
		}
	}
	if matched == 0 {
		return &NoMatchError{Filter: describeFilter(prefixes, want)}
	}
	return nil
}

func hasAnyPrefix(s string, prefixes []string) bool {
	for _, p := range prefixes {
		if strings.HasPrefix(s, p) {
			return true
		}
	}
	return false
}

func describeFilter(prefixes []string, want map[string]string) string {
	var parts []string
	if len(prefixes) > 0 {
		parts = append(parts, "names beginning with "+strings.Join(prefixes, " or "))
	}
	for _, k := range []string{"cluster", "node", "component"} {
		if want[k] != "" {
			parts = append(parts, k+"="+want[k])
		}
	}
	if len(parts) == 0 {
		return "(the mesh exposes none)"
	}
	return strings.Join(parts, ", ")
}

// NoMatchError is FilterMetrics' error when nothing matched.
type NoMatchError struct{ Filter string }

func (e *NoMatchError) Error() string { return "no metric matches " + e.Filter }
