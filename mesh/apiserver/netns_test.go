package apiserver

import (
	"context"
	"fmt"
	"net"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netns"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"

	"github.com/meshbed/meshbed/internal/testenv"
	"github.com/meshbed/meshbed/mesh/pki"
	"github.com/meshbed/meshbed/mesh/wire"
)

// inNS runs fn on a thread inside ns and brings the thread back. If it
// cannot come back, the thread stays locked and dies with its goroutine.
func inNS(ns netns.NsHandle, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			errc <- err
			return
		}
		defer orig.Close()
		if err := netns.Set(ns); err != nil {
			runtime.UnlockOSThread()
			errc <- err
			return
		}
		err = fn()
		if serr := netns.Set(orig); serr != nil {
			errc <- fmt.Errorf("return to the original namespace: %w", serr)
			return // thread stays locked: the runtime discards it
		}
		runtime.UnlockOSThread()
		errc <- err
	}()
	return <-errc
}

// newNS creates a network namespace with loopback up, without entering it
// on the caller's thread.
func newNS(t *testing.T) netns.NsHandle {
	t.Helper()
	var ns netns.NsHandle
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			errc <- err
			return
		}
		defer orig.Close()
		ns, err = netns.New() // enters it
		if err == nil {
			err = loopbackUp()
		}
		if serr := netns.Set(orig); serr != nil {
			errc <- serr
			return
		}
		runtime.UnlockOSThread()
		errc <- err
	}()
	if err := <-errc; err != nil {
		t.Fatalf("create network namespace: %v", err)
	}
	t.Cleanup(func() { ns.Close() })
	return ns
}

// loopbackUp sets IFF_UP on lo of the current thread's namespace with an
// ioctl (the control plane does not use netlink).
func loopbackUp() error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq("lo")
	if err != nil {
		return err
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return err
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
	return unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr)
}

// TestIntegrationServeInNetns starts the apiserver from a thread inside a
// network namespace, as the simulator does, and checks that it serves
// there (and only there) while its own client works through the socket.
func TestIntegrationServeInNetns(t *testing.T) {
	testenv.Privileged(t)
	if testing.Short() {
		t.Skip("integration test")
	}
	ns := newNS(t)
	m := newMesh(t)
	e := newEnv(cluster1()...)
	s, err := New(Config{
		ClusterName: "cluster1", ClusterID: 1, Kube: e.kube, Dynamic: e.dyn,
		ListenAddress: "127.0.0.1:0", TLSDir: m.dir, RemoteClusters: []string{"cluster2"},
		TickMs: 10, ElectionMs: 50,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := inNS(ns, func() error { return s.Start(ctx) }); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		<-done
		s.Close()
	})
	select {
	case <-s.Synced():
	case err := <-done:
		t.Fatalf("Run: %v", err)
	case <-time.After(20 * time.Second):
		t.Fatal("not synced")
	}
	fctx, fcancel := context.WithTimeout(ctx, 10*time.Second)
	defer fcancel()
	if err := s.Flush(fctx); err != nil {
		t.Fatal(err)
	}
	// The export went through the local socket from outside the namespace.
	if _, ok := get(t, s, wire.ClusterConfigKey("cluster1")); !ok {
		t.Fatal("no cluster-config")
	}
	addr := strings.TrimPrefix(s.Endpoints()[0], "https://")
	// Not served in the test's own namespace...
	if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
		c.Close()
		t.Fatalf("%s reachable outside the apiserver's namespace", addr)
	}
	// ...but in its namespace, to a remote reader.
	dial := func(ctx context.Context, addr string) (net.Conn, error) {
		var c net.Conn
		err := inNS(ns, func() (err error) {
			c, err = (&net.Dialer{}).DialContext(ctx, "tcp", addr)
			return err
		})
		return c, err
	}
	c, err := clientv3.New(clientv3.Config{
		Endpoints:   s.Endpoints(),
		TLS:         pki.ClientTLSConfig(m.ca.Pool(), m.pair(t, pki.RemoteUser("cluster2")), ""),
		DialTimeout: 5 * time.Second,
		DialOptions: []grpc.DialOption{grpc.WithContextDialer(dial)},
		Logger:      zap.NewNop(),
	})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	rctx, rcancel := context.WithTimeout(ctx, 5*time.Second)
	defer rcancel()
	resp, err := c.Get(rctx, wire.NodesPrefix+"/", clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Kvs) != 2 {
		t.Fatalf("remote reader in the namespace sees %d nodes, want 2", len(resp.Kvs))
	}
}
