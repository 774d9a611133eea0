package datapath

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/meshbed/meshbed/datapath/state"
)

// ErrMapFull is wrapped by Apply's error when a map had no room for an
// entry. The item named in the error keeps its earlier state; the caller
// should shrink the state (or raise the map size) and apply again.
var ErrMapFull = errors.New("BPF map full")

// programmed is what this Datapath wrote to the maps: the base of every diff.
type programmed struct {
	services      map[state.Frontend]*progService
	backends      map[backendKey]*progBackend
	backendIDs    map[uint32]backendKey
	nextBackendID uint32
	revNat        map[uint16]string // rev-NAT ID -> service name
	nextRevNat    uint16
	ipcache       map[podIpcacheKey]podIpcacheValue
	endpoints     map[uint16]*progEndpoint
	mapFull       map[string]uint64
	// strayBackends are IDs of backends found in pinned maps with the
	// key of another, kept while a service slot refers to them.
	strayBackends map[uint32]bool
	// writes counts map writes: Apply bumps the datapath's revision
	// (node_config.revision) when it wrote anything.
	writes uint64
}

func newProgrammed() programmed {
	return programmed{
		services:   make(map[state.Frontend]*progService),
		backends:   make(map[backendKey]*progBackend),
		backendIDs: make(map[uint32]backendKey),
		revNat:     make(map[uint16]string),
		ipcache:    make(map[podIpcacheKey]podIpcacheValue),
		endpoints:  make(map[uint16]*progEndpoint),
		mapFull:    make(map[string]uint64),

		strayBackends: make(map[uint32]bool),
	}
}

type backendKey struct {
	addr    netip.Addr
	port    uint16
	proto   state.Protocol
	cluster uint32
}

type progBackend struct {
	id    uint32
	value podBackend
	refs  int // programmed services referring to it
}

type progService struct {
	name     string
	revNatID uint16
	slots    []uint32     // backend IDs of slots 1..n
	refs     []backendKey // every backend, terminating ones included
}

type progEndpoint struct {
	ip      netip.Addr
	iface   string
	ifindex int
	value   podEndpoint
	policy  map[podPolicyKey]struct{}
	ingress link.Link // from_container
	egress  link.Link // to_container
	// staleIPs are other addresses the endpoints map holds for this
	// endpoint ID (found in pinned maps after an interrupted change).
	staleIPs []netip.Addr
}

// detach detaches the programs (and removes their pins).
func (pe *progEndpoint) detach() error {
	var errs []error
	for _, l := range []link.Link{pe.ingress, pe.egress} {
		if l != nil {
			errs = append(errs, detachLink(l))
		}
	}
	pe.ingress, pe.egress = nil, nil
	return errors.Join(errs...)
}

// release closes the links: pinned ones stay attached.
func (pe *progEndpoint) release() error {
	var errs []error
	for _, l := range []link.Link{pe.ingress, pe.egress} {
		if l != nil {
			errs = append(errs, l.Close())
		}
	}
	pe.ingress, pe.egress = nil, nil
	return errors.Join(errs...)
}

// Apply reconciles the maps (and the endpoint attachments) to s. See the
// package documentation for the order of writes. It implements
// state.Datapath.
func (d *Datapath) Apply(s *state.State) error {
	if s == nil {
		return errors.New("datapath: apply: nil state")
	}
	if err := validate(s); err != nil {
		return fmt.Errorf("datapath: apply: invalid state: %w", err)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return ErrClosed
	}
	// ipcache first, so services and endpoints written next can reach what
	// they refer to; endpoints last, so a pod's first packet finds the rest.
	writes := d.prog.writes
	err := errors.Join(
		d.applyIPCache(s.IPCache),
		d.applyServices(s.Services),
		d.applyEndpoints(s.Endpoints),
	)
	if d.prog.writes != writes {
		// Last: the flow caches of conntrack entries hold what the
		// programs found in the maps under the earlier revision.
		err = errors.Join(err, d.bumpRevision())
	}
	if err != nil {
		return fmt.Errorf("datapath: apply: %w", err)
	}
	return nil
}

var _ state.Datapath = (*Datapath)(nil)

func isFull(err error) bool {
	// Hash maps report E2BIG when full, tries ENOSPC; ENOMEM when the
	// kernel cannot allocate an element of a map that is not preallocated.
	return errors.Is(err, unix.E2BIG) || errors.Is(err, unix.ENOSPC) || errors.Is(err, unix.ENOMEM)
}

// mapErr wraps a failed write of item to mapName, counting full maps.
func (d *Datapath) mapErr(mapName, item string, err error) error {
	if isFull(err) {
		d.prog.mapFull[mapName]++
		return fmt.Errorf("%s: %w (%s): %w", item, ErrMapFull, mapName, err)
	}
	return fmt.Errorf("%s: write %s: %w", item, mapName, err)
}

// put writes keys[i] -> values[i] (counting the write in *writes), in one syscall where the map supports
// batches. It returns how many leading entries were written.
func put[K, V any](writes *uint64, m *ebpf.Map, keys []K, values []V) (int, error) {
	if len(keys) == 0 {
		return 0, nil
	}
	*writes++
	if len(keys) > 1 {
		n, err := m.BatchUpdate(keys, values, nil)
		if !errors.Is(err, ebpf.ErrNotSupported) {
			return n, err
		}
	}
	for i := range keys {
		if err := m.Put(&keys[i], &values[i]); err != nil {
			return i, err
		}
	}
	return len(keys), nil
}

// del removes keys, ignoring those already gone (counting the write in
// *writes).
func del[K any](writes *uint64, m *ebpf.Map, keys []K) error {
	if len(keys) == 0 {
		return nil
	}
	*writes++
	if len(keys) > 1 {
		n, err := m.BatchDelete(keys, nil)
		if err == nil {
			return nil
		}
		if !errors.Is(err, ebpf.ErrNotSupported) && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return err
		}
		keys = keys[n:]
	}
	var errs []error
	for i := range keys {
		if err := m.Delete(&keys[i]); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// --- ipcache ---------------------------------------------------------------

func ipcacheKey(p netip.Prefix) podIpcacheKey {
	p = p.Masked()
	return podIpcacheKey{Prefixlen: uint32(p.Bits()), Addr: be32(p.Addr())}
}

func ipcachePrefix(k podIpcacheKey) netip.Prefix {
	return netip.PrefixFrom(addrFromBE32(k.Addr), int(k.Prefixlen))
}

func (d *Datapath) applyIPCache(entries []state.IPCacheEntry) error {
	want := make(map[podIpcacheKey]podIpcacheValue, len(entries))
	for _, e := range entries {
		v := podIpcacheValue{Identity: e.Identity, ClusterId: e.ClusterID}
		if e.TunnelEndpoint.IsValid() && !e.TunnelEndpoint.IsUnspecified() {
			v.TunnelEndpoint = be32(e.TunnelEndpoint)
		}
		want[ipcacheKey(e.Prefix)] = v
	}

	// Deletions first: they make room for what follows.
	var gone []podIpcacheKey
	for k := range d.prog.ipcache {
		if _, ok := want[k]; !ok {
			gone = append(gone, k)
		}
	}
	var errs []error
	if err := del(&d.prog.writes, d.pod.Ipcache, gone); err != nil {
		errs = append(errs, fmt.Errorf("delete ipcache entries: %w", err))
	}
	for _, k := range gone {
		delete(d.prog.ipcache, k)
	}

	var keys []podIpcacheKey
	var vals []podIpcacheValue
	for k, v := range want {
		if old, ok := d.prog.ipcache[k]; !ok || old != v {
			keys = append(keys, k)
			vals = append(vals, v)
		}
	}
	n, err := put(&d.prog.writes, d.pod.Ipcache, keys, vals)
	for i := range n {
		d.prog.ipcache[keys[i]] = vals[i]
	}
	if err != nil {
		errs = append(errs, d.mapErr("ipcache", fmt.Sprintf("ipcache entry %s", ipcachePrefix(keys[n])), err))
	}
	return errors.Join(errs...)
}

// --- services --------------------------------------------------------------

func keyOfBackend(b state.Backend) backendKey {
	return backendKey{addr: b.IP, port: b.Port, proto: b.Protocol, cluster: b.ClusterID}
}

func (d *Datapath) applyServices(services []state.Service) error {
	want := make(map[state.Frontend]*state.Service, len(services))
	for i := range services {
		want[services[i].Frontend] = &services[i]
	}
	var errs []error

	// Services that are gone: master first, so no new connection looks
	// for slots that are about to disappear.
	for fe, ps := range d.prog.services {
		if _, ok := want[fe]; !ok {
			if err := d.removeService(fe, ps); err != nil {
				errs = append(errs, err)
			}
		}
	}

	// Backends: a backend is active if any service has it active.
	wantBackends := make(map[backendKey]uint8)
	for _, svc := range services {
		for _, b := range svc.Backends {
			k := keyOfBackend(b)
			st, seen := wantBackends[k]
			if !seen || b.State == state.BackendActive {
				st = uint8(b.State)
			}
			wantBackends[k] = st
		}
	}
	// Room first: backends of removed services that nobody wants.
	if err := d.deleteUnusedBackends(wantBackends); err != nil {
		errs = append(errs, err)
	}
	failed := make(map[backendKey]error)
	var newKeys []backendKey
	var putIDs []uint32
	var putVals []podBackend
	for k, st := range wantBackends {
		v := podBackend{Addr: be32(k.addr), Port: be16(k.port), Proto: uint8(k.proto), State: st, ClusterId: k.cluster}
		pb, ok := d.prog.backends[k]
		if ok && pb.value == v {
			continue
		}
		var id uint32
		if ok {
			id = pb.id
		} else {
			id = d.allocBackendID()
			newKeys = append(newKeys, k)
			d.prog.backends[k] = &progBackend{id: id}
			d.prog.backendIDs[id] = k
		}
		putIDs = append(putIDs, id)
		putVals = append(putVals, v)
	}
	n, err := put(&d.prog.writes, d.pod.Backends, putIDs, putVals)
	for i, id := range putIDs {
		k := d.prog.backendIDs[id]
		if i < n {
			d.prog.backends[k].value = putVals[i]
			continue
		}
		if i == n && err != nil {
			failed[k] = d.mapErr("backends", fmt.Sprintf("backend %s/%s@%d", netip.AddrPortFrom(k.addr, k.port), k.proto, k.cluster), err)
			errs = append(errs, failed[k])
		} else {
			failed[k] = fmt.Errorf("backend %s/%s@%d not written", netip.AddrPortFrom(k.addr, k.port), k.proto, k.cluster)
		}
	}
	// New backends that did not make it are forgotten, so their IDs are
	// not mistaken for programmed ones.
	for _, k := range newKeys {
		if _, bad := failed[k]; bad {
			delete(d.prog.backendIDs, d.prog.backends[k].id)
			delete(d.prog.backends, k)
		}
	}

	for _, svc := range services {
		var missing error
		for _, b := range svc.Backends {
			if ferr, bad := failed[keyOfBackend(b)]; bad {
				missing = ferr
				break
			}
		}
		if missing != nil {
			errs = append(errs, fmt.Errorf("service %q %s: kept its earlier backends: %w", svc.Name, svc.Frontend, missing))
			continue
		}
		if err := d.applyService(svc); err != nil {
			errs = append(errs, err)
		}
	}

	// Backends no service refers to any more (a service that failed to
	// update still refers to its old ones).
	if err := d.deleteUnusedBackends(nil); err != nil {
		errs = append(errs, err)
	}
	if err := d.deleteStrayBackends(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// deleteStrayBackends deletes stray backends (see programmed) that no
// service slot refers to any more.
func (d *Datapath) deleteStrayBackends() error {
	if len(d.prog.strayBackends) == 0 {
		return nil
	}
	inUse := make(map[uint32]bool)
	for _, ps := range d.prog.services {
		for _, id := range ps.slots {
			inUse[id] = true
		}
	}
	var gone []uint32
	for id := range d.prog.strayBackends {
		if !inUse[id] {
			gone = append(gone, id)
		}
	}
	if err := del(&d.prog.writes, d.pod.Backends, gone); err != nil {
		return fmt.Errorf("delete stray backends: %w", err)
	}
	for _, id := range gone {
		delete(d.prog.strayBackends, id)
		delete(d.prog.backendIDs, id)
	}
	return nil
}

// deleteUnusedBackends deletes programmed backends that no programmed
// service refers to and that are not in keep.
func (d *Datapath) deleteUnusedBackends(keep map[backendKey]uint8) error {
	var unused []uint32
	for k, pb := range d.prog.backends {
		if _, kept := keep[k]; !kept && pb.refs == 0 {
			unused = append(unused, pb.id)
		}
	}
	err := del(&d.prog.writes, d.pod.Backends, unused)
	if err != nil {
		return fmt.Errorf("delete unused backends: %w", err)
	}
	for _, id := range unused {
		delete(d.prog.backends, d.prog.backendIDs[id])
		delete(d.prog.backendIDs, id)
	}
	return nil
}

// setRefs moves a service's backend references from old to refs.
func (d *Datapath) setRefs(old, refs []backendKey) {
	for _, k := range old {
		if pb := d.prog.backends[k]; pb != nil {
			pb.refs--
		}
	}
	for _, k := range refs {
		d.prog.backends[k].refs++
	}
}

func (d *Datapath) allocBackendID() uint32 {
	for {
		d.prog.nextBackendID++
		if d.prog.nextBackendID == 0 {
			continue
		}
		if _, used := d.prog.backendIDs[d.prog.nextBackendID]; !used {
			return d.prog.nextBackendID
		}
	}
}

func (d *Datapath) allocRevNatID() (uint16, bool) {
	for range 1 << 16 {
		d.prog.nextRevNat++
		if d.prog.nextRevNat == 0 {
			continue
		}
		if _, used := d.prog.revNat[d.prog.nextRevNat]; !used {
			return d.prog.nextRevNat, true
		}
	}
	return 0, false
}

func svcKey(fe state.Frontend, slot uint16) podSvcKey {
	return podSvcKey{Addr: be32(fe.IP), Port: be16(fe.Port), Slot: slot, Proto: uint8(fe.Protocol)}
}

// assignSlots keeps every backend that stays active in the slot it had, and
// fills the other slots with the new ones: a change rewrites only the slots
// that really change.
func assignSlots(old, active []uint32) []uint32 {
	want := make(map[uint32]bool, len(active))
	for _, id := range active {
		want[id] = true
	}
	slots := make([]uint32, len(active))
	placed := make(map[uint32]bool, len(active))
	for i := 0; i < len(slots) && i < len(old); i++ {
		if want[old[i]] && !placed[old[i]] {
			slots[i] = old[i]
			placed[old[i]] = true
		}
	}
	j := 0
	for _, id := range active {
		if placed[id] {
			continue
		}
		for slots[j] != 0 {
			j++
		}
		slots[j] = id
		placed[id] = true
	}
	return slots
}

// applyService writes one service so that a lookup racing with it always
// sees a complete set of backends: slots beyond the current count first,
// then rewritten slots within it, then the master's count, then the
// deletion of slots past the new count.
func (d *Datapath) applyService(svc state.Service) error {
	fe := svc.Frontend
	item := fmt.Sprintf("service %q %s", svc.Name, fe)
	ps := d.prog.services[fe]

	var active []uint32
	var refs []backendKey
	seen := make(map[backendKey]bool, len(svc.Backends))
	for _, b := range svc.Backends {
		k := keyOfBackend(b)
		if seen[k] {
			continue
		}
		seen[k] = true
		refs = append(refs, k)
		if b.State == state.BackendActive {
			active = append(active, d.prog.backends[k].id)
		}
	}

	var old []uint32
	var revNatID uint16
	if ps != nil {
		old, revNatID = ps.slots, ps.revNatID
		if sameIDs(old, active) {
			// Same slots: nothing to write. Only which terminating
			// backends the service keeps may differ (and after a
			// restart, the slots are all that was read back).
			d.setRefs(ps.refs, refs)
			ps.refs = refs
			ps.name = svc.Name
			d.prog.revNat[revNatID] = svc.Name
			return nil
		}
	} else {
		id, ok := d.allocRevNatID()
		if !ok {
			return fmt.Errorf("%s: no free rev-NAT ID (%d frontends)", item, len(d.prog.revNat))
		}
		revNatID = id
		rv := podRevnatValue{Addr: be32(fe.IP), Port: be16(fe.Port)}
		d.prog.writes++
		if err := d.pod.Revnat.Put(revNatID, &rv); err != nil {
			return d.mapErr("revnat", item, err)
		}
	}
	slots := assignSlots(old, active)

	undo := func(added []podSvcKey, restored []podSvcKey, restoredVals []podSvcValue) {
		_ = del(&d.prog.writes, d.pod.Services, added)
		_, _ = put(&d.prog.writes, d.pod.Services, restored, restoredVals)
		if ps == nil {
			d.prog.writes++
			_ = d.pod.Revnat.Delete(revNatID)
		}
	}

	// 1. Slots past the current count: invisible until the master says so.
	var addKeys []podSvcKey
	var addVals []podSvcValue
	for i := len(old); i < len(slots); i++ {
		addKeys = append(addKeys, svcKey(fe, uint16(i+1)))
		addVals = append(addVals, podSvcValue{BackendId: slots[i]})
	}
	if n, err := put(&d.prog.writes, d.pod.Services, addKeys, addVals); err != nil {
		undo(addKeys[:n], nil, nil)
		return d.mapErr("services", fmt.Sprintf("%s slot %d", item, len(old)+n+1), err)
	}

	// 2. Slots within the current count that change: every value a racing
	// lookup can see is a backend that exists.
	var chKeys, oldKeys []podSvcKey
	var chVals, oldVals []podSvcValue
	for i := 0; i < len(old) && i < len(slots); i++ {
		if old[i] != slots[i] {
			chKeys = append(chKeys, svcKey(fe, uint16(i+1)))
			chVals = append(chVals, podSvcValue{BackendId: slots[i]})
			oldVals = append(oldVals, podSvcValue{BackendId: old[i]})
		}
	}
	oldKeys = chKeys
	if n, err := put(&d.prog.writes, d.pod.Services, chKeys, chVals); err != nil {
		undo(addKeys, oldKeys[:n], oldVals[:n])
		return d.mapErr("services", fmt.Sprintf("%s slot %d", item, chKeys[n].Slot), err)
	}

	// 3. The flip.
	master := podSvcValue{Count: uint16(len(slots)), RevNatId: revNatID}
	d.prog.writes++
	if err := d.pod.Services.Put(svcKey(fe, 0), &master); err != nil {
		undo(addKeys, oldKeys, oldVals)
		return d.mapErr("services", item, err)
	}

	// 4. Slots past the new count are unreachable now.
	var stale []podSvcKey
	for i := len(slots); i < len(old); i++ {
		stale = append(stale, svcKey(fe, uint16(i+1)))
	}
	if err := del(&d.prog.writes, d.pod.Services, stale); err != nil {
		d.log.Warn("delete stale service slots", "service", svc.Name, "frontend", fe.String(), "error", err)
	}

	var oldRefs []backendKey
	if ps != nil {
		oldRefs = ps.refs
	}
	d.setRefs(oldRefs, refs)
	d.prog.services[fe] = &progService{name: svc.Name, revNatID: revNatID, slots: slots, refs: refs}
	d.prog.revNat[revNatID] = svc.Name
	return nil
}

func sameIDs(a, b []uint32) bool {
	if len(a) != len(b) {
		return false
	}
	set := make(map[uint32]bool, len(a))
	for _, id := range a {
		set[id] = true
	}
	for _, id := range b {
		if !set[id] {
			return false
		}
	}
	return true
}

func (d *Datapath) removeService(fe state.Frontend, ps *progService) error {
	item := fmt.Sprintf("service %q %s", ps.name, fe)
	d.prog.writes++
	if err := d.pod.Services.Delete(svcKey(fe, 0)); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("%s: delete: %w", item, err)
	}
	keys := make([]podSvcKey, 0, len(ps.slots))
	for i := range ps.slots {
		keys = append(keys, svcKey(fe, uint16(i+1)))
	}
	var errs []error
	if err := del(&d.prog.writes, d.pod.Services, keys); err != nil {
		errs = append(errs, fmt.Errorf("%s: delete slots: %w", item, err))
	}
	d.prog.writes++
	if err := d.pod.Revnat.Delete(ps.revNatID); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		errs = append(errs, fmt.Errorf("%s: delete rev-NAT entry: %w", item, err))
	}
	d.setRefs(ps.refs, nil)
	delete(d.prog.services, fe)
	delete(d.prog.revNat, ps.revNatID)
	return errors.Join(errs...)
}

// --- endpoints and policy --------------------------------------------------

func (d *Datapath) applyEndpoints(endpoints []state.Endpoint) error {
	want := make(map[uint16]*state.Endpoint, len(endpoints))
	for i := range endpoints {
		want[endpoints[i].ID] = &endpoints[i]
	}
	var errs []error
	for id, pe := range d.prog.endpoints {
		if _, ok := want[id]; !ok {
			if err := d.removeEndpoint(id, pe); err != nil {
				errs = append(errs, err)
			}
		}
	}
	if len(endpoints) == 0 {
		return errors.Join(errs...)
	}
	// One dump of the namespace's links per Apply: it finds new
	// interfaces and notices a pod's veth that was re-created under the
	// same name (a new ifindex, without our programs).
	links, err := netlink.LinkList()
	if err != nil {
		return errors.Join(append(errs, fmt.Errorf("list interfaces: %w", err))...)
	}
	byName := make(map[string]*netlink.LinkAttrs, len(links))
	for _, l := range links {
		byName[l.Attrs().Name] = l.Attrs()
	}
	for _, ep := range endpoints {
		if err := d.applyEndpoint(ep, byName[ep.Interface]); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func (d *Datapath) removeEndpoint(id uint16, pe *progEndpoint) error {
	item := fmt.Sprintf("endpoint %d (%s)", id, pe.ip)
	var errs []error
	// Detach first: with the programs gone the pod is cut off, rather
	// than its packets being dropped as coming from an unknown source.
	if err := pe.detach(); err != nil {
		errs = append(errs, fmt.Errorf("%s: detach: %w", item, err))
	}
	for _, ip := range append([]netip.Addr{pe.ip}, pe.staleIPs...) {
		if !ip.IsValid() {
			continue // read back from pinned links or policy alone
		}
		ipKey := be32(ip)
		d.prog.writes++
		if err := d.pod.Endpoints.Delete(&ipKey); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			errs = append(errs, fmt.Errorf("%s: delete: %w", item, err))
		}
	}
	if err := del(&d.prog.writes, d.pod.Policy, slices.Collect(mapKeys(pe.policy))); err != nil {
		errs = append(errs, fmt.Errorf("%s: delete policy: %w", item, err))
	}
	delete(d.prog.endpoints, id)
	return errors.Join(errs...)
}

func mapKeys[K comparable, V any](m map[K]V) func(func(K) bool) {
	return func(yield func(K) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

// applyEndpoint programs one endpoint; link is its interface (nil if the
// namespace has none of that name).
func (d *Datapath) applyEndpoint(ep state.Endpoint, link *netlink.LinkAttrs) error {
	item := fmt.Sprintf("endpoint %d (%s)", ep.ID, ep.IP)
	if link == nil {
		return fmt.Errorf("%s: interface %q not found", item, ep.Interface)
	}
	pe := d.prog.endpoints[ep.ID]
	if pe == nil {
		pe = &progEndpoint{}
	}
	next := *pe // what pe becomes once every step succeeded
	next.iface, next.ifindex = ep.Interface, link.Index
	next.value.Mac = macOf(link.HardwareAddr)

	// Policy: new entries before the endpoint says it is enforced, stale
	// ones removed after, so a change never denies what both old and new
	// policy allow.
	wantPolicy, flags := policyEntries(ep.ID, ep.Policy)
	var addKeys []podPolicyKey
	for k := range wantPolicy {
		if _, ok := pe.policy[k]; !ok {
			addKeys = append(addKeys, k)
		}
	}
	addVals := make([]podPolicyValue, len(addKeys))
	for i := range addVals {
		addVals[i].Allow = 1
	}
	if n, err := put(&d.prog.writes, d.pod.Policy, addKeys, addVals); err != nil {
		_ = del(&d.prog.writes, d.pod.Policy, addKeys[:n])
		return d.mapErr("policy", item+" policy", err)
	}

	next.ip = ep.IP
	next.value.Ifindex = uint32(next.ifindex)
	next.value.Identity = ep.Identity
	next.value.Id = ep.ID
	next.value.Flags = flags
	if next.value != pe.value || next.ip != pe.ip {
		ipKey := be32(ep.IP)
		d.prog.writes++
		if err := d.pod.Endpoints.Put(&ipKey, &next.value); err != nil {
			_ = del(&d.prog.writes, d.pod.Policy, addKeys)
			return d.mapErr("endpoints", item, err)
		}
		if pe.ip.IsValid() && pe.ip != ep.IP {
			oldKey := be32(pe.ip)
			d.prog.writes++
			_ = d.pod.Endpoints.Delete(&oldKey)
		}
	}
	for _, ip := range pe.staleIPs {
		if ip != ep.IP {
			k := be32(ip)
			d.prog.writes++
			_ = d.pod.Endpoints.Delete(&k)
		}
	}
	next.staleIPs = nil

	var errs []error
	if pe.ingress == nil || pe.egress == nil || pe.ifindex != next.ifindex {
		_ = pe.detach()
		next.ingress, next.egress = nil, nil
		in, err := d.attachPinned(d.pod.FromContainer, progFromContainer, ep.ID, next.ifindex, ebpf.AttachTCXIngress)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: attach to %q ingress: %w", item, ep.Interface, err))
		} else {
			out, err := d.attachPinned(d.pod.ToContainer, progToContainer, ep.ID, next.ifindex, ebpf.AttachTCXEgress)
			if err != nil {
				_ = detachLink(in)
				errs = append(errs, fmt.Errorf("%s: attach to %q egress: %w", item, ep.Interface, err))
			} else {
				next.ingress, next.egress = in, out
			}
		}
	}

	var stale []podPolicyKey
	for k := range pe.policy {
		if _, ok := wantPolicy[k]; !ok {
			stale = append(stale, k)
		}
	}
	if err := del(&d.prog.writes, d.pod.Policy, stale); err != nil {
		errs = append(errs, fmt.Errorf("%s: delete stale policy: %w", item, err))
	}
	next.policy = wantPolicy
	d.prog.endpoints[ep.ID] = &next
	return errors.Join(errs...)
}

func macOf(hw net.HardwareAddr) [6]uint8 {
	var m [6]uint8
	copy(m[:], hw)
	return m
}
