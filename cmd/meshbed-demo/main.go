// Command meshbed-demo is the seed demo's workload on real clusters, built
// from the simulator's own workload code so that it needs no image from a
// registry:
//
//	meshbed-demo echo --cluster NAME [--port 80]   rebel-base: answers every
//	    request with a JSON object naming its cluster, pod and node
//	meshbed-demo get [--count N] [--timeout D] URL x-wing's curl: N requests,
//	    a new connection each, one JSON line per request
//	meshbed-demo idle                              x-wing's main process
//
// POD_NAME and NODE_NAME (the downward API) name the pod and node in echo's
// answers.
package main

import (
	"errors"
	"fmt"
	"os"

	"github.com/meshbed/meshbed/sim/workload"
)

func main() {
	if err := workload.Demo(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "meshbed-demo:", err)
		if errors.Is(err, workload.ErrUsage) {
			os.Exit(2)
		}
		os.Exit(1)
	}
}
