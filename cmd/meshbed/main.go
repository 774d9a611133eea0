// Command meshbed is the meshbed CLI: run scenario files against the
// simulator, and keep a simulated mesh up for hand-driven chaos.
package main

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/meshbed/meshbed/internal/cmdutil"
	"github.com/meshbed/meshbed/internal/run"
	"github.com/meshbed/meshbed/mesh/clustermesh"
	"github.com/meshbed/meshbed/mesh/flow"
	"github.com/meshbed/meshbed/sim/control"
)

// options are the flags of every command.
type options struct {
	planSeed                               int64
	scenarioRun, chaosRun                  run.Options
	chaos                                  run.ChaosOptions
	simName                                string
	up                                     control.UpOptions
	step                                   control.StepOptions
	kvPrefix                               bool
	simFlows                               flow.Options
	metricsCluster, metricsNode, metricsOf string
	install                                clustermesh.InstallOptions
	kubeconfig                             string
	enable                                 clustermesh.EnableOptions
	connect                                clustermesh.ConnectOptions
	status                                 clustermesh.StatusOptions
	statusProbe                            bool
	statusCADir, statusCluster, statusMesh string
	statusOutput                           string
	observe                                clustermesh.ObserveOptions
}

func newRoot(clients clustermesh.ClientFactory) *cobra.Command {
	var o options
	root := &cobra.Command{
		Use:           "meshbed",
		Short:         "A multi-cluster networking mesh for Kubernetes, built simulation-first",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(scenarioCmd(&o), chaosCmd(&o), simCmd(&o), installCmd(&o, clients), clustermeshCmd(&o, clients), observeCmd(&o, clients))
	return root
}

func main() {
	if err := newRoot(clustermesh.KubeClients).Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "meshbed:", err)
		os.Exit(cmdutil.ExitCode(err, 2))
	}
}
