package datapath

import (
	"fmt"
	"runtime"
	"testing"

	"github.com/vishvananda/netlink"
	vnetns "github.com/vishvananda/netns"
)

// testNS is a private network namespace for one test. Code runs inside it
// through do, on a locked thread that returns to the original namespace
// afterwards (or, if it cannot, is never unlocked, so the runtime retires it).
type testNS struct {
	h vnetns.NsHandle
}

func newTestNS(t testing.TB) *testNS {
	t.Helper()
	runtime.LockOSThread()
	orig, err := vnetns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		t.Fatalf("get current netns: %v", err)
	}
	defer orig.Close()
	h, err := vnetns.New() // also moves this thread into it
	if err != nil {
		runtime.UnlockOSThread()
		t.Fatalf("create netns: %v", err)
	}
	if err := vnetns.Set(orig); err != nil {
		t.Fatalf("return to original netns: %v", err) // thread stays locked
	}
	runtime.UnlockOSThread()
	ns := &testNS{h: h}
	t.Cleanup(func() { h.Close() })
	return ns
}

func (ns *testNS) do(fn func() error) error {
	runtime.LockOSThread()
	orig, err := vnetns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		return err
	}
	defer orig.Close()
	if err := vnetns.Set(ns.h); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("enter netns: %w", err)
	}
	ferr := fn()
	if err := vnetns.Set(orig); err != nil {
		return fmt.Errorf("leave netns: %w", err) // keep the thread locked: it dies with the goroutine
	}
	runtime.UnlockOSThread()
	return ferr
}

func (ns *testNS) mustDo(t testing.TB, fn func() error) {
	t.Helper()
	if err := ns.do(fn); err != nil {
		t.Fatal(err)
	}
}

// addVeth creates a veth pair with both ends in the current namespace and
// brings it up.
func addVeth(name, peer string) (netlink.Link, error) {
	v := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: name}, PeerName: peer}
	if err := netlink.LinkAdd(v); err != nil {
		return nil, fmt.Errorf("add veth %s: %w", name, err)
	}
	for _, n := range []string{name, peer} {
		l, err := netlink.LinkByName(n)
		if err != nil {
			return nil, err
		}
		if err := netlink.LinkSetUp(l); err != nil {
			return nil, fmt.Errorf("set %s up: %w", n, err)
		}
	}
	return netlink.LinkByName(name)
}

// addVXLAN creates a collect-metadata VXLAN device, up.
func addVXLAN(name string) (netlink.Link, error) {
	v := &netlink.Vxlan{LinkAttrs: netlink.LinkAttrs{Name: name, MTU: 1450}, FlowBased: true, Port: 4789, Learning: false}
	if err := netlink.LinkAdd(v); err != nil {
		return nil, fmt.Errorf("add vxlan %s: %w", name, err)
	}
	l, err := netlink.LinkByName(name)
	if err != nil {
		return nil, err
	}
	return l, netlink.LinkSetUp(l)
}
