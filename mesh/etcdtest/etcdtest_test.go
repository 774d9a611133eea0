package etcdtest

import (
	"context"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

func TestStartRestart(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	start := time.Now()
	s := Start(t)
	t.Logf("started in %v", time.Since(start))
	c := s.Client()
	if _, err := c.Put(ctx, "k", "v"); err != nil {
		t.Fatal(err)
	}
	eps := s.Endpoints()[0]

	start = time.Now()
	s.Restart()
	t.Logf("restarted in %v", time.Since(start))
	if s.Endpoints()[0] != eps {
		t.Errorf("endpoint changed: %s -> %s", eps, s.Endpoints()[0])
	}
	// The same client reconnects and finds the store empty.
	start = time.Now()
	resp, err := c.Get(ctx, "k")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("client back after %v", time.Since(start))
	if len(resp.Kvs) != 0 {
		t.Errorf("key survived restart: %v", resp.Kvs)
	}

	start = time.Now()
	s.Stop()
	t.Logf("stopped in %v", time.Since(start))
	if s.Running() {
		t.Error("Running after Stop")
	}
	short, cancelShort := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancelShort()
	if _, err := c.Get(short, "k"); err == nil {
		t.Error("Get succeeded on a stopped server")
	}
}

func TestPartition(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s := Start(t)
	c, err := clientv3.New(clientv3.Config{Endpoints: s.Endpoints(), Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Put(ctx, "k", "v1"); err != nil {
		t.Fatal(err)
	}
	s.Partition()
	// The server side still works: that is how tests change the store
	// behind a partition.
	if _, err := s.Client().Put(ctx, "k2", "v2"); err != nil {
		t.Fatal(err)
	}
	short, cancelShort := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancelShort()
	if _, err := c.Get(short, "k"); err == nil {
		t.Fatal("Get succeeded across a partition")
	}
	s.Heal()
	// The data survives a partition, unlike a restart.
	resp, err := c.Get(ctx, "k")
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != "v1" {
		t.Errorf("after heal: %v", resp.Kvs)
	}
}
