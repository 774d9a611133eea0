package remote

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/meshbed/meshbed/internal/testenv"
	"github.com/meshbed/meshbed/mesh/etcdtest"
)

// connCounter is a Dialer that counts the connections it opened and those
// still open.
type connCounter struct {
	mu           sync.Mutex
	dialed, open int
}

func (cc *connCounter) Dial(ctx context.Context, addr string) (net.Conn, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	cc.mu.Lock()
	cc.dialed++
	cc.open++
	cc.mu.Unlock()
	return &countedConn{Conn: c, cc: cc}, nil
}

func (cc *connCounter) counts() (dialed, open int) {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	return cc.dialed, cc.open
}

type countedConn struct {
	net.Conn
	cc   *connCounter
	once sync.Once
}

func (c *countedConn) Close() error {
	c.once.Do(func() {
		c.cc.mu.Lock()
		c.cc.open--
		c.cc.mu.Unlock()
	})
	return c.Conn.Close()
}

// TestSharedConnection: remote clusters whose configs name the same server
// with the same credentials (every remote cluster read through the local
// kvstoremesh cache) share one connection; removing one cluster's config
// leaves the others reading on it, and the last one closes it.
func TestSharedConnection(t *testing.T) {
	local := etcdtest.Start(t)
	names := []string{"cluster2", "cluster3", "cluster4"}
	for i, name := range names {
		p := newPublisher(t, local.Client(), name, uint32(i+2))
		p.cached = true
		p.basic()
	}
	dir := t.TempDir()
	for _, name := range names {
		writeConfig(t, dir, name, local.Endpoints(), "")
	}
	cfg := fastConfig(t, dir)
	counter := &connCounter{}
	cfg.Dialer = counter.Dial
	m, rec := startManager(t, cfg)
	for _, name := range names {
		rec.expect(wait, name, func(v *view) error {
			if !v.reachable || v.services["default/rebel-base"] == "" {
				return fmt.Errorf("%+v", v)
			}
			return nil
		})
	}
	if dialed, open := counter.counts(); dialed != 1 || open != 1 {
		t.Fatalf("three clusters behind one server: %d connections dialed, %d open; want one shared", dialed, open)
	}

	// cluster2's config goes: its cluster is forgotten, the others keep
	// the connection and still see changes.
	if err := os.Remove(filepath.Join(dir, "cluster2")); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 10*time.Second, func() error {
		if _, ok := statusOf(m, "cluster2"); ok {
			return errors.New("cluster2 still configured")
		}
		return nil
	})
	p3 := newPublisher(t, local.Client(), "cluster3", 3)
	p3.cached = true
	p3.service("rebel-base", "10.20.0.7", "10.20.0.8")
	rec.expect(wait, "cluster3", func(v *view) error {
		if v.services["default/rebel-base"] != "10.20.0.7,10.20.0.8" {
			return fmt.Errorf("rebel-base %q", v.services["default/rebel-base"])
		}
		return nil
	})
	if dialed, open := counter.counts(); dialed != 1 || open != 1 {
		t.Fatalf("after cluster2's removal: %d connections dialed, %d open; want the shared one still", dialed, open)
	}

	// The last users go: the connection is closed.
	for _, name := range names[1:] {
		if err := os.Remove(filepath.Join(dir, name)); err != nil {
			t.Fatal(err)
		}
	}
	testenv.Eventually(t, 10*time.Second, func() error {
		if _, open := counter.counts(); open != 0 {
			return fmt.Errorf("%d connections open with no cluster configured", open)
		}
		return nil
	})
}
