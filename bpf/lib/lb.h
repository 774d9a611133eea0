/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * lb.h: service load balancing. A packet to a frontend (ClusterIP:port/proto)
 * is DNATed to one of the frontend's active backends. The backend of a
 * connection is chosen once, at random among the slots, and pinned in a
 * conntrack entry of the SERVICE scope, so the connection stays on it while
 * the service's backends change, as long as the backend itself exists (a
 * terminating backend is kept in the backends map for exactly this).
 */
#pragma once

#include "abi.h"
#include "maps.h"
#include "packet.h"
#include "conntrack.h"

#define LB_NOT_SERVICE 0
#define LB_TRANSLATED 1
#define LB_NO_BACKEND 2
#define LB_NAT_FAILED 3

struct lb_result {
	__u32 backend_id;
	__u32 backend_cluster;
	__u16 rev_nat_id;
	bool new_conn; /* a backend was chosen for this packet: the caller
			* creates the SERVICE entry (lb_pin), with its flow cache */
	__be32 orig_daddr;
	__be16 orig_dport;
	struct ct_entry *ce; /* the connection's SERVICE entry, if it kept it */
	struct backend *b;
};

static __always_inline int lb_translate(struct __sk_buff *skb, struct pkt *p, struct lb_result *r)
{
	struct svc_key sk = {
		.addr = p->daddr,
		.port = p->dport,
		.proto = p->proto,
	};
	struct svc_value *master, *slot;
	struct backend *b = NULL;
	struct ct_key ck;
	struct ct_entry *ce;
	__u32 backend_id = 0;
	__u64 now;

	if (!p->has_ports)
		return LB_NOT_SERVICE;
	master = bpf_map_lookup_elem(&services, &sk);
	if (!master)
		return LB_NOT_SERVICE;
	r->rev_nat_id = master->rev_nat_id;
	r->orig_daddr = p->daddr;
	r->orig_dport = p->dport;

	/* An existing connection keeps its backend while that backend exists. */
	now = ct_now();
	ct_key_from(&ck, p, CT_SCOPE_SERVICE, false);
	ce = bpf_map_lookup_elem(&conntrack, &ck);
	if (ce && !ct_expired(ce, p->proto, now) && ce->rev_nat_id == master->rev_nat_id) {
		b = bpf_map_lookup_elem(&backends, &ce->backend_id);
		/* A SYN without ACK opens a new connection, even on the tuple of
		 * an old one (the client recycled its port): it must not inherit
		 * a backend that takes no new connections. */
		if (b && b->state != BACKEND_ACTIVE &&
		    (p->tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK)) == TCP_FLAG_SYN)
			b = NULL;
		if (b) {
			backend_id = ce->backend_id;
			r->ce = ce;
			/* A service entry sees only client->frontend packets, so
			 * it cannot learn that the backend answered: count any
			 * established packet (ACK) as proof the connection is up. */
			ct_touch(ce, p, (p->tcp_flags & TCP_FLAG_ACK) != 0, now);
		}
	}

	if (!b) {
		__u16 count = master->count;

		if (count == 0)
			return LB_NO_BACKEND;
		sk.slot = (bpf_get_prandom_u32() % count) + 1;
		slot = bpf_map_lookup_elem(&services, &sk);
		if (!slot)
			return LB_NO_BACKEND;
		backend_id = slot->backend_id;
		b = bpf_map_lookup_elem(&backends, &backend_id);
		if (!b)
			return LB_NO_BACKEND;
		r->new_conn = true;
	}

	r->backend_id = backend_id;
	r->backend_cluster = b->cluster_id;
	r->b = b;
	if (nat_rewrite(skb, p, true, b->addr, b->port) < 0)
		return LB_NAT_FAILED;
	return LB_TRANSLATED;
}

/* lb_pin creates the SERVICE entry of a connection lb_translate chose a
 * backend for (r->new_conn); p is the translated packet. */
static __always_inline void lb_pin(const struct pkt *p, const struct lb_result *r, const struct ct_cache *c)
{
	struct ct_key k = {
		.saddr = p->saddr,
		.daddr = r->orig_daddr,
		.sport = p->sport,
		.dport = r->orig_dport,
		.proto = p->proto,
		.scope = CT_SCOPE_SERVICE,
	};

	ct_create_key(&k, p, r->backend_id, r->rev_nat_id, c);
}

/* lb_rev_nat rewrites a reply from a backend so it comes from the frontend. */
static __always_inline int lb_rev_nat(struct __sk_buff *skb, struct pkt *p, __u16 rev_nat_id)
{
	struct revnat_value *fe;

	if (!rev_nat_id)
		return 0;
	fe = bpf_map_lookup_elem(&revnat, &rev_nat_id);
	if (!fe)
		return 0; /* frontend gone: nothing sensible to rewrite to */
	return nat_rewrite(skb, p, false, fe->addr, fe->port);
}
