// Package netnstest gives privileged tests fresh network namespaces that are
// released at cleanup, even when the test fails, and checks that a test left
// nothing behind: no namespace descriptor, no netlink or other socket, no
// thread outside the process's namespace, no bind mount, no stray link in the
// process's namespace.
package netnstest

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/meshbed/meshbed/datapath/netns"
	"github.com/vishvananda/netlink"
)

var counter atomic.Uint64

// Suffix is unique within the machine for the life of this process: the
// process ID and a counter. Names built from it never collide with a
// parallel test run.
func Suffix() string {
	return fmt.Sprintf("%d-%d", os.Getpid(), counter.Add(1))
}

// New creates an anonymous namespace labelled label-<suffix> and closes it
// at cleanup.
func New(tb testing.TB, label string, sysctls ...netns.Sysctl) *netns.NS {
	tb.Helper()
	ns, err := netns.New(label+"-"+Suffix(), sysctls...)
	if err != nil {
		tb.Fatalf("create namespace: %v", err)
	}
	tb.Cleanup(func() {
		if err := ns.Close(); err != nil {
			tb.Errorf("close namespace %s: %v", ns, err)
		}
	})
	return ns
}

// NewNamed creates a namespace bind-mounted at netns.RunDir/mbtest-label-<suffix>
// and removes it at cleanup.
func NewNamed(tb testing.TB, label string, sysctls ...netns.Sysctl) *netns.NS {
	tb.Helper()
	ns, err := netns.NewNamed("mbtest-"+label+"-"+Suffix(), sysctls...)
	if err != nil {
		tb.Fatalf("create named namespace: %v", err)
	}
	tb.Cleanup(func() {
		if err := ns.Close(); err != nil {
			tb.Errorf("close namespace %s: %v", ns, err)
		}
	})
	return ns
}

// snapshot is what the process holds that a test could leak.
type snapshot struct {
	nsFds   map[string]bool // readlink targets "net:[inode]"
	sockets int
	links   map[string]bool // links in the process namespace
	mounts  map[string]bool // entries in netns.RunDir
}

func take() (snapshot, error) {
	s := snapshot{nsFds: map[string]bool{}, links: map[string]bool{}, mounts: map[string]bool{}}
	fds, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return s, err
	}
	for _, e := range fds {
		target, err := os.Readlink(filepath.Join("/proc/self/fd", e.Name()))
		if err != nil {
			continue // the directory descriptor of ReadDir itself
		}
		switch {
		case strings.HasPrefix(target, "net:["):
			s.nsFds[target] = true
		case strings.HasPrefix(target, "socket:["):
			s.sockets++
		}
	}
	// A dump that raced a link change elsewhere in the machine (other
	// tests, Docker) is interrupted, not wrong: list again.
	links, err := netlink.LinkList()
	for try := 0; errors.Is(err, netlink.ErrDumpInterrupted) && try < 10; try++ {
		links, err = netlink.LinkList()
	}
	if err != nil {
		return s, fmt.Errorf("list links: %w", err)
	}
	for _, l := range links {
		s.links[l.Attrs().Name] = true
	}
	entries, err := os.ReadDir(netns.RunDir)
	if err != nil && !os.IsNotExist(err) {
		return s, err
	}
	for _, e := range entries {
		s.mounts[e.Name()] = true
	}
	return s, nil
}

// foreignThreads lists threads of this process that are not in the
// process's own namespace.
func foreignThreads() ([]string, error) {
	hostIno, err := netns.HostInode()
	if err != nil {
		return nil, err
	}
	want := "net:[" + strconv.FormatUint(hostIno, 10) + "]"
	tasks, err := os.ReadDir("/proc/self/task")
	if err != nil {
		return nil, err
	}
	var bad []string
	for _, t := range tasks {
		target, err := os.Readlink(filepath.Join("/proc/self/task", t.Name(), "ns/net"))
		if err != nil {
			continue // the thread exited meanwhile
		}
		if target != want {
			bad = append(bad, t.Name()+"→"+target)
		}
	}
	return bad, nil
}

// pidTag marks names made from Suffix by this process: other processes
// (parallel test binaries) may create namespaces of their own meanwhile.
var pidTag = fmt.Sprintf("-%d-", os.Getpid())

// ours reports whether a link name is one the datapath packages create: only
// those are checked in the process namespace, where other processes may add
// links of their own meanwhile.
func ours(name string) bool {
	for _, p := range []string{"lxc", "meshbed", "mb"} {
		if strings.HasPrefix(name, p) {
			return true
		}
	}
	return false
}

// CheckLeaks records what the process holds now and, at cleanup, fails the
// test if anything was added and not released. Call it first in the test so
// that its cleanup runs after every other one.
func CheckLeaks(tb testing.TB) {
	tb.Helper()
	// The package keeps one descriptor of the process namespace for good;
	// open it before the snapshot so it is not mistaken for a leak.
	if _, err := netns.HostInode(); err != nil {
		tb.Fatalf("leak check: %v", err)
	}
	before, err := take()
	if err != nil {
		tb.Fatalf("leak check snapshot: %v", err)
	}
	tb.Cleanup(func() {
		// Sockets close synchronously, but a goroutine of the test may
		// still be finishing its last Close: give it a moment.
		deadline := time.Now().Add(5 * time.Second)
		for {
			problems, err := leaks(before)
			if err != nil {
				tb.Errorf("leak check: %v", err)
				return
			}
			if len(problems) == 0 {
				return
			}
			if time.Now().After(deadline) {
				for _, p := range problems {
					tb.Errorf("leak: %s", p)
				}
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
	})
}

// leaks lists what the process holds now that it did not hold at before.
func leaks(before snapshot) ([]string, error) {
	var problems []string
	after, err := take()
	if err != nil {
		return nil, err
	}
	for fd := range after.nsFds {
		if !before.nsFds[fd] {
			problems = append(problems, "namespace descriptor "+fd+" still open")
		}
	}
	if after.sockets > before.sockets {
		problems = append(problems, fmt.Sprintf("%d more sockets open than before the test", after.sockets-before.sockets))
	}
	for l := range after.links {
		if !before.links[l] && ours(l) {
			problems = append(problems, "link "+l+" left in the process namespace")
		}
	}
	for m := range after.mounts {
		if !before.mounts[m] && strings.Contains(m, pidTag) {
			problems = append(problems, "named namespace "+m+" left in "+netns.RunDir)
		}
	}
	threads, err := foreignThreads()
	if err != nil {
		return nil, err
	}
	for _, t := range threads {
		problems = append(problems, "thread "+t+" outside the process namespace")
	}
	return problems, nil
}

// Eventually polls cond until it returns nil or timeout passes, then fails
// the test with cond's last error.
func Eventually(tb testing.TB, timeout time.Duration, cond func() error) {
	tb.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			tb.Fatalf("condition not met within %v: %v", timeout, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
