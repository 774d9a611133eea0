// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * overlay.c: the program on the VXLAN device (collect-metadata mode), tcx
 * ingress: decapsulated packets from other nodes. The sender put its
 * security identity in the VNI, so policy needs no ipcache lookup of the
 * source; the packet goes straight into the destination pod.
 */
#include "abi.h"
#include "proto.h"
#include <bpf_helpers.h>
#include <bpf_endian.h>
#include "lib/maps.h"
#include "lib/packet.h"
#include "lib/events.h"
#include "lib/ipcache.h"
#include "lib/deliver.h"

char __license[] SEC("license") = "Dual BSD/GPL";

SEC("tc")
int from_overlay(struct __sk_buff *skb)
{
	struct flow_event ev = { .obs = OBS_FROM_OVERLAY, .tunnel = TUNNEL_RX };
	struct bpf_tunnel_key key = {};
	struct pkt p = {};
	struct endpoint *ep;
	struct node_config *cfg;
	__u32 identity;
	int ret;

	cfg = config_get();
	if (!cfg)
		return TC_ACT_SHOT;

	ret = pkt_parse(skb, &p);
	if (ret == PARSE_NOT_IPV4)
		return TC_ACT_OK;
	if (ret != PARSE_OK)
		return drop(skb, &ev, &p, DROP_MALFORMED);

	if (bpf_skb_get_tunnel_key(skb, &key, sizeof(key), 0) < 0)
		return drop(skb, &ev, &p, DROP_NO_TUNNEL_KEY);
	ev.tunnel_endpoint = bpf_htonl(key.remote_ipv4);
	identity = key.tunnel_id & IDENTITY_MASK;

	ep = bpf_map_lookup_elem(&endpoints, &p.daddr);
	if (!ep) {
		/* For the node itself (or unknown): the host stack decides. */
		trace(skb, cfg, &ev, &p, REASON_FWD_STACK);
		return TC_ACT_OK;
	}
	if (identity == 0) {
		/* Not sent by a meshbed node: fall back to the ipcache. */
		struct peer src;

		ipcache_resolve(p.saddr, &src);
		identity = src.identity;
	}
	return to_endpoint(skb, &p, ep, identity, &ev, cfg, DELIVER_REDIRECT);
}
