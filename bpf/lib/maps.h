/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * maps.h declares every map of the datapath and the layout of their keys and
 * values. The Go side (datapath/) gets matching types from bpf2go, so a
 * layout change here shows up as a compile error there, not as garbage in a
 * map. Multi-byte fields named addr/port are in network byte order, the way
 * they appear in packets, so lookups need no conversion on the fast path.
 *
 * Hash maps written only by the agent use BPF_F_NO_PREALLOC: a node in the
 * simulator pays kernel memory for the entries it has, not for max_entries.
 * Conntrack is an LRU map (which must be preallocated) so a full table
 * evicts the oldest connection instead of failing new ones.
 */
#pragma once

#include "abi.h"
#include <bpf_helpers.h>

/* Sizes. The loader may lower (or raise) conntrack and ring buffer sizes. */
#define SERVICES_MAX 262144   /* frontends + one slot per active backend */
#define BACKENDS_MAX 131072
#define REVNAT_MAX 65536      /* rev-NAT IDs are 16 bits */
#define CT_MAX 65536
#define IPCACHE_MAX 524288
#define ENDPOINTS_MAX 65536   /* endpoint IDs are 16 bits */
#define POLICY_MAX 262144
#define EVENTS_BYTES (256 * 1024)
#define METRICS_MAX 64

/* config: one entry, written by the agent when it attaches the overlay or
 * changes the routing mode. A map rather than a constant so the collection can
 * be loaded before the VXLAN device exists. */
#define CFG_NATIVE_ROUTING (1U << 0) /* hand remote traffic to the host stack */
#define CFG_TRACE (1U << 1)          /* emit an event for every forwarded packet */

struct node_config {
	__u32 vxlan_ifindex;
	__u32 flags;
	__u32 cluster_id; /* this node's cluster, to tell cross-cluster flows */
	/* revision of the other maps' contents: the agent bumps it after every
	 * change of services, backends, endpoints, ipcache or policy. The flow
	 * cache of a conntrack entry holds for that revision only. Never 0. */
	__u32 revision;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct node_config);
} config SEC(".maps");

static __always_inline struct node_config *config_get(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&config, &zero);
}

/* services: Cilium-style slots. Slot 0 of a frontend is the master entry
 * with the number of active backends; slots 1..count hold one backend ID
 * each. Selecting a backend is one lookup of the master and one of a random
 * slot, whatever the size of the table. */
struct svc_key {
	__be32 addr;
	__be16 port;
	__u16 slot;
	__u8 proto;
	__u8 pad[3];
};

struct svc_value {
	__u32 backend_id; /* slots 1..count */
	__u16 count;      /* master: active backends */
	__u16 rev_nat_id; /* master: ID of the frontend for reverse NAT */
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, SERVICES_MAX);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct svc_key);
	__type(value, struct svc_value);
} services SEC(".maps");

#define BACKEND_ACTIVE 0
#define BACKEND_TERMINATING 1

struct backend {
	__be32 addr;
	__be16 port;
	__u8 proto;
	__u8 state;
	__u32 cluster_id;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, BACKENDS_MAX);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u32);
	__type(value, struct backend);
} backends SEC(".maps");

/* revnat: rev-NAT ID -> frontend, to rewrite replies from a backend so the
 * client sees them come from the address it connected to. */
struct revnat_value {
	__be32 addr;
	__be16 port;
	__u16 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, REVNAT_MAX);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u16);
	__type(value, struct revnat_value);
} revnat SEC(".maps");

/* conntrack: one entry per connection and scope. Keys hold the tuple in the
 * direction of the packet that opened the connection; a reply is found by
 * looking up the reversed tuple. */
#define CT_SCOPE_EGRESS 1  /* opened by a local pod (after service DNAT) */
#define CT_SCOPE_INGRESS 2 /* opened towards a local pod */
#define CT_SCOPE_SERVICE 3 /* client -> frontend, pins the chosen backend */

#define CT_F_CLOSING (1U << 0)    /* FIN or RST seen */
#define CT_F_REPLY_SEEN (1U << 1) /* the peer answered */

struct ct_key {
	__be32 saddr;
	__be32 daddr;
	__be16 sport;
	__be16 dport;
	__u8 proto;
	__u8 scope;
	__u16 pad;
};

/* ct_entry.cache */
#define CT_C_LOCAL (1U << 0) /* the destination is an endpoint of this node */

struct ct_entry {
	__u64 last_seen; /* bpf_ktime_get_coarse_ns */
	__u32 backend_id;
	__u16 rev_nat_id;
	__u8 flags;
	__u8 cache; /* CT_C_* */
	/* The flow cache (conntrack.h, ct_cache_set): what from_container
	 * decided for the opening direction of the connection, valid while
	 * revision equals node_config.revision (0: nothing cached). Set on
	 * the connection's SERVICE entry for a service, on its EGRESS entry
	 * otherwise. It holds only verdicts that forwarded (policy allowed). */
	__u32 revision;
	__u32 src_ifindex;  /* the veth the source was checked on */
	__u32 src_identity;
	__u32 dst_identity;
	__be32 tunnel_endpoint; /* of the destination, 0: none */
	__be32 nat_addr;        /* service: the backend's address ... */
	__be16 nat_port;        /* ... and port */
	__u16 src_endpoint_id;
	__u16 dst_cluster;
	__u16 backend_cluster;
	/* jiffies (low 32 bits) when the full path last took a packet of the
	 * connection: the cache is used for CT_CACHE_JIFFIES after. */
	__u32 cache_jiffies;
	__u32 pad2;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, CT_MAX);
	__type(key, struct ct_key);
	__type(value, struct ct_entry);
} conntrack SEC(".maps");

/* ipcache: what lives at an address (longest prefix wins). */
#define IPCACHE_PREFIX_BITS 32

struct ipcache_key {
	__u32 prefixlen;
	__be32 addr;
};

struct ipcache_value {
	__u32 identity;
	__be32 tunnel_endpoint; /* 0: local or reached without a tunnel */
	__u32 cluster_id;       /* 0: outside the mesh (world) */
};

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, IPCACHE_MAX);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct ipcache_key);
	__type(value, struct ipcache_value);
} ipcache SEC(".maps");

/* endpoints: pods on this node, by IP. */
#define EP_F_INGRESS_ENFORCED (1U << 0)
#define EP_F_EGRESS_ENFORCED (1U << 1)

struct endpoint {
	__u32 ifindex;  /* host-side veth */
	__u32 identity;
	__u16 id;
	__u8 flags;
	__u8 pad;
	__u8 mac[6]; /* host-side veth MAC: source of frames we deliver */
	__u16 pad2;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, ENDPOINTS_MAX);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __be32);
	__type(value, struct endpoint);
} endpoints SEC(".maps");

/* policy: an LPM trie so one lookup covers a port range and protocol
 * wildcards. The key's leading bits (identity, endpoint, direction) always
 * match exactly; a rule covers the protocol (prefix 64) or not (prefix 56),
 * and a port range is split into aligned power-of-two blocks, each a prefix
 * over the big-endian port. The peer wildcard (identity 0) is a second
 * lookup. Presence of an entry means allow. */
#define POLICY_FIXED_BITS 56
#define POLICY_FULL_BITS 80

struct policy_key {
	__u32 prefixlen;
	__u32 identity; /* peer; 0 = any */
	__u16 endpoint_id;
	__u8 direction; /* 0 ingress, 1 egress (state.Direction) */
	__u8 proto;
	__be16 port;
	__u16 pad;
};

struct policy_value {
	__u8 allow;
	__u8 pad[3];
};

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, POLICY_MAX);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct policy_key);
	__type(value, struct policy_value);
} policy SEC(".maps");
