package datapath

import (
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/btf"
	"github.com/cilium/ebpf/features"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"

	"github.com/meshbed/meshbed/datapath/state"
)

// Defaults for Options.
const (
	DefaultConntrackEntries = 65536
	DefaultEventBufferBytes = 256 * 1024
)

// Options configure a node's datapath.
type Options struct {
	// ClusterID is the cluster this node belongs to (1..511). Flows to
	// addresses of other clusters are reported as cross-cluster.
	ClusterID uint32
	// Routing selects how packets reach pods on other nodes.
	Routing state.RoutingMode
	// ConntrackEntries sizes the connection tracking table
	// (DefaultConntrackEntries if 0).
	ConntrackEntries uint32
	// EventBufferBytes sizes the flow event ring buffer: a power of two,
	// at least a page (DefaultEventBufferBytes if 0).
	EventBufferBytes uint32
	// Trace makes the datapath emit a flow event for every forwarded
	// packet, not only for verdicts of interest. For debugging and tests.
	Trace bool
	// Logger receives reconciliation messages; nil discards them.
	Logger *slog.Logger
	// PinPath, a directory on a BPF filesystem, makes the datapath outlive
	// the process: maps and program attachments are pinned there, Close
	// leaves them in place, and the next New with the same PinPath takes
	// them over with their entries (connection tracking included) and
	// without a moment with no program attached. Remove or Uninstall
	// clean up. Empty: nothing is pinned and Close detaches everything
	// (the simulator, whose Datapaths outlive its agents).
	PinPath string

	// mapSizes overrides max_entries by map name (tests that fill maps).
	mapSizes map[string]uint32
}

// FeatureError reports a kernel feature the datapath needs and the kernel
// lacks. The datapath cannot run on such a kernel.
type FeatureError struct {
	Feature string
	Err     error
}

func (e *FeatureError) Error() string {
	return fmt.Sprintf("kernel lacks %s: %v", e.Feature, e.Err)
}

func (e *FeatureError) Unwrap() error { return e.Err }

// Datapath is one node's loaded programs and maps. Create it with New in
// the node's network namespace, drive it with Apply, release it with Close.
// Methods are safe for concurrent use. Apply and AttachOverlay resolve
// interfaces by name in the network namespace of the calling thread.
type Datapath struct {
	opts Options
	log  *slog.Logger

	mu      sync.Mutex
	closed  bool
	lock    *os.File // holds the pin path's flock
	pod     podObjects
	overlay overlayObjects
	cfg     podNodeConfig

	overlayLink    link.Link
	overlayIfindex int

	prog     programmed
	restored *state.State // what New took over from PinPath
}

// New checks the kernel, loads the datapath's programs and maps, and
// initialises the node configuration. Nothing is attached yet: Apply
// attaches to endpoint interfaces, AttachOverlay to the VXLAN device.
//
// With Options.PinPath, New takes over what an earlier Datapath (an
// earlier agent process) left pinned there: the maps and their entries,
// and every pinned attachment, switched atomically to the new programs.
// Maps whose layout or size changed are replaced (and logged). What Apply
// diffs against is read back from the maps, so the first Apply writes only
// what differs from what the earlier Datapath programmed.
func New(opts Options) (*Datapath, error) {
	if opts.ConntrackEntries == 0 {
		opts.ConntrackEntries = DefaultConntrackEntries
	}
	if opts.EventBufferBytes == 0 {
		opts.EventBufferBytes = DefaultEventBufferBytes
	}
	if opts.ClusterID == 0 || opts.ClusterID > 511 {
		return nil, fmt.Errorf("datapath: cluster ID %d out of range 1..511", opts.ClusterID)
	}
	if opts.Routing != state.Tunnel && opts.Routing != state.Native {
		return nil, fmt.Errorf("datapath: unknown routing mode %d", opts.Routing)
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if err := checkKernel(); err != nil {
		return nil, err
	}

	d := &Datapath{opts: opts, log: log, prog: newProgrammed()}
	if d.pinned() {
		lock, err := openPinPath(opts.PinPath)
		if err != nil {
			return nil, err
		}
		d.lock = lock
	}
	if err := d.load(); err != nil {
		if d.lock != nil {
			d.lock.Close()
		}
		return nil, err
	}
	if d.pinned() {
		links, err := d.adoptLinks()
		if err == nil {
			err = d.restore(links)
		}
		if err != nil {
			_ = d.Close()
			return nil, err
		}
	}
	d.cfg = podNodeConfig{ClusterId: opts.ClusterID, Revision: d.firstRevision()}
	if opts.Routing == state.Native {
		d.cfg.Flags |= cfgNativeRouting
	}
	if opts.Trace {
		d.cfg.Flags |= cfgTrace
	}
	if d.overlayLink != nil {
		// Adopted: keep sending through it until AttachOverlay says
		// otherwise.
		d.cfg.VxlanIfindex = uint32(d.overlayIfindex)
	}
	if err := d.writeConfig(); err != nil {
		_ = d.Close()
		return nil, err
	}
	return d, nil
}

// Flags of struct node_config (bpf/lib/maps.h).
const (
	cfgNativeRouting = 1 << 0
	cfgTrace         = 1 << 1
)

// checkKernel names the first missing feature instead of letting the
// loader fail with a verifier or syscall error that does not.
func checkKernel() error {
	checks := []struct {
		feature string
		check   func() error
	}{
		{"BPF tc programs (sched_cls)", func() error { return features.HaveProgramType(ebpf.SchedCLS) }},
		{"BPF v3 instruction set", features.HaveV3ISA},
		{"BTF", haveBTF},
		{"BPF ring buffer maps", func() error { return features.HaveMapType(ebpf.RingBuf) }},
		{"BPF LPM trie maps", func() error { return features.HaveMapType(ebpf.LPMTrie) }},
		{"BPF LRU hash maps", func() error { return features.HaveMapType(ebpf.LRUHash) }},
		{"bpf_redirect_peer", func() error { return features.HaveProgramHelper(ebpf.SchedCLS, asm.FnRedirectPeer) }},
		{"bpf_skb_set_tunnel_key", func() error { return features.HaveProgramHelper(ebpf.SchedCLS, asm.FnSkbSetTunnelKey) }},
	}
	for _, c := range checks {
		if err := c.check(); err != nil {
			return &FeatureError{Feature: c.feature, Err: err}
		}
	}
	return nil
}

// haveBTF loads a one-type BTF blob: the maps' key and value types travel
// as BTF, and a kernel without it cannot take the objects.
func haveBTF() error {
	b, err := btf.NewBuilder([]btf.Type{&btf.Int{Name: "int", Size: 4, Encoding: btf.Signed}}, nil)
	if err != nil {
		return err
	}
	h, err := btf.NewHandle(b)
	if err != nil {
		return err
	}
	return h.Close()
}

func (d *Datapath) load() error {
	podSpec, err := loadPod()
	if err != nil {
		return fmt.Errorf("datapath: parse pod object: %w", err)
	}
	overlaySpec, err := loadOverlay()
	if err != nil {
		return fmt.Errorf("datapath: parse overlay object: %w", err)
	}
	var podOpts ebpf.CollectionOptions
	if d.pinned() {
		for name, m := range podSpec.Maps {
			if !unpinnedMaps[name] {
				m.Pinning = ebpf.PinByName
			}
		}
		podOpts.Maps.PinPath = filepath.Join(d.opts.PinPath, pinMapsDir)
	}
	for _, spec := range []*ebpf.CollectionSpec{podSpec, overlaySpec} {
		if m := spec.Maps[podMapConntrack]; m != nil {
			m.MaxEntries = d.opts.ConntrackEntries
		}
		if m := spec.Maps[podMapEvents]; m != nil {
			m.MaxEntries = d.opts.EventBufferBytes
		}
		for name, size := range d.opts.mapSizes {
			if m := spec.Maps[name]; m != nil {
				m.MaxEntries = size
			}
		}
	}

	if d.pinned() {
		if err := d.replaceIncompatible(podSpec, podOpts.Maps.PinPath); err != nil {
			return err
		}
	}
	if err := podSpec.LoadAndAssign(&d.pod, &podOpts); err != nil {
		return loadError("pod", err)
	}
	// The overlay object shares every map with the pod object: one set of
	// maps per node, whichever program touches it.
	shared := d.sharedMaps()
	replace := make(map[string]*ebpf.Map, len(overlaySpec.Maps))
	for name := range overlaySpec.Maps {
		m, ok := shared[name]
		if !ok {
			_ = d.pod.Close()
			return fmt.Errorf("datapath: overlay object has map %q the pod object lacks", name)
		}
		replace[name] = m
	}
	if err := overlaySpec.LoadAndAssign(&d.overlay, &ebpf.CollectionOptions{MapReplacements: replace}); err != nil {
		_ = d.pod.Close()
		return loadError("overlay", err)
	}
	return nil
}

func (d *Datapath) sharedMaps() map[string]*ebpf.Map {
	m := d.pod.podMaps
	return map[string]*ebpf.Map{
		podMapBackends:  m.Backends,
		podMapConfig:    m.Config,
		podMapConntrack: m.Conntrack,
		podMapEndpoints: m.Endpoints,
		podMapEvents:    m.Events,
		podMapIpcache:   m.Ipcache,
		podMapMetrics:   m.Metrics,
		podMapPolicy:    m.Policy,
		podMapRevnat:    m.Revnat,
		podMapServices:  m.Services,
	}
}

func loadError(object string, err error) error {
	if errors.Is(err, ebpf.ErrNotSupported) {
		return &FeatureError{Feature: "a BPF feature of the " + object + " object (BTF, map type or helper)", Err: err}
	}
	var ve *ebpf.VerifierError
	if errors.As(err, &ve) {
		return fmt.Errorf("datapath: load %s object: %+v", object, ve)
	}
	return fmt.Errorf("datapath: load %s object: %w", object, err)
}

// firstRevision is the revision (node_config.revision) New starts from:
// one past the pinned configuration's, so that no conntrack entry kept from
// the earlier Datapath has its flow cache taken as current; a random one
// when there is none to go on (a conntrack table kept without its
// configuration would then match by a 1 in 2^32 chance at worst).
func (d *Datapath) firstRevision() uint32 {
	var old podNodeConfig
	if err := d.pod.Config.Lookup(uint32(0), &old); err == nil && old.Revision != 0 {
		return nextRevision(old.Revision)
	}
	return nextRevision(rand.Uint32())
}

// nextRevision is the revision after r: never 0, which means "no cache".
func nextRevision(r uint32) uint32 {
	if r++; r == 0 {
		r = 1
	}
	return r
}

// bumpRevision tells the programs that the maps changed: every flow cache
// of the earlier revision is void, and the next packet of each connection
// takes the full path (and caches afresh). d.mu is held.
func (d *Datapath) bumpRevision() error {
	d.cfg.Revision = nextRevision(d.cfg.Revision)
	return d.writeConfig()
}

func (d *Datapath) writeConfig() error {
	if err := d.pod.Config.Put(uint32(0), &d.cfg); err != nil {
		return fmt.Errorf("datapath: write node config: %w", err)
	}
	return nil
}

// AttachOverlay attaches the overlay program to the VXLAN device ifname
// (collect-metadata mode) and makes it the device pods' traffic to other
// nodes is sent through. Attaching again (e.g. to a recreated device)
// replaces the earlier attachment.
func (d *Datapath) AttachOverlay(ifname string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return ErrClosed
	}
	l, err := netlink.LinkByName(ifname)
	if err != nil {
		return fmt.Errorf("datapath: attach overlay: find interface %q: %w", ifname, err)
	}
	ifindex := l.Attrs().Index
	if d.overlayLink == nil || linkIfindex(d.overlayLink) != ifindex {
		lk, err := attachTCX(d.overlay.FromOverlay, ifindex, ebpf.AttachTCXIngress)
		if err != nil {
			return fmt.Errorf("datapath: attach overlay to %q: %w", ifname, err)
		}
		if d.pinned() {
			// The earlier attachment's pin goes first: pins do not
			// replace each other.
			if d.overlayLink != nil {
				if err := d.overlayLink.Unpin(); err != nil {
					_ = lk.Close()
					return fmt.Errorf("datapath: attach overlay to %q: unpin the earlier attachment: %w", ifname, err)
				}
			}
			path := d.linkPinPath(progFromOverlay, 0)
			if err := lk.Pin(path); err != nil {
				_ = lk.Close()
				if d.overlayLink != nil {
					_ = d.overlayLink.Pin(path) // keep the earlier one across restarts
				}
				return fmt.Errorf("datapath: attach overlay to %q: pin: %w", ifname, err)
			}
		}
		if d.overlayLink != nil {
			_ = detachLink(d.overlayLink)
		}
		d.overlayLink, d.overlayIfindex = lk, ifindex
	}
	d.cfg.VxlanIfindex = uint32(ifindex)
	return d.writeConfig()
}

// linkIfindex is the device a tcx link is attached to, 0 if it is gone.
func linkIfindex(lk link.Link) int {
	info, err := lk.Info()
	if err != nil || info.TCX() == nil {
		return 0
	}
	return int(info.TCX().Ifindex)
}

func attachTCX(prog *ebpf.Program, ifindex int, at ebpf.AttachType) (link.Link, error) {
	lk, err := link.AttachTCX(link.TCXOptions{Interface: ifindex, Program: prog, Attach: at})
	if errors.Is(err, ebpf.ErrNotSupported) {
		return nil, &FeatureError{Feature: "tcx", Err: err}
	}
	return lk, err
}

// ErrClosed is returned by methods of a closed Datapath.
var ErrClosed = errors.New("datapath closed")

// Close releases the programs and maps. Without Options.PinPath that
// detaches every program and frees the maps. With it, everything pinned
// stays: the programs keep running on the maps as they are until the next
// New takes them over (an agent restart). Remove detaches for good.
func (d *Datapath) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil
	}
	err := d.release()
	if d.lock != nil {
		err = errors.Join(err, d.lock.Close())
	}
	if err != nil {
		return fmt.Errorf("datapath: close: %w", err)
	}
	return nil
}

// release closes every link, program and map descriptor: a pinned link
// stays attached, a pinned map stays. d.mu is held.
func (d *Datapath) release() error {
	d.closed = true
	var errs []error
	for _, ep := range d.prog.endpoints {
		errs = append(errs, ep.release())
	}
	if d.overlayLink != nil {
		errs = append(errs, d.overlayLink.Close())
	}
	errs = append(errs, d.overlay.Close(), d.pod.Close())
	return errors.Join(errs...)
}
