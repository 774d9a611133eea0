package datapath

import (
	"cmp"
	"errors"
	"fmt"
	"slices"

	"github.com/cilium/ebpf"

	"github.com/meshbed/meshbed/datapath/state"
)

// Counter is a packet and byte count.
type Counter struct {
	Packets, Bytes uint64
}

// Counters returns the datapath's counters by reason, summed over CPUs.
// Reasons that never occurred are absent.
func (d *Datapath) Counters() (map[Reason]Counter, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil, ErrClosed
	}
	out := make(map[Reason]Counter)
	var perCPU []podMetric
	for i := uint32(0); i < d.pod.Metrics.MaxEntries(); i++ {
		if err := d.pod.Metrics.Lookup(i, &perCPU); err != nil {
			return nil, fmt.Errorf("datapath: read counter %d: %w", i, err)
		}
		var c Counter
		for _, m := range perCPU {
			c.Packets += m.Packets
			c.Bytes += m.Bytes
		}
		if c.Packets != 0 {
			out[Reason(i)] = c
		}
	}
	return out, nil
}

// MapFullErrors returns, per map name, how many writes of Apply failed
// because the map was full.
func (d *Datapath) MapFullErrors() map[string]uint64 {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := make(map[string]uint64, len(d.prog.mapFull))
	for k, v := range d.prog.mapFull {
		out[k] = v
	}
	return out
}

// ServiceEntry is a frontend as read back from the services map.
type ServiceEntry struct {
	// Name is the service name this Datapath programmed the frontend for
	// ("" if the map holds a frontend it did not write).
	Name     string
	Frontend state.Frontend
	RevNATID uint16
	// Backends are the active backends in slot order (slot i+1).
	Backends []BackendEntry
}

// BackendEntry is a backend as read back from the backends map.
type BackendEntry struct {
	ID uint32
	state.Backend
}

// DumpServices lists every frontend in the services map with the backends
// of its slots, read from the maps themselves (not from what Apply
// remembers), sorted by frontend.
func (d *Datapath) DumpServices() ([]ServiceEntry, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil, ErrClosed
	}
	type feKey struct{ addr, port, proto uint32 }
	masters := make(map[feKey]podSvcValue)
	slots := make(map[feKey]map[uint16]uint32)
	var k podSvcKey
	var v podSvcValue
	it := d.pod.Services.Iterate()
	for it.Next(&k, &v) {
		fk := feKey{k.Addr, uint32(k.Port), uint32(k.Proto)}
		if k.Slot == 0 {
			masters[fk] = v
			continue
		}
		if slots[fk] == nil {
			slots[fk] = make(map[uint16]uint32)
		}
		slots[fk][k.Slot] = v.BackendId
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("datapath: dump services: %w", err)
	}

	out := make([]ServiceEntry, 0, len(masters))
	for fk, m := range masters {
		fe := state.Frontend{IP: addrFromBE32(fk.addr), Port: portFromBE16(uint16(fk.port)), Protocol: state.Protocol(fk.proto)}
		se := ServiceEntry{Frontend: fe, RevNATID: m.RevNatId, Name: d.prog.revNat[m.RevNatId]}
		for slot := uint16(1); slot <= m.Count; slot++ {
			id, ok := slots[fk][slot]
			if !ok {
				return nil, fmt.Errorf("datapath: dump services: %s slot %d missing", fe, slot)
			}
			var b podBackend
			if err := d.pod.Backends.Lookup(id, &b); err != nil {
				return nil, fmt.Errorf("datapath: dump services: %s slot %d backend %d: %w", fe, slot, id, err)
			}
			se.Backends = append(se.Backends, BackendEntry{ID: id, Backend: state.Backend{
				IP:        addrFromBE32(b.Addr),
				Port:      portFromBE16(b.Port),
				Protocol:  state.Protocol(b.Proto),
				ClusterID: b.ClusterId,
				State:     state.BackendState(b.State),
			}})
		}
		out = append(out, se)
	}
	slices.SortFunc(out, func(a, b ServiceEntry) int {
		if c := a.Frontend.IP.Compare(b.Frontend.IP); c != 0 {
			return c
		}
		if c := cmp.Compare(a.Frontend.Port, b.Frontend.Port); c != 0 {
			return c
		}
		return cmp.Compare(a.Frontend.Protocol, b.Frontend.Protocol)
	})
	return out, nil
}

// DumpIPCache lists the ipcache map's entries sorted by prefix.
func (d *Datapath) DumpIPCache() ([]state.IPCacheEntry, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil, ErrClosed
	}
	var out []state.IPCacheEntry
	var k podIpcacheKey
	var v podIpcacheValue
	it := d.pod.Ipcache.Iterate()
	for it.Next(&k, &v) {
		e := state.IPCacheEntry{Prefix: ipcachePrefix(k), Identity: v.Identity, ClusterID: v.ClusterId}
		if v.TunnelEndpoint != 0 {
			e.TunnelEndpoint = addrFromBE32(v.TunnelEndpoint)
		}
		out = append(out, e)
	}
	if err := it.Err(); err != nil && !errors.Is(err, ebpf.ErrIterationAborted) {
		return nil, fmt.Errorf("datapath: dump ipcache: %w", err)
	}
	slices.SortFunc(out, func(a, b state.IPCacheEntry) int {
		if c := a.Prefix.Addr().Compare(b.Prefix.Addr()); c != 0 {
			return c
		}
		return cmp.Compare(a.Prefix.Bits(), b.Prefix.Bits())
	})
	return out, nil
}
