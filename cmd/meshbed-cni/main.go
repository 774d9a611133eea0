// Command meshbed-cni is meshbed's CNI plugin (spec 1.0.0). The container
// runtime runs it for every pod sandbox with CNI_COMMAND set; it forwards
// ADD, DEL and CHECK to the node's agent over a unix socket (package
// mesh/agent/cni) and reports the pod's interface and address. The agent does the
// plumbing, so the plugin is a thin, stateless client.
//
// Without CNI_COMMAND it runs the agent DaemonSet's helpers:
//
//	meshbed-cni install --bin-dir DIR --conf-dir DIR [--socket PATH]
//	    copy this binary into the node's CNI bin directory and write the
//	    conflist (init container)
//	meshbed-cni health [--socket PATH]
//	    exit 0 when the agent is ready (readiness probe)
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/meshbed/meshbed/mesh/agent/cni"
)

func main() {
	if os.Getenv("CNI_COMMAND") != "" {
		os.Exit(run(context.Background(), envFrom(os.Getenv), os.Stdin, os.Stdout))
	}
	os.Exit(command(os.Args[1:], os.Stdout, os.Stderr))
}

// command runs a helper subcommand and returns the exit code.
func command(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprintln(stderr, "usage: meshbed-cni install|health [flags] (as a CNI plugin, run with CNI_COMMAND set)")
		return 2
	}
	fs := flag.NewFlagSet("meshbed-cni "+args[0], flag.ContinueOnError)
	fs.SetOutput(stderr)
	socket := fs.String("socket", cni.DefaultSocket, "the agent's CNI socket")
	var err error
	switch args[0] {
	case "install":
		binDir := fs.String("bin-dir", "/opt/cni/bin", "the node's CNI plugin directory")
		confDir := fs.String("conf-dir", "/etc/cni/net.d", "the node's CNI configuration directory")
		if err := fs.Parse(args[1:]); err != nil {
			return flagExit(err)
		}
		self, serr := os.Executable()
		if serr != nil {
			err = fmt.Errorf("find own binary: %w", serr)
			break
		}
		err = install(self, *binDir, *confDir, *socket)
		if err == nil {
			fmt.Fprintf(stdout, "installed %s and %s\n", pluginPath(*binDir), conflistPath(*confDir))
		}
	case "health":
		timeout := fs.Duration("timeout", 2*time.Second, "how long to wait for the agent's answer")
		if err := fs.Parse(args[1:]); err != nil {
			return flagExit(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), *timeout)
		defer cancel()
		err = cni.NewClient(*socket).Health(ctx)
	default:
		fmt.Fprintf(stderr, "meshbed-cni: unknown command %q (want install or health)\n", args[0])
		return 2
	}
	if err != nil {
		fmt.Fprintf(stderr, "meshbed-cni %s: %v\n", args[0], err)
		return 1
	}
	return 0
}

func flagExit(err error) int {
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	return 2
}
