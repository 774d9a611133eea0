// Package relay gathers the flow streams of several agents into one, as
// hubble-relay does: from the agents of a real cluster through Kubernetes
// port-forwards (no exec into the pods, no port opened on the node
// network), or from one agent's local socket on its node.
package relay

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/meshbed/meshbed/mesh/flow"
)

// Source is one agent's flow stream.
type Source struct {
	// Name identifies the agent in errors (pod and node).
	Name string
	// Get streams the agent's records for req to fn (flow.Get).
	Get func(ctx context.Context, req flow.Request, fn func(flow.Record) error) error
}

// SocketSource reads the agent that serves flow.Path on the unix socket
// path (the agent's local control socket).
func SocketSource(path string) Source {
	hc := &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		},
	}}
	return Source{Name: "agent socket " + path, Get: func(ctx context.Context, req flow.Request, fn func(flow.Record) error) error {
		err := flow.Get(ctx, hc, "http://agent", req, fn)
		var opErr *net.OpError
		if errors.As(err, &opErr) && opErr.Op == "dial" {
			return fmt.Errorf("no agent answers on %s (is meshbed-agent running on this node?)", path)
		}
		return err
	}}
}

// Merge streams the records of every source for req to fn: without
// req.Follow the last req.Last of all of them in time order; with it, every
// record as it arrives. Sources are read concurrently and fn is never
// called concurrently. A source that fails does not stop the others; the
// failures are returned as one line naming each source.
func Merge(ctx context.Context, sources []Source, req flow.Request, fn func(flow.Record) error) error {
	if len(sources) == 0 {
		return errors.New("no agents to read flows from")
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		mu      sync.Mutex
		past    []flow.Record
		errs    []string
		emitErr error
		wg      sync.WaitGroup
	)
	for _, s := range sources {
		wg.Go(func() {
			err := s.Get(ctx, req, func(rec flow.Record) error {
				mu.Lock()
				defer mu.Unlock()
				if !req.Follow {
					past = append(past, rec)
					return nil
				}
				if emitErr != nil {
					return emitErr
				}
				if err := fn(rec); err != nil {
					emitErr = err
					cancel()
					return err
				}
				return nil
			})
			if err != nil && ctx.Err() == nil {
				mu.Lock()
				errs = append(errs, fmt.Sprintf("%s: %v", s.Name, oneLine(err)))
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if emitErr != nil {
		return emitErr
	}
	if !req.Follow {
		sort.SliceStable(past, func(i, j int) bool { return recordTime(past[i]).Before(recordTime(past[j])) })
		if len(past) > req.Last {
			past = past[len(past)-req.Last:]
		}
		for _, rec := range past {
			if err := fn(rec); err != nil {
				return err
			}
		}
	}
	if len(errs) > 0 {
		sort.Strings(errs)
		return errors.New(strings.Join(errs, "; "))
	}
	return nil
}

func recordTime(r flow.Record) time.Time {
	if r.Flow != nil {
		return r.Flow.Time
	}
	return r.Lost.Time
}

func oneLine(err error) string {
	return strings.Join(strings.Fields(err.Error()), " ")
}
