package datapath

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

// Pinning (Options.PinPath) lets the datapath outlive the agent process:
//
//	<PinPath>/maps/<map>                  every map but the flow event ring
//	<PinPath>/links/from_container-<ID>   tcx link of an endpoint's programs
//	<PinPath>/links/to_container-<ID>
//	<PinPath>/links/from_overlay          tcx link of the overlay program
//
// A pinned link keeps its program attached, and the program its maps,
// while no agent runs. The next New reuses the maps with their entries
// (connection tracking above all), switches every pinned link to its own
// program of the same name, and rebuilds what Apply diffs against from the
// maps. The directory is locked (flock) while a Datapath uses it.
const (
	pinMapsDir  = "maps"
	pinLinksDir = "links"
)

// DefaultBPFFS is where a BPF filesystem is conventionally mounted.
const DefaultBPFFS = "/sys/fs/bpf"

// ErrPinPathInUse is returned by New and Uninstall when another Datapath
// (usually another agent process) holds the pin path. Stop it first; two
// datapaths writing the same maps would undo each other's work.
var ErrPinPathInUse = errors.New("pin path in use by another datapath")

// unpinnedMaps are created afresh by every New. Flow events are for the
// agent that reads them: a ring nobody read while no agent ran would replay
// stale flows to the next one.
var unpinnedMaps = map[string]bool{podMapEvents: true}

// Program names, as in the objects; tcx link pins are named after them.
const (
	progFromContainer = "from_container"
	progToContainer   = "to_container"
	progFromOverlay   = "from_overlay"
)

func (d *Datapath) pinned() bool { return d.opts.PinPath != "" }

func (d *Datapath) linkPinPath(prog string, endpointID uint16) string {
	name := prog
	if endpointID != 0 {
		name = prog + "-" + strconv.Itoa(int(endpointID))
	}
	return filepath.Join(d.opts.PinPath, pinLinksDir, name)
}

// parseLinkPin is the inverse of linkPinPath's file name.
func parseLinkPin(name string) (prog string, endpointID uint16, ok bool) {
	if name == progFromOverlay {
		return name, 0, true
	}
	prog, id, found := strings.Cut(name, "-")
	if !found || (prog != progFromContainer && prog != progToContainer) {
		return "", 0, false
	}
	n, err := strconv.ParseUint(id, 10, 16)
	if err != nil || n == 0 || strconv.FormatUint(n, 10) != id {
		return "", 0, false
	}
	return prog, uint16(n), true
}

// onBPFFS reports whether path, or the nearest of its ancestors that
// exists, is on a BPF filesystem.
func onBPFFS(path string) (bool, error) {
	p := filepath.Clean(path)
	for {
		var st unix.Statfs_t
		err := unix.Statfs(p, &st)
		if err == nil {
			return int64(st.Type) == unix.BPF_FS_MAGIC, nil
		}
		parent := filepath.Dir(p)
		if !errors.Is(err, unix.ENOENT) || parent == p {
			return false, fmt.Errorf("statfs %s: %w", p, err)
		}
		p = parent
	}
}

// MountBPFFS mounts a BPF filesystem at dir unless dir already is on one.
// Pins live only on such a filesystem, and DefaultBPFFS is left unmounted
// by some distributions and container runtimes; an agent mounts it there
// (with mount propagation to the host) so that its pins outlive it.
func MountBPFFS(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("datapath: mount BPF filesystem: %w", err)
	}
	ok, err := onBPFFS(dir)
	if err != nil {
		return fmt.Errorf("datapath: mount BPF filesystem: %w", err)
	}
	if ok {
		return nil
	}
	if err := unix.Mount("bpf", dir, "bpf", 0, "mode=0700"); err != nil {
		return fmt.Errorf("datapath: mount BPF filesystem at %s: %w", dir, err)
	}
	return nil
}

// openPinPath checks that path is on a BPF filesystem, creates its
// directories and locks it. The returned file holds the lock until closed.
func openPinPath(path string) (*os.File, error) {
	ok, err := onBPFFS(path)
	if err != nil {
		return nil, fmt.Errorf("datapath: pin path %q: %w", path, err)
	}
	if !ok {
		return nil, fmt.Errorf("datapath: pin path %q is not on a BPF filesystem (mount one, e.g. mount -t bpf bpf %s)", path, DefaultBPFFS)
	}
	for _, sub := range []string{pinMapsDir, pinLinksDir} {
		if err := os.MkdirAll(filepath.Join(path, sub), 0o700); err != nil {
			return nil, fmt.Errorf("datapath: pin path: %w", err)
		}
	}
	return lockPinPath(path)
}

func lockPinPath(path string) (*os.File, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("datapath: lock pin path: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("datapath: %s: %w", path, ErrPinPathInUse)
		}
		return nil, fmt.Errorf("datapath: lock pin path %s: %w", path, err)
	}
	return f, nil
}

// replaceIncompatible removes the pins of maps the loader cannot reuse for
// spec: a changed type, key or value size, flags or number of entries (a
// new version of the datapath, or changed Options). The load then creates
// them afresh, and their entries are lost; the log says which and why.
// Programs still attached through pinned links keep the old maps until New
// switches them to the new programs.
func (d *Datapath) replaceIncompatible(spec *ebpf.CollectionSpec, dir string) error {
	names := make([]string, 0, len(spec.Maps))
	for name, ms := range spec.Maps {
		if ms.Pinning == ebpf.PinByName {
			names = append(names, name)
		}
	}
	slices.Sort(names)
	for _, name := range names {
		path := filepath.Join(dir, name)
		m, err := ebpf.LoadPinnedMap(path, nil)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if errors.Is(err, os.ErrPermission) {
			return fmt.Errorf("datapath: open pinned map %s: %w", path, err)
		}
		why := err // not a map at all
		if m != nil {
			why = spec.Maps[name].Compatible(m)
			if why == nil {
				why = layoutDiff(spec.Maps[name], m)
			}
			m.Close()
		}
		if why == nil {
			continue
		}
		d.log.Warn("replacing incompatible pinned map, its entries are lost", "map", name, "path", path, "reason", why.Error())
		if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("datapath: replace pinned map %s: %w", path, err)
		}
	}
	return nil
}

// layoutDiff compares the key and value types of a pinned map, as its BTF
// describes them, with ms's: the sizes may match while the fields moved
// (a new datapath version), and the entries would be misread. A map
// without BTF cannot tell and is taken as it is.
func layoutDiff(ms *ebpf.MapSpec, m *ebpf.Map) error {
	info, err := m.Info()
	if err != nil {
		return fmt.Errorf("map info: %w", err)
	}
	id, ok := info.BTFID()
	if !ok {
		return nil
	}
	h, err := btf.NewHandleFromID(id)
	if err != nil {
		return fmt.Errorf("map BTF: %w", err)
	}
	defer h.Close()
	old, err := h.Spec(nil)
	if err != nil {
		return fmt.Errorf("map BTF: %w", err)
	}
	for _, kv := range []struct {
		what string
		typ  btf.Type
	}{{"key", ms.Key}, {"value", ms.Value}} {
		if kv.typ == nil || kv.typ.TypeName() == "" {
			continue
		}
		var gf btf.GoFormatter
		want, err := gf.TypeDeclaration("t", kv.typ)
		if err != nil {
			continue // nothing to compare with
		}
		candidates, _ := old.AnyTypesByName(kv.typ.TypeName())
		var got []string
		for _, c := range candidates {
			if decl, err := gf.TypeDeclaration("t", c); err == nil {
				if decl == want {
					got = nil
					break
				}
				got = append(got, decl)
			}
		}
		if len(candidates) == 0 {
			return fmt.Errorf("%s type %s not in the pinned map's BTF: %w", kv.what, kv.typ.TypeName(), ebpf.ErrMapIncompatible)
		}
		if len(got) > 0 {
			return fmt.Errorf("%s type %s changed from %q to %q: %w", kv.what, kv.typ.TypeName(), got[0], want, ebpf.ErrMapIncompatible)
		}
	}
	return nil
}

// endpointLinks are an endpoint's adopted links.
type endpointLinks struct {
	ingress, egress link.Link
	ifindex         int
}

// adoptLinks takes over the tcx links an earlier Datapath pinned. Each is
// switched to this Datapath's program of the same name in one
// BPF_LINK_UPDATE: the hook is never empty and never runs two programs.
// Links whose device is gone and pins that are not ours are removed.
func (d *Datapath) adoptLinks() (map[uint16]*endpointLinks, error) {
	dir := filepath.Join(d.opts.PinPath, pinLinksDir)
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("datapath: adopt links: %w", err)
	}
	progs := map[string]*ebpf.Program{
		progFromContainer: d.pod.FromContainer,
		progToContainer:   d.pod.ToContainer,
		progFromOverlay:   d.overlay.FromOverlay,
	}
	out := make(map[uint16]*endpointLinks)
	for _, e := range entries {
		path := filepath.Join(dir, e.Name())
		prog, id, ok := parseLinkPin(e.Name())
		if !ok {
			d.log.Warn("removing unknown pin", "path", path)
			_ = os.Remove(path)
			continue
		}
		lk, ifindex, err := adoptLink(path, progs[prog])
		if err != nil {
			// Apply attaches afresh where the endpoint still is.
			d.log.Warn("dropping pinned link", "path", path, "error", err.Error())
			_ = os.Remove(path)
			continue
		}
		if id == 0 {
			d.overlayLink, d.overlayIfindex = lk, ifindex
			continue
		}
		el := out[id]
		if el == nil {
			el = &endpointLinks{}
			out[id] = el
		}
		if prog == progFromContainer {
			el.ingress = lk
		} else {
			el.egress = lk
		}
		el.ifindex = ifindex
	}
	return out, nil
}

// adoptLink loads the link pinned at path and switches it to prog. A link
// it cannot use is detached (the caller removes the pin).
func adoptLink(path string, prog *ebpf.Program) (_ link.Link, ifindex int, err error) {
	lk, err := link.LoadPinnedLink(path, nil)
	if err != nil {
		return nil, 0, err
	}
	defer func() {
		if err != nil {
			detachLink(lk)
		}
	}()
	info, err := lk.Info()
	if err != nil {
		return nil, 0, err
	}
	tcx := info.TCX()
	if tcx == nil {
		return nil, 0, fmt.Errorf("link of type %d, not tcx", info.Type)
	}
	if tcx.Ifindex == 0 {
		return nil, 0, errors.New("device gone")
	}
	if err := lk.Update(prog); err != nil {
		if errors.Is(err, unix.ENOLINK) {
			return nil, 0, errors.New("device gone")
		}
		return nil, 0, fmt.Errorf("switch to the new program: %w", err)
	}
	return lk, int(tcx.Ifindex), nil
}

// detachLink detaches lk's program now, removes its pin and closes it.
// Without the explicit detach, a pinned link would be detached only once
// the kernel frees it, asynchronously, after the last reference is gone.
func detachLink(lk link.Link) error {
	_ = lk.Detach() // best effort: a link whose device is gone is detached already
	return errors.Join(lk.Unpin(), lk.Close())
}

// attachPinned attaches prog to ifindex and, on a pinned datapath, pins the
// link so it outlives this process.
func (d *Datapath) attachPinned(prog *ebpf.Program, name string, endpointID uint16, ifindex int, at ebpf.AttachType) (link.Link, error) {
	lk, err := attachTCX(prog, ifindex, at)
	if err != nil || !d.pinned() {
		return lk, err
	}
	path := d.linkPinPath(name, endpointID)
	if err := lk.Pin(path); err != nil {
		lk.Close()
		return nil, fmt.Errorf("pin link: %w", err)
	}
	return lk, nil
}

// Remove detaches every program and, on a pinned datapath, removes the pins
// and the pin path, so that nothing of the datapath is left (uninstall, and
// tests). Close, by contrast, leaves a pinned datapath running for the next
// New. Remove on a closed Datapath removes what it left pinned.
func (d *Datapath) Remove() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		if !d.pinned() {
			return nil
		}
		return Uninstall(d.opts.PinPath)
	}
	err := d.release()
	if d.pinned() {
		err = errors.Join(err, removePins(d.opts.PinPath))
		err = errors.Join(err, d.lock.Close())
	}
	if err != nil {
		return fmt.Errorf("datapath: remove: %w", err)
	}
	return nil
}

// Uninstall removes what a datapath pinned under pinPath while no
// Datapath uses it: the programs are detached, the maps freed. A pin path
// that does not exist is not an error.
func Uninstall(pinPath string) error {
	if _, err := os.Stat(pinPath); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	ok, err := onBPFFS(pinPath)
	if err != nil {
		return fmt.Errorf("datapath: uninstall: %w", err)
	}
	if !ok {
		return fmt.Errorf("datapath: uninstall: %s is not on a BPF filesystem", pinPath)
	}
	lock, err := lockPinPath(pinPath)
	if err != nil {
		return err
	}
	defer lock.Close()
	if err := removePins(pinPath); err != nil {
		return fmt.Errorf("datapath: uninstall: %w", err)
	}
	return nil
}

// removePins removes the links (detaching their programs once no process
// holds them), then the maps, then the directories. It removes only the
// layout New creates: a pin path with anything else in it is left.
func removePins(pinPath string) error {
	var errs []error
	for _, sub := range []string{pinLinksDir, pinMapsDir} {
		dir := filepath.Join(pinPath, sub)
		entries, err := os.ReadDir(dir)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			errs = append(errs, err)
			continue
		}
		for _, e := range entries {
			path := filepath.Join(dir, e.Name())
			if sub == pinLinksDir {
				if lk, err := link.LoadPinnedLink(path, nil); err == nil {
					errs = append(errs, detachLink(lk))
					continue
				}
			}
			if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
				errs = append(errs, err)
			}
		}
		if err := os.Remove(dir); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	if err := os.Remove(pinPath); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}
