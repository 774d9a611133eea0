/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * policy.h: allow-list policy per endpoint and direction, by peer identity,
 * protocol and port. See the policy map in maps.h for the key layout: two
 * LPM lookups (the peer's identity, then the "any peer" identity 0) cover
 * protocol wildcards, port wildcards and port ranges.
 */
#pragma once

#include "abi.h"
#include "maps.h"

#define DIR_INGRESS 0
#define DIR_EGRESS 1

static __always_inline bool policy_allows(__u16 endpoint_id, __u8 dir, __u32 identity, __u8 proto,
					  __be16 port)
{
	struct policy_key k = {
		.prefixlen = sizeof(k) * 8 - 32,
		.identity = identity,
		.endpoint_id = endpoint_id,
		.direction = dir,
		.proto = proto,
		.port = port,
	};

	if (bpf_map_lookup_elem(&policy, &k))
		return true;
	k.identity = 0;
	return bpf_map_lookup_elem(&policy, &k) != NULL;
}
