package datapath

import (
	"cmp"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"

	"github.com/cilium/ebpf"

	"github.com/meshbed/meshbed/datapath/state"
)

// restore rebuilds what this Datapath believes is programmed (the base of
// Apply's diff) from the maps an earlier Datapath pinned and the links
// adoptLinks took over. The first Apply then writes only what differs: a
// service that is still wanted keeps its rev-NAT ID, and its backends keep
// their IDs and slots, which is what the connection tracking entries of
// established connections point at.
//
// An agent that died in the middle of a write may have left entries no
// lookup can reach (slots past a frontend's count or without a frontend,
// rev-NAT entries of no frontend); restore deletes those, and repairs what
// a lookup would miss (a frontend's rev-NAT entry). Service names are not
// in the maps: they come back with the first Apply.
func (d *Datapath) restore(links map[uint16]*endpointLinks) error {
	if err := d.restoreServices(); err != nil {
		return fmt.Errorf("datapath: read back services: %w", err)
	}
	if err := d.restoreIPCache(); err != nil {
		return fmt.Errorf("datapath: read back ipcache: %w", err)
	}
	if err := d.restoreEndpoints(links); err != nil {
		return fmt.Errorf("datapath: read back endpoints: %w", err)
	}
	restored, err := d.restoredState()
	if err != nil {
		return fmt.Errorf("datapath: read back connection tracking: %w", err)
	}
	d.restored = restored
	if len(d.prog.services)+len(d.prog.ipcache)+len(d.prog.endpoints) == 0 && d.overlayLink == nil {
		d.log.Info("pinning datapath", "path", d.opts.PinPath)
		return nil
	}
	d.log.Info("took over pinned datapath", "path", d.opts.PinPath,
		"services", len(d.prog.services), "backends", len(d.prog.backends),
		"ipcache", len(d.prog.ipcache), "endpoints", len(d.prog.endpoints),
		"overlay", d.overlayLink != nil)
	return nil
}

// ctScopeService is CT_SCOPE_SERVICE (bpf/lib/maps.h): the entry of a
// client's connection to a frontend, naming the backend it was given.
const ctScopeService = 3

// restoredState describes the services and ipcache New took over as a
// desired state (see Restored). A terminating backend has no slot, so the
// maps alone do not say whose it is; connection tracking does, for exactly
// the terminating backends that matter: those connections still use. Those
// become references of their service, so that they are not deleted before
// the first Apply says whether they are still wanted.
func (d *Datapath) restoredState() (*state.State, error) {
	byRevNat := make(map[uint16]state.Frontend, len(d.prog.services))
	inSlot := make(map[uint32]bool)
	for fe, ps := range d.prog.services {
		byRevNat[ps.revNatID] = fe
		for _, id := range ps.slots {
			inSlot[id] = true
		}
	}
	terminating := make(map[state.Frontend]map[uint32]bool)
	err := iterate(d.pod.Conntrack, func(k podCtKey, v podCtEntry) {
		fe, ok := byRevNat[v.RevNatId]
		if k.Scope != ctScopeService || !ok || inSlot[v.BackendId] || d.prog.strayBackends[v.BackendId] {
			return
		}
		if _, ok := d.prog.backendIDs[v.BackendId]; !ok {
			return
		}
		if terminating[fe] == nil {
			terminating[fe] = make(map[uint32]bool)
		}
		terminating[fe][v.BackendId] = true
	})
	// Connections come and go while the programs run: a walk the kernel
	// cut short still found what it found.
	if err != nil && !errors.Is(err, ebpf.ErrIterationAborted) {
		return nil, err
	}

	s := &state.State{}
	toState := func(id uint32, st state.BackendState) state.Backend {
		k := d.prog.backendIDs[id]
		return state.Backend{IP: k.addr, Port: k.port, Protocol: k.proto, ClusterID: k.cluster, State: st}
	}
	for _, fe := range slices.SortedFunc(maps.Keys(d.prog.services), compareFrontends) {
		ps := d.prog.services[fe]
		svc := state.Service{Frontend: fe}
		for _, id := range ps.slots {
			if _, ok := d.prog.backendIDs[id]; ok && !d.prog.strayBackends[id] {
				svc.Backends = append(svc.Backends, toState(id, state.BackendActive))
			}
		}
		for _, id := range slices.Sorted(maps.Keys(terminating[fe])) {
			svc.Backends = append(svc.Backends, toState(id, state.BackendTerminating))
			k := d.prog.backendIDs[id]
			ps.refs = append(ps.refs, k)
			d.prog.backends[k].refs++
		}
		s.Services = append(s.Services, svc)
	}
	for k, v := range d.prog.ipcache {
		e := state.IPCacheEntry{Prefix: ipcachePrefix(k), Identity: v.Identity, ClusterID: v.ClusterId}
		if v.TunnelEndpoint != 0 {
			e.TunnelEndpoint = addrFromBE32(v.TunnelEndpoint)
		}
		s.IPCache = append(s.IPCache, e)
	}
	slices.SortFunc(s.IPCache, func(a, b state.IPCacheEntry) int {
		if c := a.Prefix.Addr().Compare(b.Prefix.Addr()); c != 0 {
			return c
		}
		return cmp.Compare(a.Prefix.Bits(), b.Prefix.Bits())
	})
	return s, nil
}

// Restored returns the services and ipcache entries that New took over
// from PinPath, as a desired state (nil without PinPath). Service names are
// not kept in the maps and are empty; a service's backends are its active
// ones in slot order, then the terminating ones that connections still use.
//
// It is for an agent that restarted: until its own view is complete (remote
// clusters not yet synced), applying Restored's services and remote ipcache
// entries instead of nothing keeps established connections and their
// backends, where an incomplete state would delete them.
func (d *Datapath) Restored() *state.State {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.restored == nil {
		return nil
	}
	out := &state.State{IPCache: slices.Clone(d.restored.IPCache)}
	for _, svc := range d.restored.Services {
		svc.Backends = slices.Clone(svc.Backends)
		out.Services = append(out.Services, svc)
	}
	return out
}

// iterate calls fn for every entry of m.
func iterate[K, V any](m *ebpf.Map, fn func(K, V)) error {
	var k K
	var v V
	it := m.Iterate()
	for it.Next(&k, &v) {
		fn(k, v)
	}
	return it.Err()
}

func frontendOf(k podSvcKey) state.Frontend {
	return state.Frontend{IP: addrFromBE32(k.Addr), Port: portFromBE16(k.Port), Protocol: state.Protocol(k.Proto)}
}

func compareFrontends(a, b state.Frontend) int {
	if c := a.IP.Compare(b.IP); c != 0 {
		return c
	}
	if c := cmp.Compare(a.Port, b.Port); c != 0 {
		return c
	}
	return cmp.Compare(a.Protocol, b.Protocol)
}

func (d *Datapath) restoreServices() error {
	masters := make(map[state.Frontend]podSvcValue)
	slots := make(map[state.Frontend]map[uint16]uint32)
	err := iterate(d.pod.Services, func(k podSvcKey, v podSvcValue) {
		fe := frontendOf(k)
		if k.Slot == 0 {
			masters[fe] = v
			return
		}
		if slots[fe] == nil {
			slots[fe] = make(map[uint16]uint32)
		}
		slots[fe][k.Slot] = v.BackendId
	})
	if err != nil {
		return err
	}
	revnat := make(map[uint16]podRevnatValue)
	if err := iterate(d.pod.Revnat, func(k uint16, v podRevnatValue) { revnat[k] = v }); err != nil {
		return err
	}
	backends := make(map[uint32]podBackend)
	if err := iterate(d.pod.Backends, func(k uint32, v podBackend) { backends[k] = v }); err != nil {
		return err
	}

	var unreachable []podSvcKey // slots no lookup reaches
	frontends := slices.SortedFunc(maps.Keys(masters), compareFrontends)
	for _, fe := range frontends {
		m := masters[fe]
		if _, dup := d.prog.revNat[m.RevNatId]; m.RevNatId == 0 || dup {
			// Not written by a Datapath: drop it, Apply re-creates it.
			d.log.Warn("deleting pinned frontend with an invalid rev-NAT ID", "frontend", fe.String(), "rev_nat_id", m.RevNatId)
			unreachable = append(unreachable, svcKey(fe, 0))
			for slot := range slots[fe] {
				unreachable = append(unreachable, svcKey(fe, slot))
			}
			delete(masters, fe)
			continue
		}
		ps := &progService{revNatID: m.RevNatId, slots: make([]uint32, m.Count)}
		for slot, id := range slots[fe] {
			if slot > m.Count {
				unreachable = append(unreachable, svcKey(fe, slot))
				continue
			}
			ps.slots[slot-1] = id // a missing slot stays 0 and is rewritten by Apply
		}
		want := podRevnatValue{Addr: be32(fe.IP), Port: be16(fe.Port)}
		if got, ok := revnat[m.RevNatId]; !ok || got != want {
			if err := d.pod.Revnat.Put(m.RevNatId, &want); err != nil {
				return fmt.Errorf("repair rev-NAT entry %d of %s: %w", m.RevNatId, fe, err)
			}
		}
		d.prog.services[fe] = ps
		d.prog.revNat[m.RevNatId] = ""
		d.prog.nextRevNat = max(d.prog.nextRevNat, m.RevNatId)
	}
	for fe, s := range slots {
		if _, ok := masters[fe]; !ok {
			for slot := range s {
				unreachable = append(unreachable, svcKey(fe, slot))
			}
		}
	}
	var staleRevNat []uint16
	for id := range revnat {
		if _, ok := d.prog.revNat[id]; !ok {
			staleRevNat = append(staleRevNat, id)
		}
	}
	if err := errors.Join(del(&d.prog.writes, d.pod.Services, unreachable), del(&d.prog.writes, d.pod.Revnat, staleRevNat)); err != nil {
		return fmt.Errorf("delete unreachable entries: %w", err)
	}

	// Backends. Slots refer to them by ID; Apply by key. A key should
	// have one ID; if it has several, the one a slot uses wins.
	slotRefs := make(map[uint32]bool)
	for _, ps := range d.prog.services {
		for _, id := range ps.slots {
			slotRefs[id] = true
		}
	}
	ids := slices.Sorted(maps.Keys(backends))
	var unused []uint32
	for _, id := range ids {
		v := backends[id]
		k := backendKey{addr: addrFromBE32(v.Addr), port: portFromBE16(v.Port), proto: state.Protocol(v.Proto), cluster: v.ClusterId}
		d.prog.nextBackendID = max(d.prog.nextBackendID, id)
		pb, dup := d.prog.backends[k]
		switch {
		case !dup:
			d.prog.backends[k] = &progBackend{id: id, value: v}
		case slotRefs[id] && !slotRefs[pb.id]:
			d.prog.backends[k] = &progBackend{id: id, value: v}
			d.prog.strayBackends[pb.id] = true // unused, deleted below
		case slotRefs[id]:
			d.prog.strayBackends[id] = true
		default:
			unused = append(unused, id)
			continue
		}
		d.prog.backendIDs[id] = k
	}
	for id := range d.prog.strayBackends {
		if !slotRefs[id] {
			unused = append(unused, id)
			delete(d.prog.strayBackends, id)
			delete(d.prog.backendIDs, id)
		}
	}
	if len(d.prog.strayBackends) > 0 || len(unused) > 0 {
		d.log.Warn("pinned backends map has keys under several IDs", "kept_while_in_slots", len(d.prog.strayBackends), "deleted", len(unused))
	}
	if err := del(&d.prog.writes, d.pod.Backends, unused); err != nil {
		return fmt.Errorf("delete duplicate backends: %w", err)
	}
	// References: what the slots hold. Terminating backends have no slot;
	// the first Apply gives them back to their services, and deletes the
	// backends nobody wants.
	for _, ps := range d.prog.services {
		for _, id := range ps.slots {
			k, ok := d.prog.backendIDs[id]
			if !ok || d.prog.strayBackends[id] || slices.Contains(ps.refs, k) {
				continue
			}
			ps.refs = append(ps.refs, k)
			d.prog.backends[k].refs++
		}
	}
	return nil
}

func (d *Datapath) restoreIPCache() error {
	return iterate(d.pod.Ipcache, func(k podIpcacheKey, v podIpcacheValue) { d.prog.ipcache[k] = v })
}

func (d *Datapath) restoreEndpoints(links map[uint16]*endpointLinks) error {
	get := func(id uint16) *progEndpoint {
		pe := d.prog.endpoints[id]
		if pe == nil {
			pe = &progEndpoint{}
			d.prog.endpoints[id] = pe
		}
		return pe
	}
	type entry struct {
		ip netip.Addr
		v  podEndpoint
	}
	var entries []entry
	err := iterate(d.pod.Endpoints, func(k uint32, v podEndpoint) {
		entries = append(entries, entry{addrFromBE32(k), v})
	})
	if err != nil {
		return err
	}
	slices.SortFunc(entries, func(a, b entry) int { return a.ip.Compare(b.ip) })
	for _, e := range entries {
		pe := get(e.v.Id)
		if pe.ip.IsValid() {
			pe.staleIPs = append(pe.staleIPs, e.ip)
			continue
		}
		pe.ip, pe.value, pe.ifindex = e.ip, e.v, int(e.v.Ifindex)
	}
	err = iterate(d.pod.Policy, func(k podPolicyKey, _ podPolicyValue) {
		pe := get(k.EndpointId)
		if pe.policy == nil {
			pe.policy = make(map[podPolicyKey]struct{})
		}
		pe.policy[k] = struct{}{}
	})
	if err != nil {
		return err
	}
	for id, el := range links {
		pe := get(id)
		pe.ingress, pe.egress, pe.ifindex = el.ingress, el.egress, el.ifindex
	}
	return nil
}
