// Package run runs scenario files and chaos experiments on the target a
// command line names: the simulator or Kind clusters. It is what
// `meshbed scenario run` and `meshbed chaos run` do, and the one place
// that knows both targets (the engine drives a Target and knows neither).
//
// Errors carry the command's exit code (cmdutil.ExitError): 1 when an
// expectation failed or a promise broke, 2 for an invalid file or
// environment.
package run

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/meshbed/meshbed/internal/cmdutil"
	kindtarget "github.com/meshbed/meshbed/kind/target"
	"github.com/meshbed/meshbed/scenarios"
	"github.com/meshbed/meshbed/scenarios/engine"
	simtarget "github.com/meshbed/meshbed/sim/target"
)

// Options are the flags of scenario run and chaos run.
type Options struct {
	ReportDir, LogFile, Target string
	Keep, Verbose              bool
	Kind                       kindtarget.Options
	Contexts                   []string
	// Seed overrides the scenario's when SeedSet (--seed was given).
	Seed         int64
	SeedSet      bool
	ShrinkBudget time.Duration
}

// Scenario runs the scenario file on the target of o and writes its
// report.
func Scenario(ctx context.Context, stdout, stderr io.Writer, file string, o Options) error {
	sc, err := scenarios.Load(file)
	if err != nil {
		return cmdutil.Invalid(err)
	}
	if o.SeedSet {
		sc.Seed = o.Seed
	}
	return scenario(ctx, stdout, stderr, sc, o)
}

// ChaosOptions are the flags of chaos run that build its experiment.
type ChaosOptions struct {
	// File is the scenario file whose topology and manifests the
	// experiment runs on.
	File string
	// Interval and Hold are Experiment's, as MIN..MAX.
	Interval, Hold string
	Experiment     scenarios.ExperimentOptions
}

// Chaos runs the chaos experiment of c on the target of o.
func Chaos(ctx context.Context, stdout, stderr io.Writer, c ChaosOptions, o Options) error {
	if c.File == "" {
		return cmdutil.Invalid(errors.New("-f FILE is required"))
	}
	sc, err := scenarios.Load(c.File)
	if err != nil {
		return cmdutil.Invalid(err)
	}
	x := c.Experiment
	if x.Interval, err = scenarios.ParseRange("--interval", c.Interval); err != nil {
		return cmdutil.Invalid(err)
	}
	if x.Hold, err = scenarios.ParseRange("--hold", c.Hold); err != nil {
		return cmdutil.Invalid(err)
	}
	exp, err := scenarios.Experiment(sc, x)
	if err != nil {
		return cmdutil.Invalid(err)
	}
	if o.SeedSet {
		exp.Seed = o.Seed
	}
	return scenario(ctx, stdout, stderr, exp, o)
}

// scenario runs sc on the chosen target and writes its report.
func scenario(ctx context.Context, stdout, stderr io.Writer, sc *scenarios.Scenario, o Options) error {
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()
	logger, closeLog, err := cmdutil.ComponentLogger(o.LogFile, o.Verbose, stderr)
	if err != nil {
		return cmdutil.Invalid(err)
	}
	defer closeLog()
	opts := engine.Options{Progress: stdout, ShrinkBudget: o.ShrinkBudget}
	var newTarget func() engine.Target
	switch o.Target {
	case "sim":
		if len(o.Contexts) > 0 {
			return cmdutil.Invalid(errors.New("--context: only with --target kind"))
		}
		if err := cmdutil.NeedRoot(); err != nil {
			return err
		}
		if o.Keep {
			opts.Keep = func() {
				fmt.Fprintln(stdout, "mesh kept running; press Ctrl-C to tear it down")
				<-ctx.Done()
			}
		}
		newTarget = func() engine.Target { return simtarget.New(simtarget.Options{Logger: logger}) }
	case "kind":
		kindOpts := o.Kind
		if kindOpts.Contexts, err = kindtarget.ParseContexts(o.Contexts); err != nil {
			return cmdutil.Invalid(err)
		}
		kindOpts.Keep, kindOpts.Logger = o.Keep, logger
		if err := kindtarget.New(kindOpts).Check(sc); err != nil {
			return cmdutil.Invalidf("%s: target kind: %w", sc.File, err)
		}
		opts.SettleTimeout = kindtarget.SettleTimeout
		newTarget = func() engine.Target { return kindtarget.New(kindOpts) }
	default:
		return cmdutil.Invalidf("--target %q: want sim or kind", o.Target)
	}
	if o.ShrinkBudget > 0 {
		opts.NewTarget = newTarget
	}
	rep, err := engine.Run(ctx, sc, newTarget(), opts)
	if err != nil {
		return cmdutil.Invalid(err)
	}
	dir := o.ReportDir
	if dir == "" && rep.Repro != nil {
		// A shrunk failure is worth keeping even without --report.
		if dir, err = os.MkdirTemp("", "meshbed-"+sc.Name+"-"); err != nil {
			return cmdutil.Invalid(err)
		}
	}
	if dir != "" {
		if err := rep.WriteDir(dir); err != nil {
			return cmdutil.Invalid(err)
		}
		fmt.Fprintf(stdout, "report: %s\n", filepath.Join(dir, "report.html"))
		if rep.Repro != nil {
			fmt.Fprintf(stdout, "repro: %s (meshbed scenario run %[1]s)\n", filepath.Join(dir, "repro.yaml"))
		}
	}
	if !rep.Passed {
		return cmdutil.Failed(fmt.Errorf("scenario %s failed", sc.Name))
	}
	return nil
}
