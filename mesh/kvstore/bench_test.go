package kvstore_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/meshbed/meshbed/mesh/etcdtest"
	"github.com/meshbed/meshbed/mesh/kvstore"
)

// BenchmarkWriterInitialSync measures how fast an owner's initial state
// (e.g. a cluster's ipcache) reaches etcd: enqueue, commit, canary.
func BenchmarkWriterInitialSync(b *testing.B) {
	const keys = 2000
	s := etcdtest.Start(b)
	c := connect(b, s)
	value := []byte(`{"IP":"10.10.1.7","HostIP":"172.18.0.3","ID":65793,"Key":0}`)
	i := 0
	start := time.Now()
	for b.Loop() {
		i++
		ctx, cancel := context.WithCancel(context.Background())
		w := kvstore.NewWriter(c, kvstore.WriterConfig{})
		done := make(chan struct{})
		go func() { defer close(done); w.Run(ctx) }()
		for k := range keys {
			w.Upsert(fmt.Sprintf("bench/%d/%d", i, k), value)
		}
		w.Synced(fmt.Sprintf("synced/bench/%d", i))
		if err := w.Flush(context.Background()); err != nil {
			b.Fatal(err)
		}
		cancel()
		<-done
	}
	b.ReportMetric(float64(keys*i)/time.Since(start).Seconds(), "keys/s")
}

// BenchmarkReaderInitialList measures a reader's list of a large prefix up
// to EventSynced.
func BenchmarkReaderInitialList(b *testing.B) {
	const keys = 2000
	s := etcdtest.Start(b)
	c := connect(b, s)
	w := kvstore.NewWriter(c, kvstore.WriterConfig{})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go w.Run(ctx)
	for k := range keys {
		w.Upsert(fmt.Sprintf("list/%d", k), []byte(`{"IP":"10.10.1.7","HostIP":"172.18.0.3","ID":65793,"Key":0}`))
	}
	if err := w.Flush(ctx); err != nil {
		b.Fatal(err)
	}
	start := time.Now()
	n := 0
	for b.Loop() {
		n++
		synced := make(chan struct{})
		rctx, rcancel := context.WithCancel(ctx)
		r := kvstore.NewReader(c, kvstore.ReaderConfig{Prefix: "list"}, func(ev kvstore.Event) {
			if ev.Kind == kvstore.EventSynced {
				close(synced)
			}
		})
		done := make(chan struct{})
		go func() { defer close(done); r.Run(rctx) }()
		<-synced
		rcancel()
		<-done
	}
	b.ReportMetric(float64(keys*n)/time.Since(start).Seconds(), "keys/s")
}

// BenchmarkWriterManyPending measures one Writer with a large backlog:
// 100,000 or 300,000 keys of 250 owners (kvstoremesh copying 250 remote
// clusters through one Writer), each owner's keys followed by its canary,
// until Flush returns. The backlog is enqueued either before Run starts or while
// it runs (the writes then overlap the enqueueing, as they do when a
// bootstrap streams in). keys/s is keys committed per second, canaries
// included in the time.
func BenchmarkWriterManyPending(b *testing.B) {
	const owners = 250
	value := []byte(`{"IP":"10.10.1.7","HostIP":"172.18.0.3","ID":65793,"Key":0}`)
	for _, tc := range []struct {
		keys      int
		beforeRun bool
	}{{100_000, true}, {100_000, false}, {300_000, false}} {
		perOwner := tc.keys / owners
		beforeRun := tc.beforeRun
		name := fmt.Sprintf("keys=%d/enqueued-while-running", tc.keys)
		if beforeRun {
			name = fmt.Sprintf("keys=%d/enqueued-before-run", tc.keys)
		}
		b.Run(name, func(b *testing.B) {
			s := etcdtest.Start(b)
			c := connect(b, s)
			i := 0
			var elapsed time.Duration
			for b.Loop() {
				i++
				ctx, cancel := context.WithCancel(context.Background())
				w := kvstore.NewWriter(c, kvstore.WriterConfig{})
				done := make(chan struct{})
				start := time.Now()
				if !beforeRun {
					go func() { defer close(done); w.Run(ctx) }()
				}
				for o := range owners {
					for k := range perOwner {
						w.Upsert(fmt.Sprintf("many/%d/%d/%d", i, o, k), value)
					}
					w.Synced(fmt.Sprintf("synced/many/%d/%d", i, o))
				}
				if beforeRun {
					go func() { defer close(done); w.Run(ctx) }()
				}
				if err := w.Flush(context.Background()); err != nil {
					b.Fatal(err)
				}
				elapsed += time.Since(start)
				cancel()
				<-done
				b.StopTimer()
				// Keep the store small for the next round.
				if _, err := s.Client().Delete(context.Background(), fmt.Sprintf("many/%d/", i), clientv3.WithPrefix()); err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
			}
			b.ReportMetric(float64(owners*perOwner*i)/elapsed.Seconds(), "keys/s")
		})
	}
}
