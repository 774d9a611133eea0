package flow

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sort"
	"sync"
	"time"

	"github.com/meshbed/meshbed/datapath/monitor"
)

// Defaults of an Observer.
const (
	// DefaultCapacity is how many flows an observer keeps (Hubble keeps
	// 4095 by default).
	DefaultCapacity = 4096
	// DefaultSubscriberBuffer is how many records a stream may fall behind
	// before it loses some.
	DefaultSubscriberBuffer = 1024
	// DefaultLostInterval is how often the datapath's lost-event counter is
	// read.
	DefaultLostInterval = time.Second
)

// ObserverConfig configures an Observer.
type ObserverConfig struct {
	// Cluster and Node name where the flows are observed.
	Cluster, Node string
	Source        monitor.Source
	Resolver      Resolver
	// Capacity of the ring of recent flows (DefaultCapacity if 0).
	Capacity int
	// SubscriberBuffer (DefaultSubscriberBuffer if 0).
	SubscriberBuffer int
	// LostInterval (DefaultLostInterval if 0).
	LostInterval time.Duration
	Logger       *slog.Logger
}

// Observer reads one node's flow events, keeps the most recent flows and
// streams them to subscribers.
type Observer struct {
	cfg ObserverConfig
	log *slog.Logger

	stopped  chan struct{} // closed when Run returns
	stopOnce sync.Once

	mu     sync.Mutex
	ring   []Record // a ring once full: next is the oldest
	next   int
	subs   map[*subscriber]struct{}
	status Status
}

// Status is an observer's account of what it has seen.
type Status struct {
	Cluster string `json:"cluster"`
	Node    string `json:"node_name"`
	// Seen is how many flows the observer has read.
	Seen uint64 `json:"seen_flows"`
	// LostDatapath is how many events the datapath lost (ring buffer full)
	// since it was loaded, as last read.
	LostDatapath uint64 `json:"lost_datapath"`
	// LostSubscribers is how many records slow streams lost.
	LostSubscribers uint64 `json:"lost_subscribers"`
	Capacity        int    `json:"capacity"`
	Running         bool   `json:"running"`
}

type subscriber struct {
	ch     chan Record
	filter Filter
	lost   uint64 // records dropped since the last one delivered
}

// NewObserver returns an observer; Run reads the events.
func NewObserver(cfg ObserverConfig) (*Observer, error) {
	if cfg.Source == nil || cfg.Resolver == nil {
		return nil, errors.New("flow observer: an event source and a resolver are required")
	}
	if cfg.Capacity <= 0 {
		cfg.Capacity = DefaultCapacity
	}
	if cfg.SubscriberBuffer <= 0 {
		cfg.SubscriberBuffer = DefaultSubscriberBuffer
	}
	if cfg.LostInterval <= 0 {
		cfg.LostInterval = DefaultLostInterval
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return &Observer{cfg: cfg, log: cfg.Logger, subs: map[*subscriber]struct{}{}, stopped: make(chan struct{}),
		status: Status{Cluster: cfg.Cluster, Node: cfg.Cluster + "/" + cfg.Node, Capacity: cfg.Capacity}}, nil
}

// Run reads events until ctx ends or the reader fails; then the streams
// that follow it end. An observer runs once.
func (o *Observer) Run(ctx context.Context) error {
	defer o.stopOnce.Do(func() { close(o.stopped) })
	r, err := o.cfg.Source.Events()
	if err != nil {
		return fmt.Errorf("flow observer: %w", err)
	}
	lost0, err := o.cfg.Source.LostEvents()
	if err != nil {
		r.Close()
		return fmt.Errorf("flow observer: %w", err)
	}
	o.mu.Lock()
	o.status.Running, o.status.LostDatapath = true, lost0
	o.mu.Unlock()
	defer func() {
		o.mu.Lock()
		o.status.Running = false
		o.mu.Unlock()
	}()
	stop := context.AfterFunc(ctx, func() { r.Close() })
	defer stop()
	defer r.Close()

	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Go(func() { o.watchLost(ctx, lost0) })
	for {
		ev, err := r.Read()
		switch {
		case errors.Is(err, monitor.ErrReaderClosed) || ctx.Err() != nil:
			return nil
		case errors.Is(err, os.ErrDeadlineExceeded):
			continue
		case err != nil:
			// A garbled record must not stop the observer.
			o.log.Warn("Flow event unreadable", "err", err)
			continue
		}
		f := Enrich(ev, o.cfg.Resolver, o.cfg.Cluster, o.cfg.Node)
		o.publish(Record{Flow: &f})
	}
}

// watchLost reads the datapath's lost-event counter and reports increases.
func (o *Observer) watchLost(ctx context.Context, last uint64) {
	t := time.NewTicker(o.cfg.LostInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		n, err := o.cfg.Source.LostEvents()
		if err != nil {
			if ctx.Err() == nil {
				o.log.Warn("Lost-event counter unreadable", "err", err)
			}
			continue
		}
		if n > last {
			o.mu.Lock()
			o.status.LostDatapath = n
			o.mu.Unlock()
			o.log.Warn("Datapath lost flow events: the reader fell behind", "lost", n-last, "total", n)
			o.publish(Record{Lost: &Lost{Time: time.Now(), Source: LostDatapath, Count: n - last, Cluster: o.cfg.Cluster, Node: o.status.Node}})
			last = n
		}
	}
}

// publish stores rec and hands it to every subscriber that wants it,
// without ever waiting for one.
func (o *Observer) publish(rec Record) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if rec.Flow != nil {
		o.status.Seen++
	}
	if len(o.ring) < o.cfg.Capacity {
		o.ring = append(o.ring, rec)
	} else {
		o.ring[o.next] = rec
		o.next = (o.next + 1) % len(o.ring)
	}
	for s := range o.subs {
		if !s.wants(rec) {
			continue
		}
		if s.lost > 0 {
			select {
			case s.ch <- Record{Lost: &Lost{Time: time.Now(), Source: LostSubscriber, Count: s.lost, Cluster: o.cfg.Cluster, Node: o.status.Node}}:
				s.lost = 0
			default:
			}
		}
		if s.lost == 0 {
			select {
			case s.ch <- rec:
				continue
			default:
			}
		}
		s.lost++
		o.status.LostSubscribers++
	}
}

func (s *subscriber) wants(rec Record) bool {
	if rec.Flow != nil {
		return s.filter.Match(rec.Flow)
	}
	return s.filter.MatchLost(rec.Lost)
}

// Status returns the observer's counters.
func (o *Observer) Status() Status {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.status
}

// snapshot returns the last n stored records matching f, oldest first, and,
// if follow, a subscription that starts right after them.
func (o *Observer) snapshot(f Filter, n int, follow bool) ([]Record, *subscriber) {
	o.mu.Lock()
	defer o.mu.Unlock()
	var out []Record
	for i := len(o.ring) - 1; i >= 0 && len(out) < n; i-- {
		rec := o.ring[(o.next+i)%len(o.ring)]
		if (&subscriber{filter: f}).wants(rec) {
			out = append(out, rec)
		}
	}
	for i, j := 0, len(out)-1; i < j; i, j = i+1, j-1 {
		out[i], out[j] = out[j], out[i]
	}
	if !follow {
		return out, nil
	}
	s := &subscriber{ch: make(chan Record, o.cfg.SubscriberBuffer), filter: f}
	o.subs[s] = struct{}{}
	return out, s
}

func (o *Observer) unsubscribe(s *subscriber) {
	o.mu.Lock()
	delete(o.subs, s)
	o.mu.Unlock()
}

// ErrObserverStopped ends a followed stream whose observers all stopped
// (their agents stopped).
var ErrObserverStopped = errors.New("flow observer stopped")

// Stream sends emit the flows of observers that req asks for: the last
// req.Last matching flows of all of them, in time order, then, if
// req.Follow, every new one until ctx ends or emit fails.
func Stream(ctx context.Context, observers []*Observer, req Request, emit func(Record) error) error {
	type follow struct {
		o *Observer
		s *subscriber
	}
	var past []Record
	var subs []follow
	for _, o := range observers {
		recs, s := o.snapshot(req.Filter, req.Last, req.Follow)
		past = append(past, recs...)
		if s != nil {
			subs = append(subs, follow{o, s})
			defer o.unsubscribe(s)
		}
	}
	sort.SliceStable(past, func(i, j int) bool { return recordTime(past[i]).Before(recordTime(past[j])) })
	if len(past) > req.Last {
		past = past[len(past)-req.Last:]
	}
	for _, rec := range past {
		if err := emit(rec); err != nil {
			return err
		}
	}
	if !req.Follow {
		return nil
	}
	merged := make(chan Record)
	var wg sync.WaitGroup
	ctx, cancel := context.WithCancel(ctx)
	defer func() {
		cancel()
		wg.Wait()
	}()
	for _, f := range subs {
		wg.Go(func() {
			for {
				select {
				case <-ctx.Done():
					return
				case <-f.o.stopped:
					return
				case rec := <-f.s.ch:
					select {
					case merged <- rec:
					case <-ctx.Done():
						return
					}
				}
			}
		})
	}
	// When every observer followed has stopped, so does the stream.
	allStopped := make(chan struct{})
	go func() {
		wg.Wait()
		close(allStopped)
	}()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-allStopped:
			return ErrObserverStopped
		case rec := <-merged:
			if err := emit(rec); err != nil {
				return err
			}
		}
	}
}

func recordTime(r Record) time.Time {
	if r.Flow != nil {
		return r.Flow.Time
	}
	return r.Lost.Time
}
