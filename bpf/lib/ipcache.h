/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* ipcache.h: who is at an address, and how to reach it. */
#pragma once

#include "abi.h"
#include "maps.h"

#define IDENTITY_WORLD 2
#define IDENTITY_MASK 0xffffff /* identities ride in the 24-bit VNI */

struct peer {
	__u32 identity;
	__be32 tunnel_endpoint;
	__u32 cluster_id;
};

/* ipcache_resolve fills in what the ipcache knows about addr; an address it
 * does not know is the world, reached through the host stack. */
static __always_inline void ipcache_resolve(__be32 addr, struct peer *out)
{
	struct ipcache_key k = { .prefixlen = IPCACHE_PREFIX_BITS, .addr = addr };
	struct ipcache_value *v = bpf_map_lookup_elem(&ipcache, &k);

	if (v) {
		out->identity = v->identity;
		out->tunnel_endpoint = v->tunnel_endpoint;
		out->cluster_id = v->cluster_id;
	} else {
		out->identity = IDENTITY_WORLD;
		out->tunnel_endpoint = 0;
		out->cluster_id = 0;
	}
}
