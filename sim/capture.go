package sim

import (
	"bytes"
	"errors"
	"fmt"
	"net/netip"
	"sync"

	"golang.org/x/sys/unix"
)

// Capture watches the underlay as a capture on the wire would: a packet
// socket in the underlay's namespace sees every frame that crosses the
// bridge between the hosts, and it looks for needles in them in clear.
type Capture struct {
	fd      int
	needles [][]byte
	skip    map[netip.Addr]bool // the apiservers: control plane, not node traffic

	stop chan struct{}
	done chan struct{}

	mu         sync.Mutex
	packets    int
	clear      []string
	clearCount int
	err        error
}

// CaptureResult is what a capture saw.
type CaptureResult struct {
	// Packets between nodes seen (each frame once, as it leaves the bridge).
	Packets int
	// Clear describes the first few packets that carried a needle.
	Clear []string
	// ClearCount counts every packet that carried a needle.
	ClearCount int
}

const maxClearShown = 3

// StartCapture starts capturing the underlay; Stop it.
func (m *Mesh) StartCapture(needles []string) (*Capture, error) {
	c := &Capture{skip: map[netip.Addr]bool{}, stop: make(chan struct{}), done: make(chan struct{})}
	for _, n := range needles {
		if n != "" {
			c.needles = append(c.needles, []byte(n))
		}
	}
	for _, cl := range m.clusters {
		c.skip[cl.apiIP] = true
	}
	err := m.underlayNS.Do(func() error {
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, int(htons(unix.ETH_P_ALL)))
		if err != nil {
			return fmt.Errorf("packet socket: %w", err)
		}
		c.fd = fd
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("capture underlay: %w", err)
	}
	// A large queue, and a short timeout so the reader notices Stop; drops
	// are counted at the end (a capture that dropped cannot vouch for
	// anything).
	_ = unix.SetsockoptInt(c.fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 16<<20)
	tv := unix.Timeval{Usec: 20_000}
	if err := unix.SetsockoptTimeval(c.fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		unix.Close(c.fd)
		return nil, fmt.Errorf("capture underlay: %w", err)
	}
	// Reset the counters: they count from the socket's creation.
	_, _ = unix.GetsockoptTpacketStats(c.fd, unix.SOL_PACKET, unix.PACKET_STATISTICS)
	go c.read()
	return c, nil
}

func (c *Capture) read() {
	defer close(c.done)
	buf := make([]byte, 1<<16)
	stopping := false
	for {
		if !stopping {
			select {
			case <-c.stop:
				stopping = true
			default:
			}
		}
		n, from, err := unix.Recvfrom(c.fd, buf, 0)
		if err != nil {
			if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
				// Once stopping, an empty queue is the end: every frame
				// sent before Stop was queued when it crossed the bridge.
				if stopping {
					return
				}
				continue
			}
			c.mu.Lock()
			c.err = fmt.Errorf("capture underlay: read: %w", err)
			c.mu.Unlock()
			return
		}
		// Each frame crosses two ports of the bridge; count it once, as it
		// leaves towards its receiver.
		if ll, ok := from.(*unix.SockaddrLinklayer); !ok || ll.Pkttype != unix.PACKET_OUTGOING {
			continue
		}
		c.frame(buf[:n])
	}
}

func (c *Capture) frame(f []byte) {
	src, dst, proto, ok := ipv4Of(f)
	if ok && (c.skip[src] || c.skip[dst]) {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.packets++
	for _, nd := range c.needles {
		if bytes.Contains(f, nd) {
			c.clearCount++
			if len(c.clear) < maxClearShown {
				c.clear = append(c.clear, fmt.Sprintf("%s → %s %s carried %q", src, dst, protoName(proto), nd))
			}
			return
		}
	}
}

// Stop ends the capture once every frame sent before the call was seen.
func (c *Capture) Stop() (CaptureResult, error) {
	close(c.stop)
	<-c.done
	stats, serr := unix.GetsockoptTpacketStats(c.fd, unix.SOL_PACKET, unix.PACKET_STATISTICS)
	unix.Close(c.fd)
	c.mu.Lock()
	defer c.mu.Unlock()
	res := CaptureResult{Packets: c.packets, Clear: c.clear, ClearCount: c.clearCount}
	switch {
	case c.err != nil:
		return res, c.err
	case serr != nil:
		return res, fmt.Errorf("capture underlay: statistics: %w", serr)
	case stats.Drops > 0:
		return res, fmt.Errorf("capture underlay: %d frames dropped by the capture: it cannot vouch for what it did not see", stats.Drops)
	}
	return res, nil
}

func ipv4Of(f []byte) (src, dst netip.Addr, proto uint8, ok bool) {
	if len(f) < 14+20 || f[12] != 0x08 || f[13] != 0x00 {
		return netip.Addr{}, netip.Addr{}, 0, false
	}
	ip := f[14:]
	src = netip.AddrFrom4([4]byte(ip[12:16]))
	dst = netip.AddrFrom4([4]byte(ip[16:20]))
	return src, dst, ip[9], true
}

func protoName(p uint8) string {
	switch p {
	case unix.IPPROTO_TCP:
		return "TCP"
	case unix.IPPROTO_UDP:
		return "UDP"
	case unix.IPPROTO_ICMP:
		return "ICMP"
	}
	return fmt.Sprintf("proto %d", p)
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }
