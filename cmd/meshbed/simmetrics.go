package main

import (
	"bytes"
	"fmt"
	"io"
	"sort"
	"strings"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/spf13/cobra"

	"github.com/meshbed/meshbed/sim/control"
)

// metricsCmd is `meshbed sim metrics`: the running mesh's metrics, all of
// them or those whose name begins with one of the given prefixes, and
// (with --cluster, --node, --component) of chosen components only.
func metricsCmd(name *string) *cobra.Command {
	var cluster, node, component string
	cmd := &cobra.Command{
		Use:   "metrics [NAME-PREFIX ...]",
		Short: "Print the Prometheus metrics of every component of the running mesh (cluster, node and component labels added)",
		Args:  cobra.ArbitraryArgs,
		RunE: func(cmd *cobra.Command, prefixes []string) error {
			switch component {
			case "", "agent", "apiserver", "kvstoremesh", "datapath":
			default:
				return &exitError{2, fmt.Errorf("--component %q: want agent, apiserver, kvstoremesh or datapath", component)}
			}
			if node != "" && cluster == "" {
				return &exitError{2, fmt.Errorf("--node %s needs --cluster", node)}
			}
			body, err := control.NewClient(*name).Get(cmd.Context(), "/metrics", nil)
			if err != nil {
				return cliError(err)
			}
			return filterMetrics(cmd.OutOrStdout(), body, prefixes, map[string]string{"cluster": cluster, "node": node, "component": component})
		},
	}
	cmd.Flags().StringVar(&cluster, "cluster", "", "only this cluster's components")
	cmd.Flags().StringVar(&node, "node", "", "only this node's agent (with --cluster)")
	cmd.Flags().StringVar(&component, "component", "", "only agent, apiserver, kvstoremesh or datapath")
	return cmd
}

// filterMetrics re-encodes the families of a text exposition whose name
// begins with one of prefixes (all when none) and the series whose labels
// have the wanted values (an empty value matches any).
func filterMetrics(w io.Writer, body []byte, prefixes []string, want map[string]string) error {
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
		return &exitError{1, fmt.Errorf("no metric matches %s", describeFilter(prefixes, want))}
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
