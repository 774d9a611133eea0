package node

import (
	"errors"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/meshbed/meshbed/datapath"
	"github.com/meshbed/meshbed/datapath/endpoint"
	"github.com/meshbed/meshbed/datapath/netns/netnstest"
	"github.com/meshbed/meshbed/datapath/state"
	"github.com/meshbed/meshbed/internal/testenv"
)

func TestUnderDir(t *testing.T) {
	tests := []struct {
		path string
		want bool
	}{
		{"/sys/fs/bpf/meshbed", true},
		{"/sys/fs/bpf", true},
		{"/sys/fs/bpf/a/b/", true},
		{"/sys/fs/bpfx/meshbed", false},
		{"/sys/fs/bpf/../meshbed", false},
		{"/var/run/meshbed/bpf", false},
		{"relative/path", false},
	}
	for _, tt := range tests {
		t.Run(tt.path, func(t *testing.T) {
			if got := underDir(tt.path, datapath.DefaultBPFFS); got != tt.want {
				t.Fatalf("underDir(%q) = %t, want %t", tt.path, got, tt.want)
			}
		})
	}
}

// TestRestartKeepsOverlayAttached restarts a tunnel-mode node datapath
// with a PinPath the way meshbed-agent does (Close, New): the overlay
// program stays attached throughout, the new one takes the same attachment,
// and Remove leaves nothing.
func TestRestartKeepsOverlayAttached(t *testing.T) {
	testenv.Privileged(t)
	bpffs := t.TempDir()
	if err := datapath.MountBPFFS(bpffs); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := unix.Unmount(bpffs, unix.MNT_DETACH); err != nil {
			t.Error(err)
		}
	})
	pin := filepath.Join(bpffs, "meshbed")
	ns := netnstest.New(t, "node-pin", endpoint.NodeSysctls...)
	cfg := Config{NS: ns, NodeIP: netip.MustParseAddr("172.31.2.10"), ClusterID: 1, Routing: state.Tunnel,
		PinPath: pin, Logger: slog.New(slog.NewTextHandler(t.Output(), nil))}

	overlay := func(t *testing.T, dev int) *link.QueryResult {
		t.Helper()
		var res *link.QueryResult
		err := ns.Do(func() (err error) {
			res, err = link.QueryPrograms(link.QueryOptions{Target: dev, Attach: ebpf.AttachTCXIngress})
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		return res
	}
	linkIDs := func(res *link.QueryResult) []link.ID {
		var out []link.ID
		for _, p := range res.Programs {
			id, _ := p.LinkID()
			out = append(out, id)
		}
		return out
	}

	first, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { first.Close() })
	dev := first.route.Device
	before := overlay(t, dev)
	if len(before.Programs) != 1 {
		t.Fatalf("%d programs on the VXLAN device, want 1", len(before.Programs))
	}
	if err := first.Close(); err != nil {
		t.Fatal(err)
	}
	if got := overlay(t, dev); len(got.Programs) != 1 || got.Programs[0].ID != before.Programs[0].ID {
		t.Fatalf("after Close the VXLAN device runs %+v, want %+v", got.Programs, before.Programs)
	}

	second, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { second.Close() })
	if second.route.Device != dev {
		t.Fatalf("VXLAN device %d after restart, was %d (not adopted)", second.route.Device, dev)
	}
	after := overlay(t, dev)
	if len(after.Programs) != 1 || after.Programs[0].ID == before.Programs[0].ID {
		t.Fatalf("after the restart the VXLAN device runs %+v, want one new program (was %+v)", after.Programs, before.Programs)
	}
	if !slices.Equal(linkIDs(after), linkIDs(before)) {
		t.Fatalf("links %v after restart, were %v: attached anew instead of updated", linkIDs(after), linkIDs(before))
	}

	if err := second.Remove(); err != nil {
		t.Fatal(err)
	}
	if got := overlay(t, dev); len(got.Programs) != 0 {
		t.Fatalf("after Remove the VXLAN device runs %+v", got.Programs)
	}
	if _, err := os.Stat(pin); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("pin path left after Remove (%v)", err)
	}
}
