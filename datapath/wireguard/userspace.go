package wireguard

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"

	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/ipc"
	"golang.zx2c4.com/wireguard/tun"

	"github.com/meshbed/meshbed/datapath/netns"
)

// uapiDir is where wireguard-go puts UAPI sockets and wgctrl looks for them.
const uapiDir = "/var/run/wireguard"

var uapiSeq atomic.Uint64

// userDevice is wireguard-go running in this process over a TUN device in
// the node's namespace, listening on a UAPI socket that wgctrl configures.
type userDevice struct {
	dev      *device.Device
	uapi     net.Listener
	uapiName string
	wg       sync.WaitGroup
}

func startUserspace(cfg Config, log *slog.Logger) (*userDevice, error) {
	if err := tunAvailable(); err != nil {
		return nil, err
	}
	h, err := cfg.NS.Handle()
	if err != nil {
		return nil, err
	}
	// A TUN device goes with the process that made it; a device of this
	// name is a leftover of another kind (a kernel device of an earlier
	// configuration).
	if link, err := h.LinkByName(DeviceName); err == nil {
		if err := h.LinkDel(link); err != nil {
			return nil, fmt.Errorf("replace %s device: %w", link.Type(), err)
		}
	}
	var tdev tun.Device
	err = cfg.NS.Do(func() (err error) {
		tdev, err = tun.CreateTUN(DeviceName, cfg.MTU)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("create TUN device: %w", err)
	}
	logger := &device.Logger{
		Verbosef: func(format string, args ...any) { log.Debug("wireguard-go", "msg", fmt.Sprintf(format, args...)) },
		Errorf: func(format string, args ...any) {
			log.Debug("wireguard-go", "msg", fmt.Sprintf(format, args...))
		},
	}
	u := &userDevice{
		// Every UAPI socket of the host shares one directory: the name is
		// unique per process and device.
		uapiName: fmt.Sprintf("meshbed-%d-%d", os.Getpid(), uapiSeq.Add(1)),
	}
	u.dev = device.NewDevice(fixedMTU{tdev, cfg.MTU}, &nsBind{Bind: conn.NewStdNetBind(), ns: cfg.NS}, logger)
	f, err := ipc.UAPIOpen(u.uapiName)
	if err != nil {
		u.dev.Close()
		return nil, fmt.Errorf("UAPI socket: %w", err)
	}
	// Not ipc.UAPIListen: it adds an inotify instance per device to notice
	// the socket's removal, and inotify instances are few per user (128 by
	// default, shared with every other process): a simulated mesh of
	// dozens of nodes runs out. The socket is ours; Close removes it.
	u.uapi, err = net.FileListener(f)
	f.Close()
	if err != nil {
		u.dev.Close()
		_ = os.Remove(filepath.Join(uapiDir, u.uapiName+".sock"))
		return nil, fmt.Errorf("UAPI socket: %w", err)
	}
	if ul, ok := u.uapi.(*net.UnixListener); ok {
		ul.SetUnlinkOnClose(true)
	}
	u.wg.Go(func() {
		for {
			c, err := u.uapi.Accept()
			if err != nil {
				return
			}
			u.wg.Go(func() { u.dev.IpcHandle(c) })
		}
	})
	if err := u.dev.Up(); err != nil {
		u.close()
		return nil, fmt.Errorf("device up: %w", err)
	}
	return u, nil
}

func (u *userDevice) close() error {
	err := u.uapi.Close()
	u.dev.Close()
	u.wg.Wait()
	if rerr := os.Remove(filepath.Join(uapiDir, u.uapiName+".sock")); rerr != nil && !errors.Is(rerr, os.ErrNotExist) {
		err = errors.Join(err, rerr)
	}
	return err
}

// fixedMTU reports the configured MTU: wireguard-go asks the TUN device for
// its MTU by interface name from whatever thread it runs on, which is not in
// the node's namespace.
type fixedMTU struct {
	tun.Device
	mtu int
}

func (f fixedMTU) MTU() (int, error) { return f.mtu, nil }

// nsBind opens wireguard-go's UDP sockets inside the node's namespace:
// the device (re)opens them from its own goroutines (device up, a port or
// mark change over UAPI), and a socket belongs to the namespace of the
// thread that creates it.
type nsBind struct {
	conn.Bind
	ns *netns.NS
}

func (b *nsBind) Open(port uint16) (fns []conn.ReceiveFunc, actual uint16, err error) {
	err = b.ns.Do(func() (err error) {
		fns, actual, err = b.Bind.Open(port)
		return err
	})
	return fns, actual, err
}
