// Command meshbed is the meshbed CLI: run scenario files against the
// simulator, and keep a simulated mesh up for hand-driven chaos.
package main

import (
	"errors"
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/meshbed/meshbed/mesh/clustermesh"
)

// exitError carries a process exit code through cobra.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

func main() {
	root := &cobra.Command{
		Use:           "meshbed",
		Short:         "A multi-cluster networking mesh for Kubernetes, built simulation-first",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(scenarioCmd(), chaosCmd(), simCmd(), installCmd(clustermesh.KubeClients), clustermeshCmd(clustermesh.KubeClients), observeCmd(clustermesh.KubeClients))
	if err := root.Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "meshbed:", err)
		var ee *exitError
		if errors.As(err, &ee) {
			os.Exit(ee.code)
		}
		os.Exit(2)
	}
}
