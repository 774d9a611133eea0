package engine

import (
	"context"
	"time"

	"github.com/meshbed/meshbed/scenarios"
)

// final heals every fault, restarts every stopped component, waits for the
// mesh to converge, and checks that nothing is lost or stale: every
// kvstoremesh cache equals its source, and every node's service and ipcache
// maps equal what the control plane says they should be.
func (r *runner) final(ctx context.Context) scenarios.FinalReport {
	t0 := time.Now()
	fin := scenarios.FinalReport{}
	ctx, cancel := context.WithTimeout(ctx, r.opts.SettleTimeout)
	defer cancel()
	err := r.t.Recover(ctx)
	if err == nil {
		err = r.t.Settle(ctx)
	}
	if err == nil {
		err = r.t.Check(ctx)
	}
	fin.Seconds = seconds(time.Since(t0))
	if err != nil {
		fin.Message = err.Error()
		return fin
	}
	fin.Passed = true
	return fin
}
