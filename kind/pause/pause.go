// Package pause is meshbed-pause, the sandbox ("pause") process of the
// offline Kind node image: it holds a pod's namespaces, reaps the children
// it inherits as PID 1 of a shared PID namespace, and exits 0 on SIGTERM or
// SIGINT.
package pause

import (
	"fmt"
	"os"
	"os/signal"

	"golang.org/x/sys/unix"
)

// Main is meshbed-pause with args (the command line without the program
// name): -v prints its name, anything else pauses until a signal ends it.
func Main(args []string) {
	if len(args) > 0 && args[0] == "-v" {
		fmt.Println("meshbed-pause")
		return
	}
	sigs := make(chan os.Signal, 8)
	signal.Notify(sigs, unix.SIGTERM, unix.SIGINT, unix.SIGCHLD)
	for s := range sigs {
		if s != unix.SIGCHLD {
			os.Exit(0)
		}
		for {
			var ws unix.WaitStatus
			pid, err := unix.Wait4(-1, &ws, unix.WNOHANG, nil)
			if pid <= 0 || err != nil {
				break
			}
		}
	}
}
