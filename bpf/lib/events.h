/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * events.h: what the datapath tells the agent about packets. Every verdict
 * increments a per-CPU counter (no atomics, no contention). Flow events go
 * to a ring buffer with the identities, clusters, service, backend and
 * tunnel involved, but, as Cilium's monitor aggregation does, only for the
 * packets that matter: every drop, and the first packet of each connection
 * (the one that creates its conntrack entry) at each observation point.
 * Packets of established connections emit nothing, unless the datapath runs
 * in trace mode (every forwarded packet, for debugging).
 *
 * The ring buffer never makes the datapath wait: when it is full the event
 * is lost and counted (METRIC_EVENTS_LOST). The reader is not woken for
 * every event either (a wake-up costs microseconds); it is woken once a
 * batch has accumulated and otherwise polls.
 */
#pragma once

#include "abi.h"
#include "maps.h"
#include "packet.h"

/* Reasons: counter index and event reason share one numbering. */
enum reason {
	/* forwarded */
	REASON_FWD_LOCAL = 1,  /* redirected to a pod on this node */
	REASON_FWD_TUNNEL = 2, /* encapsulated towards another node */
	REASON_FWD_STACK = 3,  /* handed to the host stack */
	/* events about new connections (counted too) */
	REASON_SERVICE = 8,        /* new connection load-balanced to a backend */
	REASON_REMOTE_CLUSTER = 9, /* new connection to another cluster */
	/* drops */
	DROP_POLICY_EGRESS = 16,
	DROP_POLICY_INGRESS = 17,
	DROP_NO_BACKEND = 18,     /* service without active backends */
	DROP_INVALID_SOURCE = 19, /* source IP is not the pod behind this veth */
	DROP_MALFORMED = 20,
	DROP_NO_TUNNEL_KEY = 21,    /* overlay packet without tunnel metadata */
	DROP_NO_TUNNEL_DEVICE = 22, /* tunnel routing but no overlay attached */
	DROP_NAT_FAILED = 23,
	DROP_TUNNEL_FAILED = 24,
	/* bookkeeping */
	METRIC_EVENTS_LOST = 32, /* ring buffer full */
};

#define VERDICT_FORWARDED 1
#define VERDICT_DROPPED 2

/* Where the packet was seen. */
#define OBS_FROM_CONTAINER 1
#define OBS_TO_CONTAINER 2
#define OBS_FROM_OVERLAY 3

/* Whether the packet goes into or came out of the tunnel. */
#define TUNNEL_NONE 0
#define TUNNEL_TX 1 /* encapsulated towards another node */
#define TUNNEL_RX 2 /* decapsulated from another node */

/* flow_event.flags */
#define FLOW_F_NEW (1U << 0) /* the first packet of a connection */

/* The reader is woken once this much is waiting in the ring buffer. */
#define EVENTS_WAKEUP_BYTES (16 * 1024)

struct metric {
	__u64 packets;
	__u64 bytes;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, METRICS_MAX);
	__type(key, __u32);
	__type(value, struct metric);
} metrics SEC(".maps");

/* flow_event is filled in as the packet is processed, then copied to the
 * ring buffer whole. Addresses and ports as on the wire (network order). */
struct flow_event {
	__u64 timestamp;
	__be32 saddr;
	__be32 daddr;
	__be32 orig_daddr; /* service frontend, 0 if none */
	__be32 tunnel_endpoint; /* node tunnelled to or from */
	__u32 src_identity; /* = the VNI on tunnelled packets */
	__u32 dst_identity;
	__u32 backend_id;
	__u32 ifindex;
	__be16 sport;
	__be16 dport;
	__be16 orig_dport;
	__u16 rev_nat_id; /* service */
	__u16 src_cluster;
	__u16 dst_cluster;
	__u16 backend_cluster; /* cluster of the backend chosen, 0 if none */
	__u16 endpoint_id;     /* local endpoint the packet left or reaches */
	__u8 proto;
	__u8 verdict;
	__u8 reason;
	__u8 obs;
	__u8 tunnel; /* TUNNEL_* */
	__u8 flags;  /* FLOW_F_* */
	__u16 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, EVENTS_BYTES);
} events SEC(".maps");

static __always_inline void metric_count(__u32 reason, __u32 len)
{
	struct metric *m = bpf_map_lookup_elem(&metrics, &reason);

	if (m) {
		m->packets++;
		m->bytes += len;
	}
}

/* Not inlined: events are the slow path, and as a real function its
 * signature keeps struct flow_event in the object's BTF for bpf2go. */
static __noinline void event_emit(struct __sk_buff *skb, struct flow_event *ev,
				  const struct pkt *p, __u8 verdict, __u8 reason)
{
	__u64 wakeup;

	ev->timestamp = bpf_ktime_get_ns();
	ev->saddr = p->saddr;
	ev->daddr = p->daddr;
	ev->sport = p->sport;
	ev->dport = p->dport;
	ev->proto = p->proto;
	ev->verdict = verdict;
	ev->reason = reason;
	ev->ifindex = skb->ifindex;
	wakeup = bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA) >= EVENTS_WAKEUP_BYTES ?
			 BPF_RB_FORCE_WAKEUP : BPF_RB_NO_WAKEUP;
	if (bpf_ringbuf_output(&events, ev, sizeof(*ev), wakeup) < 0)
		metric_count(METRIC_EVENTS_LOST, 0);
}


/* drop counts, reports and returns the verdict that drops the packet. */
static __always_inline int drop(struct __sk_buff *skb, struct flow_event *ev,
				const struct pkt *p, __u8 reason)
{
	metric_count(reason, skb->len);
	ev->flags &= ~FLOW_F_NEW; /* what was new did not get through */
	event_emit(skb, ev, p, VERDICT_DROPPED, reason);
	return TC_ACT_SHOT;
}
