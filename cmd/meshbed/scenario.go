package main

import (
	"fmt"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/meshbed/meshbed/internal/cmdutil"
	"github.com/meshbed/meshbed/internal/run"
	"github.com/meshbed/meshbed/mesh/clustermesh"
	"github.com/meshbed/meshbed/scenarios"
	"github.com/meshbed/meshbed/scenarios/engine"
)

func scenarioCmd(o *options) *cobra.Command {
	cmd := &cobra.Command{Use: "scenario", Short: "Validate and run scenario files (meshbed.io/v1alpha1)"}
	cmd.AddCommand(&cobra.Command{
		Use:   "validate FILE",
		Short: "Parse and check a scenario file without running it",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			sc, err := scenarios.Load(args[0])
			if err != nil {
				return cmdutil.Invalid(err)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s: valid (%d clusters, %d steps)\n", args[0], len(sc.Topology.Clusters), len(sc.Steps))
			return nil
		},
	})
	plan := &cobra.Command{
		Use:   "plan FILE [--seed N]",
		Short: "Print the fault schedule every chaos step of FILE draws from the seed, without running anything",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			sc, err := scenarios.Load(args[0])
			if err != nil {
				return cmdutil.Invalid(err)
			}
			if cmd.Flags().Changed("seed") {
				sc.Seed = o.planSeed
			}
			engine.PrintPlan(cmd.OutOrStdout(), sc)
			return nil
		},
	}
	plan.Flags().Int64Var(&o.planSeed, "seed", 0, "seed (overrides spec.seed)")
	cmd.AddCommand(plan)
	runCmd := &cobra.Command{
		Use:   "run FILE",
		Short: "Run a scenario in the simulator or on Kind clusters (exit 0 pass, 1 an expectation failed, 2 invalid file or environment)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			o.scenarioRun.SeedSet = cmd.Flags().Changed("seed")
			return run.Scenario(cmd.Context(), cmd.OutOrStdout(), cmd.ErrOrStderr(), args[0], o.scenarioRun)
		},
	}
	runFlags(runCmd, &o.scenarioRun)
	cmd.AddCommand(runCmd)
	cmd.AddCommand(&cobra.Command{
		Use:   "compare REPORT.json REPORT.json...",
		Short: "Print the reports of one scenario side by side (e.g. its runs on sim and on kind): bring-up, each step, outages, final check",
		Args:  cobra.MinimumNArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			return cmdutil.Invalid(scenarios.CompareFiles(cmd.OutOrStdout(), args...))
		},
	})
	return cmd
}

// runFlags are the flags of scenario run and chaos run.
func runFlags(cmd *cobra.Command, rf *run.Options) {
	f := cmd.Flags()
	f.StringVar(&rf.ReportDir, "report", "", "write report.json, report.html (and for chaos steps history.jsonl, and repro.yaml on failure) into this directory")
	f.BoolVar(&rf.Keep, "keep", false, "sim: keep the mesh running after the run until Ctrl-C; kind: do not delete the clusters created")
	f.StringVar(&rf.Target, "target", "sim", "where to run: sim (the simulator) or kind (Kind clusters)")
	f.StringArrayVar(&rf.Contexts, "context", nil, "kind: CLUSTER=CONTEXT, an existing cluster with meshbed installed for each cluster of the topology (repeat; none: create Kind clusters meshbed-<cluster>)")
	f.StringVar(&rf.Kind.Kubeconfig, "kubeconfig", "", "kind: kubeconfig file (default $KUBECONFIG or ~/.kube/config)")
	f.StringVar(&rf.Kind.CADir, "ca-dir", clustermesh.DefaultCADir(), "kind: directory of the mesh CA")
	f.StringVar(&rf.Kind.NodeImage, "node-image", os.Getenv("NODE_IMAGE"), "kind: node image of created clusters (default $NODE_IMAGE)")
	f.StringVar(&rf.Kind.MeshbedImage, "meshbed-image", os.Getenv("MESHBED_IMAGE"), "kind: meshbed's image (default $MESHBED_IMAGE)")
	f.StringVar(&rf.Kind.DemoImage, "demo-image", os.Getenv("DEMO_IMAGE"), "kind: the echo and client image that replaces workload images (default $DEMO_IMAGE)")
	f.StringVar(&rf.LogFile, "log-file", "", "write the mesh components' logs to this file")
	f.BoolVarP(&rf.Verbose, "verbose", "v", false, "print the mesh components' logs on stderr")
	f.Int64Var(&rf.Seed, "seed", 0, "seed of every random choice (overrides spec.seed)")
	f.DurationVar(&rf.ShrinkBudget, "shrink-budget", engine.DefaultShrinkBudget, "time allowed for shrinking a failed chaos step, each replay on a fresh mesh (0 disables shrinking)")
}

func chaosCmd(o *options) *cobra.Command {
	cmd := &cobra.Command{Use: "chaos", Short: "Chaos experiments: seeded random faults under steady traffic, checked as they happen"}
	runCmd := &cobra.Command{
		Use:   "run -f FILE --duration D [--seed N] [--faults partition,stop,restart]",
		Short: "Run FILE's topology and manifests under a chaos step built from the flags (exit 0 pass, 1 a promise broke, 2 invalid input or environment)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			o.chaosRun.SeedSet = cmd.Flags().Changed("seed")
			return run.Chaos(cmd.Context(), cmd.OutOrStdout(), cmd.ErrOrStderr(), o.chaos, o.chaosRun)
		},
	}
	runFlags(runCmd, &o.chaosRun)
	f, x := runCmd.Flags(), &o.chaos.Experiment
	f.StringVarP(&o.chaos.File, "file", "f", "", "scenario file whose topology and manifests the experiment runs on")
	f.DurationVar(&x.Duration, "duration", 0, "how long faults are injected (required)")
	f.StringSliceVar(&x.Faults, "faults", nil, "fault kinds drawn: partition, stop, restart (default all)")
	f.StringSliceVar(&x.Planes, "planes", nil, "planes a partition cuts: both, control, data (default all)")
	f.StringSliceVar(&x.Components, "components", nil, "components stopped and restarted: apiserver, kvstoremesh, agent (default all)")
	f.BoolVar(&x.OneWay, "one-way", false, "one-way cuts may be drawn")
	f.BoolVar(&x.Nodes, "nodes", false, "a partition group may be a single node")
	f.StringVar(&o.chaos.Interval, "interval", "", "quiet time between faults, MIN..MAX (default 1s..8s)")
	f.StringVar(&o.chaos.Hold, "hold", "", "how long a fault lasts, MIN..MAX (default 1s..10s)")
	f.IntVar(&x.Concurrent, "concurrent", 0, "most faults at once (default 1)")
	f.DurationVar(&x.MaxOutage, "max-outage", 3*time.Second, "longest outage allowed per stream during a fault (0: not checked)")
	f.DurationVar(&x.Converge, "converge", 15*time.Second, "bound on convergence after every heal")
	f.StringVar(&x.Rate, "rate", "20/s", "request rate of every client's stream")
	cmd.AddCommand(runCmd)
	return cmd
}
