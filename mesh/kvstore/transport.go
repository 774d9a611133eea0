package kvstore

import (
	"context"
	"net"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// transport follows the TCP connections a Client dialed, so that Health can
// ask the kernel whether a silent connection is partitioned or merely slow.
//
// An application-level silence has two causes that look alike from inside
// a starved process: the network lost the peer (a partition, a dead host),
// or the peer and this process are both too starved to talk (a busy
// machine, a simulated mesh of dozens of clusters on two cores). The
// kernel tells them apart: a partitioned connection holds bytes this side
// sent that nothing acknowledged, while a slow one either sent nothing (so
// nothing is owed) or had its bytes acknowledged by the peer's kernel,
// which answers whether or not the peer process runs.
type transport struct {
	mu    sync.Mutex
	conns map[*trackedConn]struct{}
}

func newTransport() *transport {
	return &transport{conns: map[*trackedConn]struct{}{}}
}

// dialer wraps dial (nil: a plain TCP dial) so that every connection it
// opens is followed until closed.
func (t *transport) dialer(dial func(ctx context.Context, addr string) (net.Conn, error)) func(ctx context.Context, addr string) (net.Conn, error) {
	return func(ctx context.Context, addr string) (net.Conn, error) {
		var c net.Conn
		var err error
		switch {
		case dial != nil:
			c, err = dial(ctx, addr)
		case strings.HasPrefix(addr, "unix:") || strings.HasPrefix(addr, "unixs:"):
			var d net.Dialer
			c, err = d.DialContext(ctx, "unix", strings.TrimPrefix(strings.TrimPrefix(addr, "unixs:"), "unix:"))
		default:
			var d net.Dialer
			c, err = d.DialContext(ctx, "tcp", addr)
		}
		if err != nil {
			return nil, err
		}
		tc := &trackedConn{Conn: c, t: t}
		t.mu.Lock()
		t.conns[tc] = struct{}{}
		t.mu.Unlock()
		return tc, nil
	}
}

// verdict is what the kernel says of a Client's connections.
type verdict int

const (
	// transportUnknown: no connection whose TCP state can be read (not
	// TCP); only the application's silence counts.
	transportUnknown verdict = iota
	// transportLost: no established connection, or every one is
	// retransmitting (or probing a window) with nothing acknowledged for
	// at least the stall threshold.
	transportLost
	// transportAlive: an established connection whose peer's kernel
	// acknowledges what it is sent.
	transportAlive
)

func (v verdict) String() string {
	switch v {
	case transportLost:
		return "lost"
	case transportAlive:
		return "alive"
	}
	return "unknown"
}

// verdict reads TCP_INFO of every open connection. stall is how long a
// connection may go without an acknowledgement while its retransmission
// (or zero-window probe) timer fires before it counts as lost.
//
// The retransmission counters are what make a moment's look safe: they are
// non-zero only once a timer (at least the minimum RTO, 200 ms) expired
// without any acknowledgement, and any acknowledgement resets them; bytes
// merely in flight at the instant of the read do not count.
func (t *transport) verdict(stall time.Duration) verdict {
	t.mu.Lock()
	conns := make([]*trackedConn, 0, len(t.conns))
	for c := range t.conns {
		conns = append(conns, c)
	}
	t.mu.Unlock()
	if len(conns) == 0 {
		return transportLost
	}
	v := transportUnknown
	for _, c := range conns {
		info, ok := c.tcpInfo()
		if !ok {
			continue
		}
		if tcpLost(info, stall) {
			v = max(v, transportLost)
			continue
		}
		return transportAlive
	}
	return v
}

// tcpLost is the verdict on one connection's TCP_INFO.
func tcpLost(info *unix.TCPInfo, stall time.Duration) bool {
	if info.State != unix.BPF_TCP_ESTABLISHED {
		return true
	}
	waiting := info.Retransmits > 0 || info.Probes > 0 || info.Backoff > 0
	return waiting && time.Duration(info.Last_ack_recv)*time.Millisecond >= stall
}

type trackedConn struct {
	net.Conn
	t    *transport
	once sync.Once
}

func (c *trackedConn) Close() error {
	c.once.Do(func() {
		c.t.mu.Lock()
		delete(c.t.conns, c)
		c.t.mu.Unlock()
	})
	return c.Conn.Close()
}

// tcpInfo reads the kernel's TCP_INFO of the connection; ok is false when
// it is not a TCP socket.
func (c *trackedConn) tcpInfo() (*unix.TCPInfo, bool) {
	sc, ok := c.Conn.(syscall.Conn)
	if !ok {
		return nil, false
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return nil, false
	}
	var info *unix.TCPInfo
	var gerr error
	if err := raw.Control(func(fd uintptr) {
		info, gerr = unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO)
	}); err != nil || gerr != nil {
		return nil, false
	}
	return info, true
}
