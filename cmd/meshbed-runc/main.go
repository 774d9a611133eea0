// Command meshbed-runc is an OCI runtime wrapper for hosts that withhold
// CAP_SYS_RESOURCE from root (some CI sandboxes): runc asks for every
// capability a privileged container lists, and fails with "unable to apply
// caps: operation not permitted" when one is missing from its own bounding
// set. meshbed-runc removes the capabilities this process does not hold from
// the OCI spec (config.json in the --bundle directory for create and run, the
// --process file for exec), raises an oomScoreAdj below its own (lowering it
// needs CAP_SYS_RESOURCE too), and then executes runc with the same
// arguments.
//
// hack/docker.sh registers it with dockerd (--add-runtime meshbed=PATH
// --default-runtime meshbed); the offline Kind node image uses it as
// containerd's runtime binary. MESHBED_RUNC names the runc to execute
// (default: runc on PATH, then /usr/sbin/runc, /usr/bin/runc).
package main

import (
	"os"

	"github.com/meshbed/meshbed/kind/runc"
)

func main() { runc.Main(os.Args[1:]) }
