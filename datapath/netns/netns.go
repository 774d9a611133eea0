// Package netns creates, enters and closes Linux network namespaces from
// inside one Go process, cheaply enough that the simulator can give every
// virtual node and every virtual pod its own namespace.
//
// Three rules keep the process sane:
//
//   - No caller's OS thread ever changes namespace. Code that must run inside
//     a namespace (creating it, writing /proc/sys, opening sockets) runs on a
//     dedicated goroutine locked to its thread; the thread goes back to the
//     process's own namespace before it is unlocked, and if that fails the
//     thread is never unlocked, so the Go runtime destroys it rather than reuse
//     it in the wrong namespace.
//   - Configuration goes through a netlink socket opened inside the namespace
//     once (NS.Handle), so configuring a namespace does not enter it at all.
//   - A namespace lives exactly as long as its NS: Close releases the file
//     descriptor, the netlink socket and, for named namespaces, the bind
//     mount, after which the kernel dismantles the namespace and every device
//     in it (a veth pair dies with either end).
//
// Nothing here forks `ip`: a namespace plus a veth pair costs ≈1–2 ms in
// process, against ≈5 ms per forked command.
package netns

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
	vnetns "github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// RunDir is where named namespaces are bind-mounted, the directory
// `ip netns` reads, so a named namespace can be inspected by hand.
const RunDir = "/run/netns"

// netlinkTimeout bounds every netlink request made through an NS's handle so
// that a wedged kernel answer surfaces as an error instead of a hung agent.
const netlinkTimeout = 10 * time.Second

// ErrClosed is returned by every method of an NS after Close. It means the
// caller kept using a namespace it had already released: a bug in the caller.
var ErrClosed = errors.New("network namespace is closed")

// NS is an open network namespace. Its methods are safe for concurrent use,
// except Close, which must not race with the others.
type NS struct {
	name string
	// mount is the bind mount that keeps a named namespace alive, removed
	// by Close; empty for anonymous and borrowed namespaces.
	mount string
	// borrowed namespaces (Open, Host) exist independently of this process;
	// Close only drops our references.
	borrowed bool
	fd       int
	ino      uint64

	mu     sync.Mutex
	handle *netlink.Handle
	closed bool
}

// host is the namespace the process started in: every thread that leaves a
// namespace returns here.
var host struct {
	once sync.Once
	fd   int
	ino  uint64
	err  error
}

func hostNS() (int, error) {
	host.once.Do(func() {
		// /proc/self is the main thread's view: the process's namespace
		// unless someone moved the main thread itself, which nothing in a
		// Go program that uses this package should do.
		h, err := vnetns.GetFromPath("/proc/self/ns/net")
		if err != nil {
			host.err = fmt.Errorf("open the process network namespace: %w", err)
			return
		}
		host.fd = int(h)
		host.ino, host.err = inode(host.fd)
	})
	return host.fd, host.err
}

// HostInode is the inode of the namespace the process started in, the one
// every thread returns to.
func HostInode() (uint64, error) {
	if _, err := hostNS(); err != nil {
		return 0, err
	}
	return host.ino, nil
}

// New creates an anonymous network namespace that lives until Close. name is
// only a label for errors and String. The loopback device is up and sysctls
// (paths under /proc/sys, such as "net/ipv4/ip_forward") are written inside
// the namespace before New returns, at no extra cost since the creating
// thread is already there.
func New(name string, sysctls ...Sysctl) (*NS, error) {
	return create(name, "", sysctls)
}

// NewNamed creates a network namespace bind-mounted at RunDir/name, where
// `ip netns exec name ...` and other processes can find it. Close unmounts
// it. It costs a mount and an unmount more than New, so the simulator uses
// it only when asked to keep a mesh inspectable.
func NewNamed(name string, sysctls ...Sysctl) (*NS, error) {
	if err := checkName(name); err != nil {
		return nil, err
	}
	return create(name, filepath.Join(RunDir, name), sysctls)
}

func checkName(name string) error {
	if name == "" || name == "." || name == ".." || len(name) > 255 {
		return fmt.Errorf("invalid namespace name %q", name)
	}
	for _, r := range name {
		if r == '/' || r == 0 {
			return fmt.Errorf("invalid namespace name %q: contains %q", name, r)
		}
	}
	return nil
}

func create(name, mount string, sysctls []Sysctl) (*NS, error) {
	for _, s := range sysctls {
		if err := checkSysctlPath(s.Path); err != nil {
			return nil, fmt.Errorf("create network namespace %q: %w", name, err)
		}
	}
	if mount != "" {
		if err := os.MkdirAll(RunDir, 0o755); err != nil {
			return nil, fmt.Errorf("create network namespace %q: %w", name, err)
		}
		// Reserve the name first: O_EXCL makes two creators of one name
		// fail cleanly instead of stacking mounts.
		f, err := os.OpenFile(mount, os.O_RDONLY|os.O_CREATE|os.O_EXCL, 0o444)
		if err != nil {
			return nil, fmt.Errorf("create network namespace %q: %w", name, err)
		}
		f.Close()
	}
	ns := &NS{name: name, mount: mount, fd: -1}
	err := onThread(-1, func() error {
		h, err := vnetns.New()
		if err != nil {
			return fmt.Errorf("unshare: %w", err)
		}
		ns.fd = int(h)
		if ns.ino, err = inode(ns.fd); err != nil {
			return err
		}
		if mount != "" {
			if err := unix.Mount("/proc/thread-self/ns/net", mount, "", unix.MS_BIND, ""); err != nil {
				return fmt.Errorf("bind-mount at %s: %w", mount, err)
			}
		}
		if err := writeSysctls(sysctls); err != nil {
			return err
		}
		// The netlink socket is opened here, inside, so the namespace is
		// configurable without ever entering it again.
		if ns.handle, err = netlink.NewHandle(unix.NETLINK_ROUTE); err != nil {
			return fmt.Errorf("open netlink socket: %w", err)
		}
		if err := ns.handle.SetSocketTimeout(netlinkTimeout); err != nil {
			return fmt.Errorf("set netlink timeout: %w", err)
		}
		lo, err := ns.handle.LinkByName("lo")
		if err != nil {
			return fmt.Errorf("find loopback: %w", err)
		}
		if err := ns.handle.LinkSetUp(lo); err != nil {
			return fmt.Errorf("bring loopback up: %w", err)
		}
		return nil
	})
	if err != nil {
		ns.release()
		if mount != "" {
			// A failed mount leaves only the placeholder file.
			_ = unix.Unmount(mount, unix.MNT_DETACH)
			_ = os.Remove(mount)
		}
		return nil, fmt.Errorf("create network namespace %q: %w", name, err)
	}
	return ns, nil
}

// Open borrows an existing namespace by path, such as the one a container
// runtime hands a CNI plugin or a RunDir entry. Close releases only this
// process's references; the namespace lives on as long as its owner keeps it.
func Open(path string) (*NS, error) {
	h, err := vnetns.GetFromPath(path)
	if err != nil {
		return nil, fmt.Errorf("open network namespace %s: %w", path, err)
	}
	return borrow(path, int(h))
}

// Host borrows the namespace the process started in, for callers (the agent
// in a Kind node) whose node namespace is their own.
func Host() (*NS, error) {
	fd, err := hostNS()
	if err != nil {
		return nil, err
	}
	dup, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("duplicate host namespace descriptor: %w", err)
	}
	return borrow("host", dup)
}

func borrow(name string, fd int) (*NS, error) {
	ns := &NS{name: name, fd: fd, borrowed: true}
	var err error
	if ns.ino, err = inode(fd); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("open network namespace %s: %w", name, err)
	}
	if err := onThread(fd, func() error {
		var err error
		if ns.handle, err = netlink.NewHandle(unix.NETLINK_ROUTE); err != nil {
			return fmt.Errorf("open netlink socket: %w", err)
		}
		return ns.handle.SetSocketTimeout(netlinkTimeout)
	}); err != nil {
		ns.release()
		return nil, fmt.Errorf("open network namespace %s: %w", name, err)
	}
	return ns, nil
}

// String is the label given at creation, for messages.
func (ns *NS) String() string { return ns.name }

// Name is the label given at creation.
func (ns *NS) Name() string { return ns.name }

// Fd is the namespace file descriptor, for netlink.NsFd (moving links in)
// and for setns. It is valid until Close.
func (ns *NS) Fd() int { return ns.fd }

// Inode identifies the namespace: two NS with the same inode are the same
// namespace.
func (ns *NS) Inode() uint64 { return ns.ino }

// Path is a path other processes can open to join the namespace: the bind
// mount of a named namespace, otherwise this process's descriptor under
// /proc, valid until Close.
func (ns *NS) Path() string {
	if ns.mount != "" {
		return ns.mount
	}
	return fmt.Sprintf("/proc/%d/fd/%d", os.Getpid(), ns.fd)
}

// Handle is the NS's netlink handle, its socket opened inside the namespace:
// configure the namespace through it rather than entering it. It is shared
// and owned by the NS; do not close it.
func (ns *NS) Handle() (*netlink.Handle, error) {
	ns.mu.Lock()
	defer ns.mu.Unlock()
	if ns.closed {
		return nil, fmt.Errorf("netlink handle for %q: %w", ns.name, ErrClosed)
	}
	return ns.handle, nil
}

// Do runs fn on an OS thread that is inside the namespace for the duration
// of the call and returns fn's error. The caller's thread never moves. Only
// fn's own goroutine runs inside: goroutines it starts run elsewhere, and so
// does name resolution, so give sockets literal IP addresses. A panic in fn
// is re-raised in the caller.
func (ns *NS) Do(fn func() error) error {
	if ns.isClosed() {
		return fmt.Errorf("enter network namespace %q: %w", ns.name, ErrClosed)
	}
	return onThread(ns.fd, fn)
}

// Listen opens a listener inside the namespace; it keeps working from any
// goroutine, since a socket stays in the namespace it was created in.
func (ns *NS) Listen(network, address string) (net.Listener, error) {
	var l net.Listener
	err := ns.Do(func() (err error) {
		l, err = net.Listen(network, address)
		return err
	})
	return l, err
}

// ListenPacket opens a packet socket (UDP) inside the namespace.
func (ns *NS) ListenPacket(network, address string) (net.PacketConn, error) {
	var c net.PacketConn
	err := ns.Do(func() (err error) {
		c, err = net.ListenPacket(network, address)
		return err
	})
	return c, err
}

// Dial connects from inside the namespace with d (nil means a zero Dialer),
// for example as the dialer of an etcd or gRPC client that must live in a
// simulated node. The address must be a literal IP and port.
func (ns *NS) Dial(ctx context.Context, d *net.Dialer, network, address string) (net.Conn, error) {
	if d == nil {
		d = &net.Dialer{}
	}
	var c net.Conn
	err := ns.Do(func() (err error) {
		c, err = d.DialContext(ctx, network, address)
		return err
	})
	return c, err
}

// Close releases the namespace: the netlink socket, the descriptor and, for
// a named namespace, its bind mount. Once nothing else holds it (a process,
// a socket, another descriptor), the kernel destroys it asynchronously with
// every device inside. Close is idempotent.
func (ns *NS) Close() error {
	ns.mu.Lock()
	if ns.closed {
		ns.mu.Unlock()
		return nil
	}
	ns.closed = true
	ns.mu.Unlock()
	err := ns.release()
	if ns.mount != "" {
		if uerr := unix.Unmount(ns.mount, unix.MNT_DETACH); uerr != nil && !errors.Is(uerr, unix.EINVAL) && !errors.Is(uerr, unix.ENOENT) {
			err = errors.Join(err, fmt.Errorf("unmount %s: %w", ns.mount, uerr))
		}
		if rerr := os.Remove(ns.mount); rerr != nil && !errors.Is(rerr, os.ErrNotExist) {
			err = errors.Join(err, rerr)
		}
	}
	if err != nil {
		return fmt.Errorf("close network namespace %q: %w", ns.name, err)
	}
	return nil
}

func (ns *NS) release() error {
	if ns.handle != nil {
		ns.handle.Close()
		ns.handle = nil
	}
	if ns.fd >= 0 {
		fd := ns.fd
		ns.fd = -1
		if err := unix.Close(fd); err != nil {
			return fmt.Errorf("close descriptor: %w", err)
		}
	}
	return nil
}

func (ns *NS) isClosed() bool {
	ns.mu.Lock()
	defer ns.mu.Unlock()
	return ns.closed
}

// onThread runs fn on a fresh goroutine locked to its OS thread, first
// entering the namespace target (unless target is negative: fn then moves
// the thread itself, as New does by unsharing). Afterwards, however fn ends
// (return, panic, Goexit), the thread returns to the process's namespace —
// the one recorded at start-up, not whatever the thread happened to be in,
// so a thread some library left astray is healed rather than trusted. If
// returning fails the goroutine exits still locked, and the runtime discards
// the thread instead of reusing it.
func onThread(target int, fn func() error) error {
	home, err := hostNS()
	if err != nil {
		return err
	}
	type result struct {
		err      error
		panicked bool
		value    any
	}
	done := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		var r result
		entered, returned := false, false
		defer func() {
			if entered && !returned && !r.panicked {
				// fn ended its goroutine with runtime.Goexit (t.Fatal
				// does): it cannot return an error, so report one.
				r.err = errors.New("function exited its goroutine (runtime.Goexit) inside the namespace")
			}
			// Unlock only once the thread is home. A goroutine that ends
			// locked takes its thread with it, which is the right fate for
			// a thread stuck in the wrong namespace.
			if err := vnetns.Set(vnetns.NsHandle(home)); err != nil {
				r.err = errors.Join(r.err, fmt.Errorf("return thread to the process namespace (thread discarded): %w", err))
			} else {
				runtime.UnlockOSThread()
			}
			done <- r
		}()
		if target >= 0 {
			if err := vnetns.Set(vnetns.NsHandle(target)); err != nil {
				r.err = fmt.Errorf("setns: %w", err)
				return
			}
		}
		entered = true
		func() {
			defer func() {
				if p := recover(); p != nil {
					r.panicked, r.value = true, p
				}
			}()
			r.err = fn()
		}()
		returned = true
	}()
	r := <-done
	if r.panicked {
		panic(r.value)
	}
	return r.err
}

func inode(fd int) (uint64, error) {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return 0, fmt.Errorf("stat namespace descriptor: %w", err)
	}
	return st.Ino, nil
}
