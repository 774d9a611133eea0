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
	"strings"
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
	var reportDir, logFile, targetName string
	var keep, verbose bool
	var kindOpts kindtarget.Options
	var contexts []string
	run := &cobra.Command{
		Use:   "run FILE",
		Short: "Run a scenario in the simulator or on Kind clusters (exit 0 pass, 1 an expectation failed, 2 invalid file or environment)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			sc, err := scenarios.Load(args[0])
			if err != nil {
				return &exitError{2, err}
			}
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			logger, closeLog, err := componentLogger(logFile, verbose, cmd.ErrOrStderr())
			if err != nil {
				return &exitError{2, err}
			}
			defer closeLog()
			opts := engine.Options{Progress: cmd.OutOrStdout()}
			var target engine.Target
			switch targetName {
			case "sim":
				if len(contexts) > 0 {
					return &exitError{2, errors.New("--context: only with --target kind")}
				}
				if os.Geteuid() != 0 {
					return &exitError{2, errors.New("the simulator needs root: it creates network namespaces and loads BPF programs (run with sudo)")}
				}
				if keep {
					opts.Keep = func() {
						fmt.Fprintln(cmd.OutOrStdout(), "mesh kept running; press Ctrl-C to tear it down")
						<-ctx.Done()
					}
				}
				target = simtarget.New(simtarget.Options{Logger: logger})
			case "kind":
				if kindOpts.Contexts, err = parseContexts(contexts); err != nil {
					return &exitError{2, err}
				}
				kindOpts.Keep, kindOpts.Logger = keep, logger
				kt := kindtarget.New(kindOpts)
				if err := kt.Check(sc); err != nil {
					return &exitError{2, fmt.Errorf("%s: target kind: %w", args[0], err)}
				}
				// Pods start and agents sync in seconds, not milliseconds.
				opts.SettleTimeout = 5 * time.Minute
				target = kt
			default:
				return &exitError{2, fmt.Errorf("--target %q: want sim or kind", targetName)}
			}
			rep, err := engine.Run(ctx, sc, target, opts)
			if err != nil {
				return &exitError{2, err}
			}
			if reportDir != "" {
				if err := writeReport(reportDir, rep); err != nil {
					return &exitError{2, err}
				}
				fmt.Fprintf(cmd.OutOrStdout(), "report: %s\n", filepath.Join(reportDir, "report.html"))
			}
			if !rep.Passed {
				return &exitError{1, fmt.Errorf("scenario %s failed", sc.Name)}
			}
			return nil
		},
	}
	run.Flags().StringVar(&reportDir, "report", "", "write report.json and report.html into this directory")
	run.Flags().BoolVar(&keep, "keep", false, "sim: keep the mesh running after the run until Ctrl-C; kind: do not delete the clusters created")
	run.Flags().StringVar(&targetName, "target", "sim", "where to run: sim (the simulator) or kind (Kind clusters)")
	run.Flags().StringArrayVar(&contexts, "context", nil, "kind: CLUSTER=CONTEXT, an existing cluster with meshbed installed for each cluster of the topology (repeat; none: create Kind clusters meshbed-<cluster>)")
	run.Flags().StringVar(&kindOpts.Kubeconfig, "kubeconfig", "", "kind: kubeconfig file (default $KUBECONFIG or ~/.kube/config)")
	run.Flags().StringVar(&kindOpts.CADir, "ca-dir", defaultCADir(), "kind: directory of the mesh CA")
	run.Flags().StringVar(&kindOpts.NodeImage, "node-image", os.Getenv("NODE_IMAGE"), "kind: node image of created clusters (default $NODE_IMAGE)")
	run.Flags().StringVar(&kindOpts.MeshbedImage, "meshbed-image", os.Getenv("MESHBED_IMAGE"), "kind: meshbed's image (default $MESHBED_IMAGE)")
	run.Flags().StringVar(&kindOpts.DemoImage, "demo-image", os.Getenv("DEMO_IMAGE"), "kind: the echo and client image that replaces workload images (default $DEMO_IMAGE)")
	run.Flags().StringVar(&logFile, "log-file", "", "write the mesh components' logs to this file")
	run.Flags().BoolVarP(&verbose, "verbose", "v", false, "print the mesh components' logs on stderr")
	cmd.AddCommand(run)
	return cmd
}

// parseContexts reads --context CLUSTER=CONTEXT flags.
func parseContexts(flags []string) (map[string]string, error) {
	if len(flags) == 0 {
		return nil, nil
	}
	m := map[string]string{}
	var errs []error
	for _, f := range flags {
		name, kctx, ok := strings.Cut(f, "=")
		switch {
		case !ok || name == "" || kctx == "":
			errs = append(errs, fmt.Errorf("--context %q: want CLUSTER=CONTEXT", f))
		case m[name] != "":
			errs = append(errs, fmt.Errorf("--context %q: cluster %s given twice", f, name))
		default:
			m[name] = kctx
		}
	}
	return m, errors.Join(errs...)
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

func writeReport(dir string, rep *scenarios.Report) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	for name, write := range map[string]func(io.Writer) error{
		"report.json": rep.WriteJSON, "report.html": rep.WriteHTML,
	} {
		f, err := os.Create(filepath.Join(dir, name))
		if err != nil {
			return err
		}
		werr := write(f)
		if err := errors.Join(werr, f.Close()); err != nil {
			return fmt.Errorf("write %s: %w", name, err)
		}
	}
	return nil
}
