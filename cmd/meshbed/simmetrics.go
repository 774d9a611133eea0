package main

import (
	"errors"
	"fmt"

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
			err = control.FilterMetrics(cmd.OutOrStdout(), body, prefixes, map[string]string{"cluster": cluster, "node": node, "component": component})
			var none *control.NoMatchError
			if errors.As(err, &none) {
				return &exitError{1, err}
			}
			return err
		},
	}
	cmd.Flags().StringVar(&cluster, "cluster", "", "only this cluster's components")
	cmd.Flags().StringVar(&node, "node", "", "only this node's agent (with --cluster)")
	cmd.Flags().StringVar(&component, "component", "", "only agent, apiserver, kvstoremesh or datapath")
	return cmd
}
