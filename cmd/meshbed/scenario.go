package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	kindtarget "github.com/meshbed/meshbed/kind/target"
	"github.com/meshbed/meshbed/scenarios"
	"github.com/meshbed/meshbed/scenarios/engine"
	simtarget "github.com/meshbed/meshbed/sim/target"
)

func scenarioCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "scenario", Short: "Validate and run scenario files (meshbed.io/v1alpha1)"}
	cmd.AddCommand(&cobra.Command{
		Use:   "validate FILE",
		Short: "Parse and check a scenario file without running it",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			sc, err := scenarios.Load(args[0])
			if err != nil {
				return &exitError{2, err}
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s: valid (%d clusters, %d steps)\n", args[0], len(sc.Topology.Clusters), len(sc.Steps))
			return nil
		},
	})
	var planSeed int64
	plan := &cobra.Command{
		Use:   "plan FILE [--seed N]",
		Short: "Print the fault schedule every chaos step of FILE draws from the seed, without running anything",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			sc, err := scenarios.Load(args[0])
			if err != nil {
				return &exitError{2, err}
			}
			if cmd.Flags().Changed("seed") {
				sc.Seed = planSeed
			}
			for _, st := range sc.Steps {
				if st.Chaos == nil {
					continue
				}
				faults := engine.NewSchedule(st.Chaos, &sc.Topology, sc.Seed, st.Index)
				fmt.Fprintf(cmd.OutOrStdout(), "step %d (%s), seed %d: %d faults\n", st.Index, st.Name, sc.Seed, len(faults))
				for i, f := range faults {
					fmt.Fprintf(cmd.OutOrStdout(), "  %3d  %s\n", i+1, f)
				}
			}
			return nil
		},
	}
	plan.Flags().Int64Var(&planSeed, "seed", 0, "seed (overrides spec.seed)")
	cmd.AddCommand(plan)
	var rf runFlags
	run := &cobra.Command{
		Use:   "run FILE",
		Short: "Run a scenario in the simulator or on Kind clusters (exit 0 pass, 1 an expectation failed, 2 invalid file or environment)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			sc, err := scenarios.Load(args[0])
			if err != nil {
				return &exitError{2, err}
			}
			if cmd.Flags().Changed("seed") {
				sc.Seed = rf.seed
			}
			return runScenario(cmd, sc, rf)
		},
	}
	rf.add(run)
	cmd.AddCommand(run)
	cmd.AddCommand(&cobra.Command{
		Use:   "compare REPORT.json REPORT.json...",
		Short: "Print the reports of one scenario side by side (e.g. its runs on sim and on kind): bring-up, each step, outages, final check",
		Args:  cobra.MinimumNArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			var reps []*scenarios.Report
			for _, a := range args {
				r, err := scenarios.ReadReport(a)
				if err != nil {
					return &exitError{2, err}
				}
				reps = append(reps, r)
			}
			if err := scenarios.Compare(cmd.OutOrStdout(), reps...); err != nil {
				return &exitError{2, err}
			}
			return nil
		},
	})
	return cmd
}

// runFlags are the flags of scenario run and chaos run.
type runFlags struct {
	reportDir, logFile, targetName string
	keep, verbose                  bool
	kindOpts                       kindtarget.Options
	contexts                       []string
	seed                           int64
	shrinkBudget                   time.Duration
}

func (rf *runFlags) add(run *cobra.Command) {
	f := run.Flags()
	f.StringVar(&rf.reportDir, "report", "", "write report.json, report.html (and for chaos steps history.jsonl, and repro.yaml on failure) into this directory")
	f.BoolVar(&rf.keep, "keep", false, "sim: keep the mesh running after the run until Ctrl-C; kind: do not delete the clusters created")
	f.StringVar(&rf.targetName, "target", "sim", "where to run: sim (the simulator) or kind (Kind clusters)")
	f.StringArrayVar(&rf.contexts, "context", nil, "kind: CLUSTER=CONTEXT, an existing cluster with meshbed installed for each cluster of the topology (repeat; none: create Kind clusters meshbed-<cluster>)")
	f.StringVar(&rf.kindOpts.Kubeconfig, "kubeconfig", "", "kind: kubeconfig file (default $KUBECONFIG or ~/.kube/config)")
	f.StringVar(&rf.kindOpts.CADir, "ca-dir", defaultCADir(), "kind: directory of the mesh CA")
	f.StringVar(&rf.kindOpts.NodeImage, "node-image", os.Getenv("NODE_IMAGE"), "kind: node image of created clusters (default $NODE_IMAGE)")
	f.StringVar(&rf.kindOpts.MeshbedImage, "meshbed-image", os.Getenv("MESHBED_IMAGE"), "kind: meshbed's image (default $MESHBED_IMAGE)")
	f.StringVar(&rf.kindOpts.DemoImage, "demo-image", os.Getenv("DEMO_IMAGE"), "kind: the echo and client image that replaces workload images (default $DEMO_IMAGE)")
	f.StringVar(&rf.logFile, "log-file", "", "write the mesh components' logs to this file")
	f.BoolVarP(&rf.verbose, "verbose", "v", false, "print the mesh components' logs on stderr")
	f.Int64Var(&rf.seed, "seed", 0, "seed of every random choice (overrides spec.seed)")
	f.DurationVar(&rf.shrinkBudget, "shrink-budget", engine.DefaultShrinkBudget, "time allowed for shrinking a failed chaos step, each replay on a fresh mesh (0 disables shrinking)")
}

// runScenario runs sc on the chosen target and writes its report.
func runScenario(cmd *cobra.Command, sc *scenarios.Scenario, rf runFlags) error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	logger, closeLog, err := componentLogger(rf.logFile, rf.verbose, cmd.ErrOrStderr())
	if err != nil {
		return &exitError{2, err}
	}
	defer closeLog()
	opts := engine.Options{Progress: cmd.OutOrStdout(), ShrinkBudget: rf.shrinkBudget}
	var newTarget func() engine.Target
	switch rf.targetName {
	case "sim":
		if len(rf.contexts) > 0 {
			return &exitError{2, errors.New("--context: only with --target kind")}
		}
		if os.Geteuid() != 0 {
			return &exitError{2, errors.New("the simulator needs root: it creates network namespaces and loads BPF programs (run with sudo)")}
		}
		if rf.keep {
			opts.Keep = func() {
				fmt.Fprintln(cmd.OutOrStdout(), "mesh kept running; press Ctrl-C to tear it down")
				<-ctx.Done()
			}
		}
		newTarget = func() engine.Target { return simtarget.New(simtarget.Options{Logger: logger}) }
	case "kind":
		kindOpts := rf.kindOpts
		if kindOpts.Contexts, err = kindtarget.ParseContexts(rf.contexts); err != nil {
			return &exitError{2, err}
		}
		kindOpts.Keep, kindOpts.Logger = rf.keep, logger
		if err := kindtarget.New(kindOpts).Check(sc); err != nil {
			return &exitError{2, fmt.Errorf("%s: target kind: %w", sc.File, err)}
		}
		opts.SettleTimeout = kindtarget.SettleTimeout
		newTarget = func() engine.Target { return kindtarget.New(kindOpts) }
	default:
		return &exitError{2, fmt.Errorf("--target %q: want sim or kind", rf.targetName)}
	}
	if rf.shrinkBudget > 0 {
		opts.NewTarget = newTarget
	}
	rep, err := engine.Run(ctx, sc, newTarget(), opts)
	if err != nil {
		return &exitError{2, err}
	}
	dir := rf.reportDir
	if dir == "" && rep.Repro != nil {
		// A shrunk failure is worth keeping even without --report.
		if dir, err = os.MkdirTemp("", "meshbed-"+sc.Name+"-"); err != nil {
			return &exitError{2, err}
		}
	}
	if dir != "" {
		if err := rep.WriteDir(dir); err != nil {
			return &exitError{2, err}
		}
		fmt.Fprintf(cmd.OutOrStdout(), "report: %s\n", filepath.Join(dir, "report.html"))
		if rep.Repro != nil {
			fmt.Fprintf(cmd.OutOrStdout(), "repro: %s (meshbed scenario run %[1]s)\n", filepath.Join(dir, "repro.yaml"))
		}
	}
	if !rep.Passed {
		return &exitError{1, fmt.Errorf("scenario %s failed", sc.Name)}
	}
	return nil
}

func componentLogger(file string, verbose bool, stderr io.Writer) (*slog.Logger, func(), error) {
	switch {
	case file != "":
		f, err := os.Create(file)
		if err != nil {
			return nil, nil, err
		}
		return slog.New(slog.NewTextHandler(f, &slog.HandlerOptions{Level: slog.LevelDebug})), func() { f.Close() }, nil
	case verbose:
		return slog.New(slog.NewTextHandler(stderr, nil)), func() {}, nil
	}
	return slog.New(slog.DiscardHandler), func() {}, nil
}
