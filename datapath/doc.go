// Package datapath is meshbed's eBPF datapath: it loads the programs built
// from bpf/ (via bpf2go), attaches them to a node's interfaces with tcx, and
// reconciles the BPF maps to the desired state the agent computes
// (state.State). It never decides anything about the mesh itself.
//
// # Programs
//
//   - from_container, tcx ingress of each pod's host-side veth (traffic the pod
//     sends): source check, service load balancing (DNAT to a random backend,
//     pinned per connection in conntrack), egress policy by destination
//     identity, then delivery to a local pod (bpf_redirect_peer), into the
//     VXLAN device (collect-metadata mode, the source security identity in the
//     VNI, the tunnel endpoint from the ipcache), or to the host stack (native
//     routing and destinations outside the mesh).
//   - to_container, tcx egress of the same veth (traffic the host stack routes
//     to the pod): ingress policy by source identity from the ipcache and
//     reverse NAT of service replies. Packets from local pods and from the
//     overlay run the same checks inline before bpf_redirect_peer and never
//     reach this hook.
//   - from_overlay, tcx ingress of the VXLAN device: the source identity is
//     the VNI of the tunnel key; then the same pod-ingress checks.
//
// IPv4 only for now: other EtherTypes pass to the host stack untouched.
//
// # Maps and sizes
//
//	map        type       key -> value                                   max entries
//	services   hash       {frontend ip,port,proto, slot} -> backend/count  262144 (frontends + active backends)
//	backends   hash       backend ID -> ip, port, proto, state, cluster    131072
//	revnat     hash       rev-NAT ID -> frontend ip, port                  65536
//	conntrack  LRU hash   {tuple, scope} -> backend, rev-NAT ID, flags,    65536 (Options.ConntrackEntries)
//	                      flow cache (see below)
//	ipcache    LPM trie   prefix -> identity, tunnel endpoint, cluster     524288
//	endpoints  hash       pod IP -> ifindex, identity, endpoint ID, flags  65536
//	policy     LPM trie   {identity, endpoint, dir, proto, port} -> allow  262144
//	metrics    per-CPU    reason -> packets, bytes                         64
//	events     ring buf   flow events: drops, first packet of a connection 256 KiB (Options.EventBufferBytes)
//	config     array      node settings (VXLAN ifindex, routing, cluster,  1
//	                      revision)
//
// The agent-written hash maps and tries are not preallocated, so a node pays
// kernel memory only for the entries it has; conntrack is an LRU map and
// preallocated, which is why its size is an option.
//
// Services follow Cilium's layout: slot 0 of a frontend is the master entry
// holding the number of active backends and the rev-NAT ID; slots 1..n hold
// one backend ID each. A backend is chosen with two lookups whatever the
// size of the table. Terminating backends get no slot but stay in the
// backends map, so established connections keep them.
//
// # The flow cache
//
// A connection's first packet takes the full path of from_container:
// endpoint (source check), service, backend, endpoint or ipcache of the
// destination, conntrack, policy. What it decided is kept in the
// connection's conntrack entry (its SERVICE entry for a service, its EGRESS
// entry otherwise): the backend's address and port, the identities, the
// tunnel endpoint, that policy allowed it, the veth the source was checked
// on, and the revision of the maps it was decided under (config.revision).
// The connection's next packets find all of it in one conntrack lookup
// and skip the rest, unless the entry's revision is not the current one:
// Apply bumps the revision whenever it wrote a map, so no cached verdict,
// backend or route outlives a change of policy, services, backends,
// endpoints or ipcache, and each connection's next packet takes the full
// path again (keeping its backend while that exists). New starts from a
// revision no entry has. Packets that would change conntrack (SYN, FIN,
// RST, a first ACK), replies, trace mode, and one packet every
// CT_CACHE_JIFFIES (0.1 to 1 s) per connection, which keeps its entries
// fresh, take the full path. Headers are read in place, NAT computes the
// checksums itself (by the skb's ip_summed) and writes once: helper calls
// are most of a packet's cost.
//
// Policy is an LPM trie keyed by {peer identity, endpoint ID, direction,
// protocol, port}: an entry for "any protocol" is a prefix that stops before
// the protocol, "any port" stops before the port, and a port range is split
// into aligned power-of-two blocks, one prefix each (at most 30 for any
// range). A packet is looked up twice: with the peer's identity and with
// identity 0 (any peer). An endpoint without policy in a direction allows
// everything in that direction; replies of allowed connections always pass.
//
// # Reconciliation
//
// Apply validates the whole state before touching a map, then diffs it
// against what this Datapath programmed and writes only the difference.
// A service is changed so that a concurrent lookup always sees a complete
// backend set: new backends and slots are written first, then the master
// slot count is flipped, then what is no longer needed is deleted. When a
// map is full the affected item keeps its earlier state and Apply returns an
// error wrapping ErrMapFull.
//
// Apply also attaches from_container and to_container (tcx) to the
// interface of every new endpoint, resolved by name in the calling thread's
// network namespace, and detaches them from endpoints that are gone.
// State.Nodes is not used here: routes to other nodes are the overlay
// package's business.
//
// # Restarts
//
// With Options.PinPath (meshbed-agent: --bpf-pin-dir) the maps, except the
// flow event ring, and the tcx links are pinned on a BPF filesystem. Close
// leaves them: the programs keep forwarding on the maps as they are while
// no agent runs. The next New reuses every map whose layout and size did
// not change (the others are replaced, and the log says so), switches each
// pinned link to its new program with one BPF_LINK_UPDATE (no moment with
// no program, nor with two), and reads the maps back as the base of
// Apply's diff. The first Apply after a restart therefore keeps every
// service that is still wanted with its rev-NAT ID, backend IDs and slots,
// so connection tracking entries stay valid and established connections,
// service connections included, carry on. This holds as long as that
// Apply is complete: a state without the services or remote ipcache entries
// the agent has not relearnt yet deletes them. Restored gives a restarted
// agent what was taken over, to apply until its own view is complete.
// Remove (or Uninstall, with no Datapath running) unpins and detaches
// everything.
//
// # Not (yet) handled
//
//   - IPv6.
//   - Hairpin traffic (a pod reaching itself through a service): it would
//     need source NAT.
//   - ICMP errors about NATed connections are not translated; non-first IP
//     fragments are judged on addresses alone (port 0).
//   - Without Options.PinPath nothing is pinned: closing the Datapath drops
//     connection tracking. The simulator runs so, since its Datapaths
//     outlive its agents; a real node pins (see Restarts).
package datapath
