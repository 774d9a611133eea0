package cmdutil

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
)

// ExitError carries a process exit code out of a command's body, through
// cobra, to its main.
type ExitError struct {
	Code int
	Err  error
}

func (e *ExitError) Error() string { return e.Err.Error() }
func (e *ExitError) Unwrap() error { return e.Err }

// Invalid is err as exit code 2: invalid input or environment, the user's
// to fix. nil stays nil, and an error that already carries a code keeps it.
func Invalid(err error) error { return withCode(2, err) }

// Failed is err as exit code 1: what was asked for ran and failed. nil
// stays nil, and an error that already carries a code keeps it.
func Failed(err error) error { return withCode(1, err) }

func withCode(code int, err error) error {
	var ee *ExitError
	if err == nil || errors.As(err, &ee) {
		return err
	}
	return &ExitError{code, err}
}

// Invalidf is Invalid(fmt.Errorf(format, a...)).
func Invalidf(format string, a ...any) error { return Invalid(fmt.Errorf(format, a...)) }

// ExitCode is the exit code of a command that returned err: its own, or
// def.
func ExitCode(err error, def int) int {
	var ee *ExitError
	if errors.As(err, &ee) {
		return ee.Code
	}
	return def
}

// ComponentLogger is the logger of the mesh components a command runs:
// to file at debug level, else with verbose to stderr, else nowhere. The
// returned function closes the file.
func ComponentLogger(file string, verbose bool, stderr io.Writer) (*slog.Logger, func(), error) {
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

// NeedRoot is the simulator's refusal to run without root, exit 2.
func NeedRoot() error {
	if os.Geteuid() != 0 {
		return Invalid(errors.New("the simulator needs root: it creates network namespaces and loads BPF programs (run with sudo)"))
	}
	return nil
}
