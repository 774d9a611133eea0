// Command meshbed-pause is the sandbox ("pause") process of the offline Kind
// node image: it holds a pod's namespaces, reaps the children it inherits as
// PID 1 of a shared PID namespace, and exits 0 on SIGTERM or SIGINT.
package main

import (
	"os"

	"github.com/meshbed/meshbed/kind/pause"
)

func main() { pause.Main(os.Args[1:]) }
