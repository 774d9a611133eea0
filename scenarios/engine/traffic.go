package engine

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/meshbed/meshbed/scenarios"
)

// stream is a background traffic stream: one request per tick of its rate,
// each on a new connection, each in its own goroutine so that a stalled
// request (a partition) does not hold back the ones after it.
type stream struct {
	cancel context.CancelFunc
	done   chan struct{}

	// from, url and timeout are the stream's source and request, for the
	// chaos checker.
	from    scenarios.Workload
	url     string
	timeout time.Duration

	mu      sync.Mutex
	rec     *scenarios.Stream
	results []result
}

func (r *runner) startTraffic(ctx context.Context, tgt Target, t *scenarios.Traffic) error {
	client, err := tgt.Client(ctx, t.From, t.URL.String(), t.Timeout)
	if err != nil {
		return err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, running := r.traffic[t.Name]; running {
		return fmt.Errorf("traffic %q is already running", t.Name)
	}
	sctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	s := &stream{cancel: cancel, done: make(chan struct{}), from: t.From, url: t.URL.String(), timeout: t.Timeout,
		rec: scenarios.NewStream(t.Name, t.From, t.URL.String(), time.Since(r.start), 0)}
	r.traffic[t.Name] = s
	go s.run(sctx, client, t.Rate.Interval(), r.start)
	return nil
}

func (s *stream) run(ctx context.Context, client Client, every time.Duration, runStart time.Time) {
	defer close(s.done)
	var wg sync.WaitGroup
	defer wg.Wait()
	tick := time.NewTicker(every)
	defer tick.Stop()
	for {
		wg.Go(func() {
			// In-flight requests finish even after stop: their outcome
			// belongs to the record.
			res := client.Get(context.WithoutCancel(ctx))
			s.mu.Lock()
			s.results = append(s.results, result{at: res.Start, took: res.Duration, cluster: res.Cluster})
			cl := res.Cluster
			if res.Err != nil {
				cl = ""
			}
			s.rec.Record(res.Start.Sub(runStart), cl)
			s.mu.Unlock()
		})
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

func (s *stream) stop() {
	s.cancel()
	<-s.done
}

// stopTraffic stops a stream; its whole record is the step's outcome.
func (r *runner) stopTraffic(name string) (outcome, error) {
	r.mu.Lock()
	s, ok := r.traffic[name]
	delete(r.traffic, name)
	r.mu.Unlock()
	if !ok {
		return outcome{}, fmt.Errorf("traffic %q is not running", name)
	}
	s.stop()
	s.mu.Lock()
	defer s.mu.Unlock()
	out := outcome{responses: map[string]int{}, hasTraffic: true, requests: len(s.results)}
	for _, res := range s.results {
		if res.cluster == "" {
			out.errors++
		} else {
			out.responses[res.cluster]++
		}
	}
	out.maxOutage = maxOutage(s.results)
	r.report.Streams = append(r.report.Streams, *s.rec)
	return out, nil
}
