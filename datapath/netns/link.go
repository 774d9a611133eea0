package netns

import (
	"fmt"
	"time"

	"github.com/vishvananda/netlink"
)

// WaitOperUp waits until the link with ifindex in the namespace is
// operationally up, polling with a short, growing pause.
//
// Plumbing needs this after bringing up a veth pair: the end that opened
// first, while its peer was down, drops every frame until the kernel's link
// watcher (a shared work queue) sees the carrier and attaches its queueing
// discipline — and a bridge keeps such a port disabled until then too. A
// packet sent in that window is lost, and a TCP handshake or ARP that loses
// one waits a whole second to retry. The watcher sets the operational state
// in the same step, so "up" means ready.
func (ns *NS) WaitOperUp(ifindex int, timeout time.Duration) error {
	h, err := ns.Handle()
	if err != nil {
		return err
	}
	deadline := time.Now().Add(timeout)
	for pause := 20 * time.Microsecond; ; pause = min(2*pause, 5*time.Millisecond) {
		link, err := h.LinkByIndex(ifindex)
		if err != nil {
			return fmt.Errorf("wait for link %d in %s: %w", ifindex, ns, err)
		}
		if link.Attrs().OperState == netlink.OperUp {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("link %s in %s not operationally up after %v (state %s)", link.Attrs().Name, ns, timeout, link.Attrs().OperState)
		}
		time.Sleep(pause)
	}
}
