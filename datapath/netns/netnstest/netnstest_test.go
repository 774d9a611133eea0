package netnstest

import (
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/meshbed/meshbed/datapath/netns"
	"github.com/meshbed/meshbed/internal/testenv"
	vnetns "github.com/vishvananda/netns"
)

// TestLeaksAreFound: each kind of leak CheckLeaks looks for is reported
// while it exists and no longer once released.
func TestLeaksAreFound(t *testing.T) {
	testenv.Privileged(t)
	if _, err := netns.HostInode(); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		want string
		leak func(t *testing.T) (release func())
	}{
		{"anonymous namespace", "namespace descriptor", func(t *testing.T) func() {
			ns, err := netns.New("leak")
			if err != nil {
				t.Fatal(err)
			}
			return func() { ns.Close() }
		}},
		{"named namespace", "named namespace", func(t *testing.T) func() {
			ns, err := netns.NewNamed("mbtest-leak-" + Suffix())
			if err != nil {
				t.Fatal(err)
			}
			return func() { ns.Close() }
		}},
		{"thread left inside", "outside the process namespace", func(t *testing.T) func() {
			ns, err := netns.New("leak")
			if err != nil {
				t.Fatal(err)
			}
			entered, leave := make(chan error), make(chan struct{})
			home, err := vnetns.Get()
			if err != nil {
				t.Fatal(err)
			}
			go func() {
				runtime.LockOSThread()
				entered <- vnetns.Set(vnetns.NsHandle(ns.Fd()))
				<-leave
				if vnetns.Set(home) == nil {
					runtime.UnlockOSThread()
				}
				home.Close()
			}()
			if err := <-entered; err != nil {
				t.Fatal(err)
			}
			return func() { close(leave); ns.Close() }
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before, err := take()
			if err != nil {
				t.Fatal(err)
			}
			release := tc.leak(t)
			problems, err := leaks(before)
			if err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(strings.Join(problems, "\n"), tc.want) {
				t.Errorf("leaks = %q, want one mentioning %q", problems, tc.want)
			}
			release()
			Eventually(t, 5*time.Second, func() error {
				problems, err := leaks(before)
				if err == nil && len(problems) > 0 {
					return &leakError{problems}
				}
				return err
			})
		})
	}
}

type leakError struct{ problems []string }

func (e *leakError) Error() string { return strings.Join(e.problems, "; ") }
