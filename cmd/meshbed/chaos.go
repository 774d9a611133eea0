package main

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/meshbed/meshbed/scenarios"
)

func chaosCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "chaos", Short: "Chaos experiments: seeded random faults under steady traffic, checked as they happen"}
	var rf runFlags
	var file string
	var o scenarios.ExperimentOptions
	var interval, hold string
	run := &cobra.Command{
		Use:   "run -f FILE --duration D [--seed N] [--faults partition,stop,restart]",
		Short: "Run FILE's topology and manifests under a chaos step built from the flags (exit 0 pass, 1 a promise broke, 2 invalid input or environment)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if file == "" {
				return &exitError{2, errors.New("-f FILE is required")}
			}
			sc, err := scenarios.Load(file)
			if err != nil {
				return &exitError{2, err}
			}
			if o.Interval, err = parseRange("--interval", interval); err != nil {
				return &exitError{2, err}
			}
			if o.Hold, err = parseRange("--hold", hold); err != nil {
				return &exitError{2, err}
			}
			exp, err := scenarios.Experiment(sc, o)
			if err != nil {
				return &exitError{2, err}
			}
			if cmd.Flags().Changed("seed") {
				exp.Seed = rf.seed
			}
			return runScenario(cmd, exp, rf)
		},
	}
	rf.add(run)
	f := run.Flags()
	f.StringVarP(&file, "file", "f", "", "scenario file whose topology and manifests the experiment runs on")
	f.DurationVar(&o.Duration, "duration", 0, "how long faults are injected (required)")
	f.StringSliceVar(&o.Faults, "faults", nil, "fault kinds drawn: partition, stop, restart (default all)")
	f.StringSliceVar(&o.Planes, "planes", nil, "planes a partition cuts: both, control, data (default all)")
	f.StringSliceVar(&o.Components, "components", nil, "components stopped and restarted: apiserver, kvstoremesh, agent (default all)")
	f.BoolVar(&o.OneWay, "one-way", false, "one-way cuts may be drawn")
	f.BoolVar(&o.Nodes, "nodes", false, "a partition group may be a single node")
	f.StringVar(&interval, "interval", "", "quiet time between faults, MIN..MAX (default 1s..8s)")
	f.StringVar(&hold, "hold", "", "how long a fault lasts, MIN..MAX (default 1s..10s)")
	f.IntVar(&o.Concurrent, "concurrent", 0, "most faults at once (default 1)")
	f.DurationVar(&o.MaxOutage, "max-outage", 3*time.Second, "longest outage allowed per stream during a fault (0: not checked)")
	f.DurationVar(&o.Converge, "converge", 15*time.Second, "bound on convergence after every heal")
	f.StringVar(&o.Rate, "rate", "20/s", "request rate of every client's stream")
	cmd.AddCommand(run)
	return cmd
}

// parseRange reads "MIN..MAX"; empty means the default.
func parseRange(flag, s string) (scenarios.Range, error) {
	if s == "" {
		return scenarios.Range{}, nil
	}
	lo, hi, ok := strings.Cut(s, "..")
	if !ok {
		return scenarios.Range{}, fmt.Errorf("%s %q: want MIN..MAX, like 1s..8s", flag, s)
	}
	var r scenarios.Range
	var err error
	if r.Min, err = scenarios.ParseDuration(lo); err != nil {
		return r, fmt.Errorf("%s: %w", flag, err)
	}
	if r.Max, err = scenarios.ParseDuration(hi); err != nil {
		return r, fmt.Errorf("%s: %w", flag, err)
	}
	return r, nil
}
