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
	"os"

	"github.com/meshbed/meshbed/mesh/agent/cni/plugin"
)

func main() {
	if os.Getenv("CNI_COMMAND") != "" {
		os.Exit(plugin.Run(context.Background(), os.Getenv, os.Stdin, os.Stdout))
	}
	os.Exit(plugin.Command(os.Args[1:], os.Stdout, os.Stderr))
}
