package main

import (
	"errors"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

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
	printClustermesh(cmd.OutOrStdout(), v)
	if problems := v.Problems(); len(problems) > 0 {
		return &exitError{1, errors.New(strings.Join(problems, "; "))}
	}
	return nil
}

func printClustermesh(w io.Writer, v *control.ClusterMeshView) {
	yn := func(b bool) string {
		if b {
			return "yes"
		}
		return "no"
	}
	table := func(rows []control.RemoteView, agents bool) {
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
