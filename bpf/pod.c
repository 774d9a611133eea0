// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * pod.c: the programs on a pod's host-side veth.
 *
 * Flow events (events.h): drops, and the first packet of each connection
 * where it leaves this program (into a local pod, the tunnel or the stack).
 *
 * from_container (tcx ingress: packets the pod sends) does, in order:
 * source check, service load balancing (DNAT), destination lookup (local
 * endpoint or ipcache), connection tracking, egress policy by destination
 * identity, then forwarding: into a local pod (running its ingress half
 * inline, see deliver.h), into the VXLAN device with the source identity in
 * the VNI, or to the host stack (native routing, or destinations outside the
 * mesh).
 *
 * to_container (tcx egress: packets the host stack routes to the pod, e.g.
 * from other nodes in native routing mode) runs the ingress half with the
 * source identity from the ipcache.
 */
#include "abi.h"
#include "proto.h"
#include <bpf_helpers.h>
#include <bpf_endian.h>
#include "lib/maps.h"
#include "lib/packet.h"
#include "lib/events.h"
#include "lib/conntrack.h"
#include "lib/lb.h"
#include "lib/policy.h"
#include "lib/ipcache.h"
#include "lib/deliver.h"

char __license[] SEC("license") = "Dual BSD/GPL";

static __always_inline int encap(struct __sk_buff *skb, const struct node_config *cfg, struct flow_event *ev,
				 const struct pkt *p, __u32 identity, __be32 endpoint)
{
	struct bpf_tunnel_key key = {};

	if (!cfg->vxlan_ifindex)
		return drop(skb, ev, p, DROP_NO_TUNNEL_DEVICE);
	/* The receiving node learns who sent the packet from the VNI alone:
	 * identities are global in the mesh and fit its 24 bits. */
	key.tunnel_id = identity & IDENTITY_MASK;
	key.remote_ipv4 = bpf_ntohl(endpoint);
	key.tunnel_ttl = 64;
	ev->tunnel = TUNNEL_TX;
	if (bpf_skb_set_tunnel_key(skb, &key, sizeof(key), BPF_F_ZERO_CSUM_TX) < 0)
		return drop(skb, ev, p, DROP_TUNNEL_FAILED);
	trace(skb, cfg, ev, p, REASON_FWD_TUNNEL);
	return bpf_redirect(cfg->vxlan_ifindex, 0);
}

#define FAST_MISS (-1)

/* fast_event fills in the flow event of a packet fast_forward takes, from
 * the flow cache: only for the packets that may report one (a drop, a
 * delivery to a local pod, which reports its new connections). */
static __always_inline void fast_event(struct flow_event *ev, const struct node_config *cfg,
				       const struct ct_entry *e, bool service, __be32 orig_daddr,
				       __be16 orig_dport)
{
	ev->endpoint_id = e->src_endpoint_id;
	ev->src_identity = e->src_identity;
	ev->src_cluster = cfg->cluster_id;
	ev->dst_identity = e->dst_identity;
	ev->dst_cluster = e->dst_cluster;
	ev->tunnel_endpoint = e->tunnel_endpoint;
	if (service) {
		ev->rev_nat_id = e->rev_nat_id;
		ev->orig_daddr = orig_daddr;
		ev->orig_dport = orig_dport;
		ev->backend_id = e->backend_id;
		ev->backend_cluster = e->backend_cluster;
	}
}

/* fast_forward forwards a packet of an established connection by its flow
 * cache: one conntrack lookup (two for a connection that is not to a
 * service) instead of the endpoint, service, backend, ipcache, policy and
 * conntrack lookups of the full path. It takes only packets that would
 * change nothing in conntrack (no SYN, FIN or RST, no flag to learn), within
 * CT_CACHE_JIFFIES of the last packet that took the full path, so it writes
 * no entry; every other packet, one every 0.1 to 1 s per connection, takes
 * the full path, which keeps the connection's entries fresh. FAST_MISS:
 * take the full path. *svc is the connection's SERVICE entry if there is
 * one. */
static __always_inline int fast_forward(struct __sk_buff *skb, const struct node_config *cfg,
					struct flow_event *ev, struct pkt *p, __u32 revision,
					struct ct_entry **svc)
{
	struct endpoint *dst = NULL;
	struct ct_entry *e = NULL;
	__be32 orig_daddr;
	__be16 orig_dport;
	struct ct_key k;
	bool service;

	if (p->tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_FIN | TCP_FLAG_RST))
		return FAST_MISS;
	ct_key_from(&k, p, CT_SCOPE_SERVICE, false);
	if (p->has_ports) {
		e = bpf_map_lookup_elem(&conntrack, &k);
		*svc = e;
	}
	service = e != NULL;
	if (!e) {
		k.scope = CT_SCOPE_EGRESS;
		e = bpf_map_lookup_elem(&conntrack, &k);
	}
	if (!e || e->revision != revision || e->src_ifindex != skb->ifindex)
		return FAST_MISS;
	if (ct_jiffies() - e->cache_jiffies > CT_CACHE_JIFFIES || (e->flags & CT_F_CLOSING))
		return FAST_MISS;
	/* A service entry learns the connection is up from an ACK (lb.h). */
	if (service && (p->tcp_flags & TCP_FLAG_ACK) && !(e->flags & CT_F_REPLY_SEEN))
		return FAST_MISS;
	if (e->cache & CT_C_LOCAL) {
		__be32 daddr = service ? e->nat_addr : p->daddr;

		dst = bpf_map_lookup_elem(&endpoints, &daddr);
		if (!dst)
			return FAST_MISS;
	}

	orig_daddr = p->daddr;
	orig_dport = p->dport;
	if (service && nat_rewrite(skb, p, true, e->nat_addr, e->nat_port) < 0) {
		fast_event(ev, cfg, e, service, orig_daddr, orig_dport);
		return drop(skb, ev, p, DROP_NAT_FAILED);
	}
	/* Into the tunnel, the common case, as encap() does it but with the
	 * flow event filled in only if it is needed. */
	if (!dst && cfg->vxlan_ifindex && !(cfg->flags & CFG_NATIVE_ROUTING) && e->tunnel_endpoint) {
		struct bpf_tunnel_key key = {
			.tunnel_id = e->src_identity & IDENTITY_MASK,
			.remote_ipv4 = bpf_ntohl(e->tunnel_endpoint),
			.tunnel_ttl = 64,
		};

		if (bpf_skb_set_tunnel_key(skb, &key, sizeof(key), BPF_F_ZERO_CSUM_TX) < 0) {
			fast_event(ev, cfg, e, service, orig_daddr, orig_dport);
			ev->tunnel = TUNNEL_TX;
			return drop(skb, ev, p, DROP_TUNNEL_FAILED);
		}
		metric_count(REASON_FWD_TUNNEL, skb->len);
		return bpf_redirect(cfg->vxlan_ifindex, 0);
	}
	fast_event(ev, cfg, e, service, orig_daddr, orig_dport);
	if (dst)
		return to_endpoint(skb, p, dst, e->src_identity, ev, cfg, DELIVER_REDIRECT);
	if (!(cfg->flags & CFG_NATIVE_ROUTING) && e->tunnel_endpoint)
		return encap(skb, cfg, ev, p, e->src_identity, e->tunnel_endpoint);
	trace(skb, cfg, ev, p, REASON_FWD_STACK);
	return TC_ACT_OK;
}

SEC("tc")
int from_container(struct __sk_buff *skb)
{
	struct flow_event ev = { .obs = OBS_FROM_CONTAINER };
	struct lb_result lb = {};
	struct pkt p = {};
	struct endpoint *src, *dst;
	struct ct_entry *ce, *svc = NULL;
	struct node_config *cfg;
	struct ct_cache cache;
	struct peer peer;
	enum ct_status st;
	__u32 revision;
	int ret;

	cfg = config_get();
	if (!cfg)
		return TC_ACT_SHOT;

	ret = pkt_parse(skb, &p);
	if (ret == PARSE_NOT_IPV4)
		return TC_ACT_OK; /* ARP and (for now) IPv6 are the host stack's */
	if (ret != PARSE_OK)
		return drop(skb, &ev, &p, DROP_MALFORMED);

	/* Read once: what the full path caches below was read under it. */
	revision = *(volatile __u32 *)&cfg->revision;
	if (revision && !(cfg->flags & CFG_TRACE)) {
		ret = fast_forward(skb, cfg, &ev, &p, revision, &svc);
		if (ret != FAST_MISS)
			return ret;
	}

	/* The pod behind this veth may only send from its own address:
	 * everything after trusts the source identity derived from it. */
	src = bpf_map_lookup_elem(&endpoints, &p.saddr);
	if (!src || src->ifindex != skb->ifindex)
		return drop(skb, &ev, &p, DROP_INVALID_SOURCE);
	ev.endpoint_id = src->id;
	ev.src_identity = src->identity;
	ev.src_cluster = cfg->cluster_id;

	ret = lb_translate(skb, &p, &lb);
	if (ret != LB_NOT_SERVICE) {
		ev.rev_nat_id = lb.rev_nat_id;
		ev.orig_daddr = lb.orig_daddr;
		ev.orig_dport = lb.orig_dport;
		ev.backend_id = lb.backend_id;
		ev.backend_cluster = lb.backend_cluster;
		if (ret == LB_NO_BACKEND)
			return drop(skb, &ev, &p, DROP_NO_BACKEND);
		if (ret == LB_NAT_FAILED)
			return drop(skb, &ev, &p, DROP_NAT_FAILED);
	} else if (svc) {
		/* The SERVICE entry of a service that is gone: without it the
		 * connection's packets find their cache in the EGRESS entry. */
		struct ct_key k;

		ct_key_from(&k, &p, CT_SCOPE_SERVICE, false);
		bpf_map_delete_elem(&conntrack, &k);
	}

	dst = bpf_map_lookup_elem(&endpoints, &p.daddr);
	if (dst) {
		peer.identity = dst->identity;
		peer.tunnel_endpoint = 0;
		peer.cluster_id = cfg->cluster_id;
	} else {
		ipcache_resolve(p.daddr, &peer);
	}
	ev.dst_identity = peer.identity;
	ev.dst_cluster = peer.cluster_id;
	ev.tunnel_endpoint = peer.tunnel_endpoint;

	st = ct_lookup(&p, CT_SCOPE_EGRESS, CT_SCOPE_INGRESS, &ce);
	/* Replies of connections the pod accepted are always allowed. */
	if (st != CT_REPLY && (src->flags & EP_F_EGRESS_ENFORCED) &&
	    !policy_allows(src->id, DIR_EGRESS, peer.identity, p.proto, p.dport))
		return drop(skb, &ev, &p, DROP_POLICY_EGRESS);

	/* What the next packets of the connection can skip all of the above
	 * for: not for replies, which are allowed by their state alone. */
	cache = (struct ct_cache){
		.revision = st == CT_REPLY ? 0 : revision,
		.src_ifindex = skb->ifindex,
		.src_identity = src->identity,
		.dst_identity = peer.identity,
		.tunnel_endpoint = peer.tunnel_endpoint,
		.src_endpoint_id = src->id,
		.dst_cluster = peer.cluster_id,
		.flags = dst ? CT_C_LOCAL : 0,
		.jiffies = ct_jiffies(),
	};
	if (ret == LB_TRANSLATED) {
		cache.nat_addr = p.daddr;
		cache.nat_port = p.dport;
		cache.backend_cluster = lb.backend_cluster;
		if (lb.new_conn)
			lb_pin(&p, &lb, &cache);
		else if (lb.ce)
			ct_cache_set(lb.ce, &cache);
	}
	if (st == CT_NEW)
		ct_create(&p, CT_SCOPE_EGRESS, lb.backend_id, lb.rev_nat_id,
			  ret == LB_TRANSLATED ? NULL : &cache);
	else if (st == CT_ESTABLISHED && ret != LB_TRANSLATED && ce)
		ct_cache_set(ce, &cache);
	if (st == CT_NEW || lb.new_conn) {
		if (peer.cluster_id && peer.cluster_id != cfg->cluster_id)
			metric_count(REASON_REMOTE_CLUSTER, skb->len);
		else if (lb.new_conn)
			metric_count(REASON_SERVICE, skb->len);
	}
	/* The connection's flow event goes out where the packet leaves
	 * (trace() below, or to_endpoint for a local pod), when it is known
	 * whether it entered the tunnel. */
	if (st == CT_NEW || lb.new_conn || (st == CT_ESTABLISHED && ct_opens(&p)))
		ev.flags |= FLOW_F_NEW;

	if (dst)
		return to_endpoint(skb, &p, dst, src->identity, &ev, cfg, DELIVER_REDIRECT);
	if (!(cfg->flags & CFG_NATIVE_ROUTING) && peer.tunnel_endpoint)
		return encap(skb, cfg, &ev, &p, src->identity, peer.tunnel_endpoint);
	trace(skb, cfg, &ev, &p, REASON_FWD_STACK);
	return TC_ACT_OK;
}

SEC("tc")
int to_container(struct __sk_buff *skb)
{
	struct flow_event ev = { .obs = OBS_TO_CONTAINER };
	struct pkt p = {};
	struct endpoint *ep;
	struct node_config *cfg;
	struct peer src;
	int ret;

	cfg = config_get();
	if (!cfg)
		return TC_ACT_SHOT;

	ret = pkt_parse(skb, &p);
	if (ret == PARSE_NOT_IPV4)
		return TC_ACT_OK;
	if (ret != PARSE_OK)
		return drop(skb, &ev, &p, DROP_MALFORMED);

	ep = bpf_map_lookup_elem(&endpoints, &p.daddr);
	if (!ep)
		return TC_ACT_OK; /* not addressed to a pod we manage */

	ipcache_resolve(p.saddr, &src);
	ev.src_cluster = src.cluster_id;
	return to_endpoint(skb, &p, ep, src.identity, &ev, cfg, DELIVER_PASS);
}
