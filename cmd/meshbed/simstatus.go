package main

import (
	"errors"
	"fmt"
	"strings"

	"github.com/spf13/cobra"

	"github.com/meshbed/meshbed/sim/control"
)

// clustermeshStatusSim prints the clustermesh status of one cluster of a
// running simulated mesh.
func clustermeshStatusSim(cmd *cobra.Command, mesh, cluster, output string) error {
	if output != "" && output != "json" && output != "summary" {
		return &exitError{2, fmt.Errorf("-o %q: want summary or json", output)}
	}
	v, body, err := control.NewClient(mesh).ClusterMesh(cmd.Context(), cluster)
	if err != nil {
		return cliError(err)
	}
	if output == "json" {
		_, err := cmd.OutOrStdout().Write(body)
		return err
	}
	v.Print(cmd.OutOrStdout())
	if problems := v.Problems(); len(problems) > 0 {
		return &exitError{1, errors.New(strings.Join(problems, "; "))}
	}
	return nil
}
