/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * conntrack.h: connection tracking. It answers one question per packet and
 * scope: does this packet open a connection (NEW), continue one in the
 * direction it was opened (ESTABLISHED), or answer one (REPLY)? Replies skip
 * policy, and replies to service connections are reverse-NATed.
 *
 * Scopes keep the two ends of a pod-to-pod connection on the same node apart:
 * the client's egress entry must not make the server's ingress policy think
 * the connection was already allowed.
 *
 * There is no garbage collector: expired entries read as missing and are
 * overwritten, and the LRU map evicts the least recently used when full.
 */
#pragma once

#include "abi.h"
#include "maps.h"
#include "packet.h"

#define NSEC_PER_SEC 1000000000ULL
#define CT_LIFETIME_TCP (21600ULL * NSEC_PER_SEC)  /* established TCP */
#define CT_LIFETIME_OTHER (60ULL * NSEC_PER_SEC)   /* UDP, ICMP, unanswered SYN */
#define CT_LIFETIME_CLOSING (10ULL * NSEC_PER_SEC) /* after FIN or RST */
/* last_seen is refreshed at most this often: writing a shared cache line on
 * every packet costs more than the precision is worth. */
#define CT_REFRESH_INTERVAL (1ULL * NSEC_PER_SEC)

/* ct_now is the conntrack clock. Coarse (a tick behind at worst) because
 * lifetimes are seconds, and it costs a fraction of bpf_ktime_get_ns. */
static __always_inline __u64 ct_now(void)
{
	return bpf_ktime_get_coarse_ns();
}

/* ct_age is how long ago t was, 0 if it is in the future (an entry written
 * with a finer clock, by an earlier version of the datapath). */
static __always_inline __u64 ct_age(__u64 t, __u64 now)
{
	return (__s64)(now - t) > 0 ? now - t : 0;
}

enum ct_status {
	CT_NEW = 0,
	CT_ESTABLISHED = 1,
	CT_REPLY = 2,
};

static __always_inline void ct_key_from(struct ct_key *k, const struct pkt *p, __u8 scope,
					bool reverse)
{
	if (reverse) {
		k->saddr = p->daddr;
		k->daddr = p->saddr;
		k->sport = p->dport;
		k->dport = p->sport;
	} else {
		k->saddr = p->saddr;
		k->daddr = p->daddr;
		k->sport = p->sport;
		k->dport = p->dport;
	}
	k->proto = p->proto;
	k->scope = scope;
	k->pad = 0;
}

/* ct_opens reports whether p opens a connection whatever the table says: a
 * SYN without ACK. On a tuple the table still holds (a client that reused
 * its port while the old entry was closing) it is a new connection, and
 * ct_touch reopens the entry; flow events must report it as new too. */
static __always_inline bool ct_opens(const struct pkt *p)
{
	return p->proto == IPPROTO_TCP && (p->tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK)) == TCP_FLAG_SYN;
}

static __always_inline bool ct_expired(const struct ct_entry *e, __u8 proto, __u64 now)
{
	__u64 lifetime = CT_LIFETIME_OTHER;

	if (e->flags & CT_F_CLOSING)
		lifetime = CT_LIFETIME_CLOSING;
	else if (proto == IPPROTO_TCP && (e->flags & CT_F_REPLY_SEEN))
		lifetime = CT_LIFETIME_TCP;
	return ct_age(e->last_seen, now) > lifetime;
}

/* ct_touch records activity on an entry the packet matched. */
static __always_inline void ct_touch(struct ct_entry *e, const struct pkt *p, bool reply, __u64 now)
{
	__u8 flags = e->flags;

	if (p->tcp_flags & (TCP_FLAG_FIN | TCP_FLAG_RST))
		flags |= CT_F_CLOSING;
	else if (p->tcp_flags & TCP_FLAG_SYN && !(p->tcp_flags & TCP_FLAG_ACK))
		/* a new SYN on a closing tuple reuses it for a new connection */
		flags &= ~(CT_F_CLOSING | CT_F_REPLY_SEEN);
	if (reply)
		flags |= CT_F_REPLY_SEEN;
	if (flags != e->flags)
		e->flags = flags;
	if (ct_age(e->last_seen, now) > CT_REFRESH_INTERVAL)
		e->last_seen = now;
}

/* ct_lookup classifies p in the forward scope fwd_scope; a reply is looked
 * for in rev_scope (the scope in which the other end opened it). On REPLY,
 * *entry points to the opening side's entry (for reverse NAT). */
static __always_inline enum ct_status ct_lookup(const struct pkt *p, __u8 fwd_scope, __u8 rev_scope,
						struct ct_entry **entry)
{
	struct ct_key k;
	struct ct_entry *e;
	__u64 now = ct_now();

	ct_key_from(&k, p, fwd_scope, false);
	e = bpf_map_lookup_elem(&conntrack, &k);
	if (e && !ct_expired(e, p->proto, now)) {
		ct_touch(e, p, false, now);
		*entry = e;
		return CT_ESTABLISHED;
	}
	ct_key_from(&k, p, rev_scope, true);
	e = bpf_map_lookup_elem(&conntrack, &k);
	if (e && !ct_expired(e, p->proto, now)) {
		ct_touch(e, p, true, now);
		*entry = e;
		return CT_REPLY;
	}
	*entry = NULL;
	return CT_NEW;
}

/* ct_cache holds the flow cache of a conntrack entry (see struct ct_entry);
 * revision 0 is an empty cache. */
struct ct_cache {
	__u32 revision;
	__u32 src_ifindex;
	__u32 src_identity;
	__u32 dst_identity;
	__be32 tunnel_endpoint;
	__be32 nat_addr;
	__be16 nat_port;
	__u16 src_endpoint_id;
	__u16 dst_cluster;
	__u16 backend_cluster;
	__u8 flags; /* CT_C_* */
	__u32 jiffies;
};

/* A connection's packets skip the full path for at most this many jiffies
 * (0.1 s at HZ=1000 to 1 s at HZ=100), which keeps its conntrack entries
 * refreshed (CT_REFRESH_INTERVAL) well within their lifetimes. Jiffies
 * rather than the conntrack clock: reading them costs no helper call (the
 * verifier inlines bpf_jiffies64). */
#define CT_CACHE_JIFFIES 100

static __always_inline __u32 ct_jiffies(void)
{
	return (__u32)bpf_jiffies64();
}

static __always_inline void ct_cache_copy(struct ct_entry *e, const struct ct_cache *c)
{
	e->cache = c->flags;
	e->src_ifindex = c->src_ifindex;
	e->src_identity = c->src_identity;
	e->dst_identity = c->dst_identity;
	e->tunnel_endpoint = c->tunnel_endpoint;
	e->nat_addr = c->nat_addr;
	e->nat_port = c->nat_port;
	e->src_endpoint_id = c->src_endpoint_id;
	e->dst_cluster = c->dst_cluster;
	e->backend_cluster = c->backend_cluster;
	e->cache_jiffies = c->jiffies;
}

/* ct_cache_set fills the flow cache of an entry in the map. The revision
 * goes last: a reader on another CPU that sees it sees the rest (x86 and
 * arm64 JITs keep the order of plain stores the compiler keeps; a reader
 * racing the first fill at worst takes the slow path). */
static __always_inline void ct_cache_set(struct ct_entry *e, const struct ct_cache *c)
{
	if (e->revision == c->revision && c->revision) {
		/* already cached for this revision: only the time */
		if (e->cache_jiffies != c->jiffies)
			e->cache_jiffies = c->jiffies;
		return;
	}
	e->revision = 0;
	barrier();
	ct_cache_copy(e, c);
	barrier();
	e->revision = c->revision;
}

/* ct_create_key creates the entry k; c, if not NULL, is its flow cache. */
static __always_inline void ct_create_key(const struct ct_key *k, const struct pkt *p, __u32 backend_id,
					  __u16 rev_nat_id, const struct ct_cache *c)
{
	struct ct_entry e = {
		.last_seen = ct_now(),
		.backend_id = backend_id,
		.rev_nat_id = rev_nat_id,
	};

	if (p->tcp_flags & (TCP_FLAG_FIN | TCP_FLAG_RST))
		e.flags = CT_F_CLOSING;
	if (c) {
		ct_cache_copy(&e, c);
		e.revision = c->revision;
	}
	/* An LRU map evicts rather than fails; if it still fails the packet
	 * goes on untracked and the next one tries again. */
	bpf_map_update_elem(&conntrack, k, &e, BPF_ANY);
}

static __always_inline void ct_create(const struct pkt *p, __u8 scope, __u32 backend_id,
				      __u16 rev_nat_id, const struct ct_cache *c)
{
	struct ct_key k;

	ct_key_from(&k, p, scope, false);
	ct_create_key(&k, p, backend_id, rev_nat_id, c);
}
