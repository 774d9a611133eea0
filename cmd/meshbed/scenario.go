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

	"github.com/spf13/cobra"

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
	var reportDir, logFile string
	var keep, verbose bool
	run := &cobra.Command{
		Use:   "run FILE",
		Short: "Run a scenario in the simulator (exit 0 pass, 1 an expectation failed, 2 invalid file or environment)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			sc, err := scenarios.Load(args[0])
			if err != nil {
				return &exitError{2, err}
			}
			if os.Geteuid() != 0 {
				return &exitError{2, errors.New("the simulator needs root: it creates network namespaces and loads BPF programs (run with sudo)")}
			}
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			logger, closeLog, err := componentLogger(logFile, verbose, cmd.ErrOrStderr())
			if err != nil {
				return &exitError{2, err}
			}
			defer closeLog()
			opts := engine.Options{Progress: cmd.OutOrStdout()}
			if keep {
				opts.Keep = func() {
					fmt.Fprintln(cmd.OutOrStdout(), "mesh kept running; press Ctrl-C to tear it down")
					<-ctx.Done()
				}
			}
			rep, err := engine.Run(ctx, sc, simtarget.New(simtarget.Options{Logger: logger}), opts)
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
	run.Flags().BoolVar(&keep, "keep", false, "keep the mesh running after the run until Ctrl-C")
	run.Flags().StringVar(&logFile, "log-file", "", "write the mesh components' logs to this file")
	run.Flags().BoolVarP(&verbose, "verbose", "v", false, "print the mesh components' logs on stderr")
	cmd.AddCommand(run)
	return cmd
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
