/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * deliver.h: the pod-ingress half of the datapath, the last step before a
 * packet reaches a local pod, whichever way it came (another local pod, the
 * overlay, or the host stack). It applies the pod's ingress policy by the
 * source identity the caller determined, tracks the connection, and
 * reverse-NATs replies of service connections so they come from the frontend.
 *
 * From an ingress hook (pod egress, overlay) the packet is handed straight to
 * the pod with bpf_redirect_peer, skipping the host stack and a second pass
 * through the veth; from the veth's own egress hook it just passes.
 */
#pragma once

#include "abi.h"
#include "proto.h"
#include "maps.h"
#include "packet.h"
#include "conntrack.h"
#include "lb.h"
#include "policy.h"
#include "ipcache.h"
#include "events.h"

#define DELIVER_REDIRECT 0
#define DELIVER_PASS 1

/* trace counts a forwarded packet and reports it if it is the first of a
 * connection (FLOW_F_NEW), or of any packet in trace mode. */
static __always_inline void trace(struct __sk_buff *skb, const struct node_config *cfg,
				  struct flow_event *ev, const struct pkt *p, __u8 reason)
{
	metric_count(reason, skb->len);
	if ((ev->flags & FLOW_F_NEW) || (cfg->flags & CFG_TRACE))
		event_emit(skb, ev, p, VERDICT_FORWARDED, reason);
}

static __always_inline int to_endpoint(struct __sk_buff *skb, struct pkt *p, const struct endpoint *ep,
				       __u32 src_identity, struct flow_event *ev,
				       const struct node_config *cfg, int mode)
{
	struct ct_entry *ce;
	enum ct_status st;

	ev->endpoint_id = ep->id;
	ev->src_identity = src_identity;
	ev->dst_identity = ep->identity;
	ev->dst_cluster = cfg->cluster_id;

	st = ct_lookup(p, CT_SCOPE_INGRESS, CT_SCOPE_EGRESS, &ce);
	if (st != CT_REPLY && (ep->flags & EP_F_INGRESS_ENFORCED) &&
	    !policy_allows(ep->id, DIR_INGRESS, src_identity, p->proto, p->dport)) {
		if (!ev->src_cluster) {
			struct peer src;

			ipcache_resolve(p->saddr, &src);
			ev->src_cluster = src.cluster_id;
		}
		return drop(skb, ev, p, DROP_POLICY_INGRESS);
	}

	if (st == CT_NEW || (st == CT_ESTABLISHED && ct_opens(p)))
		ev->flags |= FLOW_F_NEW;
	if (st == CT_NEW) {
		ct_create(p, CT_SCOPE_INGRESS, 0, 0, NULL);
	} else if (st == CT_REPLY && ce && ce->rev_nat_id) {
		__u16 rev_nat_id = ce->rev_nat_id;

		ev->rev_nat_id = rev_nat_id;
		ev->backend_id = ce->backend_id;
		if (lb_rev_nat(skb, p, rev_nat_id) < 0)
			return drop(skb, ev, p, DROP_NAT_FAILED);
	}

	trace(skb, cfg, ev, p, REASON_FWD_LOCAL);
	if (mode == DELIVER_PASS)
		return TC_ACT_OK;
	/* Make the frame look routed by the node: from the host-side veth. */
	bpf_skb_store_bytes(skb, offsetof(struct ethhdr, h_source), ep->mac, ETH_ALEN, 0);
	return bpf_redirect_peer(ep->ifindex, 0);
}
