package netns_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/meshbed/meshbed/datapath/netns"
	"github.com/meshbed/meshbed/datapath/netns/netnstest"
	"github.com/meshbed/meshbed/internal/testenv"
	"github.com/vishvananda/netlink"
)

// threadInode is the namespace inode of the calling thread. The caller must
// be on a locked thread for the answer to mean anything.
func threadInode() (uint64, error) {
	target, err := os.Readlink("/proc/thread-self/ns/net")
	if err != nil {
		return 0, fmt.Errorf("read thread namespace: %w", err)
	}
	return strconv.ParseUint(strings.TrimSuffix(strings.TrimPrefix(target, "net:["), "]"), 10, 64)
}

func TestNewDoClose(t *testing.T) {
	testenv.Privileged(t)
	netnstest.CheckLeaks(t)
	hostIno, err := netns.HostInode()
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name   string
		create func(name string) (*netns.NS, error)
		named  bool
	}{
		{"anonymous", func(n string) (*netns.NS, error) { return netns.New(n) }, false},
		{"named", func(n string) (*netns.NS, error) { return netns.NewNamed(n) }, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			netnstest.CheckLeaks(t)
			name := "mbtest-" + tc.name + "-" + netnstest.Suffix()
			ns, err := tc.create(name)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { ns.Close() })
			if ns.Inode() == hostIno {
				t.Fatalf("new namespace has the host inode %d", hostIno)
			}

			runtime.LockOSThread()
			callerBefore, err1 := threadInode()
			var inside uint64
			err2 := ns.Do(func() (err error) {
				inside, err = threadInode()
				return err
			})
			callerAfter, err3 := threadInode()
			runtime.UnlockOSThread()
			if err := errors.Join(err1, err2, err3); err != nil {
				t.Fatal(err)
			}
			if inside != ns.Inode() {
				t.Errorf("Do ran in namespace %d, want %d", inside, ns.Inode())
			}
			if callerBefore != hostIno || callerAfter != hostIno {
				t.Errorf("caller thread moved: before %d after %d, host %d", callerBefore, callerAfter, hostIno)
			}

			h, err := ns.Handle()
			if err != nil {
				t.Fatal(err)
			}
			links, err := h.LinkList()
			if err != nil {
				t.Fatal(err)
			}
			if len(links) != 1 || links[0].Attrs().Name != "lo" || links[0].Attrs().Flags&net.FlagUp == 0 {
				t.Errorf("fresh namespace links = %v, want only lo, up", links)
			}

			// Path lets another opener reach the same namespace.
			again, err := netns.Open(ns.Path())
			if err != nil {
				t.Fatal(err)
			}
			if again.Inode() != ns.Inode() {
				t.Errorf("Open(Path()) inode %d, want %d", again.Inode(), ns.Inode())
			}
			if err := again.Close(); err != nil {
				t.Fatal(err)
			}

			mount := filepath.Join(netns.RunDir, name)
			if _, err := os.Stat(mount); (err == nil) != tc.named {
				t.Errorf("stat %s: %v, named=%v", mount, err, tc.named)
			}
			if err := ns.Close(); err != nil {
				t.Fatal(err)
			}
			if err := ns.Close(); err != nil {
				t.Errorf("second Close: %v", err)
			}
			if _, err := os.Stat(mount); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("after Close, stat %s: %v, want not exist", mount, err)
			}
			if err := ns.Do(func() error { return nil }); !errors.Is(err, netns.ErrClosed) {
				t.Errorf("Do after Close = %v, want ErrClosed", err)
			}
			if _, err := ns.Handle(); !errors.Is(err, netns.ErrClosed) {
				t.Errorf("Handle after Close = %v, want ErrClosed", err)
			}
		})
	}
}

func TestNewNamedRejectsDuplicatesAndBadNames(t *testing.T) {
	testenv.Privileged(t)
	netnstest.CheckLeaks(t)
	ns := netnstest.NewNamed(t, "dup")
	if _, err := netns.NewNamed(ns.Name()); err == nil {
		t.Fatalf("second NewNamed(%q) succeeded", ns.Name())
	}
	for _, name := range []string{"", ".", "..", "a/b", strings.Repeat("x", 256)} {
		t.Run(fmt.Sprintf("%.12q", name), func(t *testing.T) {
			if ns, err := netns.NewNamed(name); err == nil {
				ns.Close()
				t.Fatalf("NewNamed(%q) succeeded", name)
			}
		})
	}
}

func TestDoPropagatesErrorsAndPanics(t *testing.T) {
	testenv.Privileged(t)
	netnstest.CheckLeaks(t)
	ns := netnstest.New(t, "do")
	sentinel := errors.New("sentinel")
	if err := ns.Do(func() error { return sentinel }); !errors.Is(err, sentinel) {
		t.Errorf("Do error = %v, want sentinel", err)
	}
	func() {
		defer func() {
			if p := recover(); p != "boom" {
				t.Errorf("recovered %v, want boom", p)
			}
		}()
		ns.Do(func() error { panic("boom") })
		t.Error("Do did not re-raise the panic")
	}()
	// A function that ends its goroutine (t.Fatal does) cannot return an
	// error: Do reports one, and the thread, stuck inside, is discarded.
	if err := ns.Do(func() error { runtime.Goexit(); return nil }); err == nil {
		t.Error("Do after runtime.Goexit returned no error")
	}
	// CheckLeaks verifies at cleanup that every thread is home.
}

func TestConcurrentDoStaysApart(t *testing.T) {
	testenv.Privileged(t)
	netnstest.CheckLeaks(t)
	spaces := []*netns.NS{netnstest.New(t, "a"), netnstest.New(t, "b"), netnstest.New(t, "c")}
	var wg sync.WaitGroup
	errs := make(chan error, 300)
	for i := range 300 {
		ns := spaces[i%len(spaces)]
		wg.Go(func() {
			err := ns.Do(func() error {
				target, err := os.Readlink("/proc/thread-self/ns/net")
				if err != nil {
					return err
				}
				if want := fmt.Sprintf("net:[%d]", ns.Inode()); target != want {
					return fmt.Errorf("inside %s: thread in %s, want %s", ns, target, want)
				}
				return nil
			})
			if err != nil {
				errs <- err
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func TestSysctls(t *testing.T) {
	testenv.Privileged(t)
	netnstest.CheckLeaks(t)
	// What a new namespace starts with depends on the host (with
	// net.core.devconf_inherit_init_net=0 it copies the initial
	// namespace's ip_forward, which Docker, for one, turns on): set the
	// opposite, and check that it holds there and nowhere else.
	plain := netnstest.New(t, "plain")
	initial, err := plain.Sysctl("net/ipv4/ip_forward")
	if err != nil {
		t.Fatal(err)
	}
	flipped := map[string]string{"0": "1", "1": "0"}[initial]
	if flipped == "" {
		t.Fatalf("net/ipv4/ip_forward = %q in a new namespace", initial)
	}
	ns := netnstest.New(t, "sysctl",
		netns.Sysctl{Path: "net/ipv4/ip_forward", Value: flipped},
		netns.Sysctl{Path: "net/ipv4/conf/default/rp_filter", Value: "0"},
	)
	for _, tc := range []struct {
		ns   *netns.NS
		path string
		want string
	}{
		{ns, "net/ipv4/ip_forward", flipped},
		{ns, "net/ipv4/conf/default/rp_filter", "0"},
		{plain, "net/ipv4/ip_forward", initial},
	} {
		t.Run(tc.ns.Name()+"/"+tc.path, func(t *testing.T) {
			got, err := tc.ns.Sysctl(tc.path)
			if err != nil {
				t.Fatal(err)
			}
			if got != tc.want {
				t.Errorf("%s = %q, want %q", tc.path, got, tc.want)
			}
		})
	}
	if err := plain.SetSysctls(netns.Sysctl{Path: "net/ipv4/conf/lo/rp_filter", Value: "2"}); err != nil {
		t.Fatal(err)
	}
	if got, err := plain.Sysctl("net/ipv4/conf/lo/rp_filter"); err != nil || got != "2" {
		t.Errorf("lo rp_filter = %q, %v; want 2", got, err)
	}
	for _, bad := range []string{"", "kernel/hostname", "net/../kernel/hostname", "/net/ipv4/ip_forward", "net//ipv4", "net/ipv4/conf/nosuchdev/rp_filter"} {
		t.Run("reject "+bad, func(t *testing.T) {
			if err := plain.SetSysctls(netns.Sysctl{Path: bad, Value: "1"}); err == nil {
				t.Errorf("SetSysctls(%q) succeeded", bad)
			}
			if _, err := netns.New("bad", netns.Sysctl{Path: bad, Value: "1"}); err == nil {
				t.Errorf("New with sysctl %q succeeded", bad)
			}
		})
	}
}

func TestSocketsLiveInTheirNamespace(t *testing.T) {
	testenv.Privileged(t)
	netnstest.CheckLeaks(t)
	ns := netnstest.New(t, "sock")
	l, err := ns.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			io.Copy(c, c)
			c.Close()
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()

	// From the host the port is someone else's loopback: nothing listens.
	if c, err := (&net.Dialer{}).DialContext(ctx, "tcp4", l.Addr().String()); err == nil {
		c.Close()
		t.Fatalf("dial %s from the host namespace succeeded", l.Addr())
	}
	c, err := ns.Dial(ctx, nil, "tcp4", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4)
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "ping" {
		t.Fatalf("echo = %q, %v", buf, err)
	}

	pc, err := ns.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	u, err := ns.Dial(ctx, nil, "udp4", pc.LocalAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	if _, err := u.Write([]byte("dgram")); err != nil {
		t.Fatal(err)
	}
	pc.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, _, err := pc.ReadFrom(buf[:cap(buf)])
	if err != nil || n != 4 {
		t.Fatalf("udp read = %d, %v", n, err)
	}
}

// TestCloseDestroysTheNamespace proves Close drops every reference the
// package holds (descriptor, netlink socket): the kernel then dismantles the
// namespace, which takes a veth end in another namespace with it.
func TestCloseDestroysTheNamespace(t *testing.T) {
	testenv.Privileged(t)
	netnstest.CheckLeaks(t)
	keep := netnstest.New(t, "keep")
	gone, err := netns.New("gone-" + netnstest.Suffix())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { gone.Close() })
	h, err := keep.Handle()
	if err != nil {
		t.Fatal(err)
	}
	veth := &netlink.Veth{LinkAttrs: netlink.NewLinkAttrs(), PeerName: "peer0", PeerNamespace: netlink.NsFd(gone.Fd())}
	veth.Name = "mbgone0"
	if err := h.LinkAdd(veth); err != nil {
		t.Fatal(err)
	}
	if _, err := h.LinkByName("mbgone0"); err != nil {
		t.Fatal(err)
	}
	if err := gone.Close(); err != nil {
		t.Fatal(err)
	}
	netnstest.Eventually(t, 10*time.Second, func() error {
		if _, err := h.LinkByName("mbgone0"); err == nil {
			return errors.New("veth end still present after its peer namespace was closed")
		}
		return nil
	})
}

func TestHostIsTheProcessNamespace(t *testing.T) {
	testenv.Privileged(t)
	netnstest.CheckLeaks(t)
	h, err := netns.Host()
	if err != nil {
		t.Fatal(err)
	}
	hostIno, _ := netns.HostInode()
	if h.Inode() != hostIno {
		t.Errorf("Host inode %d, want %d", h.Inode(), hostIno)
	}
	if err := h.Close(); err != nil {
		t.Fatal(err)
	}
	// Closing a borrowed namespace must not disturb the process.
	if err := h.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := netlink.LinkByName("lo"); err != nil {
		t.Fatalf("host loopback after closing Host(): %v", err)
	}
}

// BenchmarkNew measures what a simulated pod or node namespace costs to
// create (loopback up, netlink socket open) and to close.
func BenchmarkNew(b *testing.B) {
	testenv.Privileged(b)
	var spaces []*netns.NS
	for b.Loop() {
		ns, err := netns.New("bench")
		if err != nil {
			b.Fatal(err)
		}
		spaces = append(spaces, ns)
	}
	b.ReportMetric(float64(b.Elapsed().Microseconds())/1000/float64(len(spaces)), "ms/ns")
	start := time.Now()
	for _, ns := range spaces {
		if err := ns.Close(); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(time.Since(start).Microseconds())/1000/float64(len(spaces)), "close-ms/ns")
}
