package main

import (
	"github.com/spf13/cobra"

	"github.com/meshbed/meshbed/daemon"
)

// stateCmd is `meshbed-agent state`: it prints the running agent's report
// of its node as JSON (what the Kind target execs in the agent's pod).
func stateCmd() *cobra.Command {
	var socket string
	cmd := &cobra.Command{
		Use:   "state",
		Short: "Print the running agent's report of its node (desired state, BPF maps) as JSON",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return daemon.CopyState(cmd.Context(), socket, cmd.OutOrStdout())
		},
	}
	cmd.Flags().StringVar(&socket, "socket", daemon.DefaultStateSocket, "the agent's state socket")
	return cmd
}
