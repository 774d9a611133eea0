// Package cmdutil holds what meshbed's mains and the command bodies they
// call share: flag checks that name the flag in their errors, loggers, and
// the exit codes that errors carry out of a command (2 invalid input or
// environment, 1 failed).
package cmdutil

import (
	"fmt"
	"log/slog"
	"os"

	"github.com/meshbed/meshbed/mesh/wire"
)

// ClusterFlags checks the --cluster-name, --cluster-id and
// --max-connected-clusters of a component, each error naming its flag (the
// ID only once the maximum it depends on is valid).
func ClusterFlags(name string, id, maxConnected uint32) []error {
	var errs []error
	if err := wire.ValidateClusterName(name); err != nil {
		errs = append(errs, fmt.Errorf("--cluster-name: %w", err))
	}
	if err := wire.ValidateMaxConnectedClusters(maxConnected); err != nil {
		errs = append(errs, fmt.Errorf("--max-connected-clusters: %w", err))
	} else if err := wire.ValidateClusterID(id, maxConnected); err != nil {
		errs = append(errs, fmt.Errorf("--cluster-id: %w", err))
	}
	return errs
}

// Logger is a component's text logger on stderr at the level of its
// --log-level flag.
func Logger(level string) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level: %w", err)
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: l})), nil
}
