package kvstore_test

import (
	"context"
	"fmt"
	"testing"
	"time"

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
