package kind

import (
	"fmt"
	"slices"
	"strings"

	"sigs.k8s.io/kind/pkg/cluster"
)

// bootTimeout is how Kind fails when a node's systemd has not reached its
// multi-user target within Kind's fixed 30 s: on a busy two-core machine a
// node container sometimes boots slower than that.
const bootTimeout = "could not find a log line that matches"

// CreateAttempts bounds Create's tries.
const CreateAttempts = 3

// Create is provider.Create, tried again (after deleting what the failed
// attempt left) when a node only booted too slowly for Kind's fixed wait;
// every other error is returned at once.
func Create(p *cluster.Provider, name, kubeconfig string, opts ...cluster.CreateOption) error {
	var errs []string
	for range CreateAttempts {
		err := p.Create(name, opts...)
		if err == nil {
			return nil
		}
		if !strings.Contains(err.Error(), bootTimeout) {
			return err
		}
		errs = append(errs, err.Error())
		if names, lerr := p.List(); lerr == nil && slices.Contains(names, name) {
			if derr := p.Delete(name, kubeconfig); derr != nil {
				return fmt.Errorf("%w; deleting the half-made cluster: %v", err, derr)
			}
		}
	}
	return fmt.Errorf("kind create cluster %s: nodes did not boot in time, %d attempts: %s", name, CreateAttempts, strings.Join(errs, "; "))
}
