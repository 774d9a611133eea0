/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * packet.h parses the headers the datapath decides on and rewrites addresses
 * and ports for NAT. Headers are copied with bpf_skb_load_bytes rather than
 * read in place: it works on non-linear skbs (GRO'd packets from the overlay)
 * and keeps the verifier out of variable-offset bounds checks, at the price
 * of a small copy. IPv4 only.
 */
#pragma once

#include "abi.h"
#include "proto.h"
#include <bpf_helpers.h>
#include <bpf_endian.h>
#include <bpf_core_read.h>

struct pkt {
	__be32 saddr;
	__be32 daddr;
	__be16 sport; /* 0 when the protocol has no ports or for later fragments */
	__be16 dport;
	__u8 proto;
	__u8 tcp_flags;
	__u16 l4_off;
	bool has_ports;
};

#define PARSE_OK 0
#define PARSE_NOT_IPV4 1
#define PARSE_MALFORMED 2

/* pkt_parse_copy parses with a copy of each header: any header length, any
 * skb. */
static __always_inline int pkt_parse_copy(struct __sk_buff *skb, struct pkt *p)
{
	struct iphdr ip;
	__u32 ihl;

	if (skb->protocol != bpf_htons(ETH_P_IP))
		return PARSE_NOT_IPV4;
	if (bpf_skb_load_bytes(skb, ETH_HLEN, &ip, sizeof(ip)) < 0)
		return PARSE_MALFORMED;
	ihl = (ip.ihl_version & 0x0f) * 4;
	if ((ip.ihl_version >> 4) != 4 || ihl < sizeof(ip))
		return PARSE_MALFORMED;

	p->saddr = ip.saddr;
	p->daddr = ip.daddr;
	p->proto = ip.protocol;
	p->l4_off = ETH_HLEN + ihl;
	p->sport = 0;
	p->dport = 0;
	p->tcp_flags = 0;
	p->has_ports = false;

	/* Later fragments carry no L4 header: they are handled on addresses
	 * alone (port 0 in policy), a known limitation. */
	if (ip.frag_off & bpf_htons(IP_OFFSET))
		return PARSE_OK;

	if (ip.protocol == IPPROTO_TCP || ip.protocol == IPPROTO_UDP) {
		__be16 ports[2];

		if (bpf_skb_load_bytes(skb, p->l4_off, ports, sizeof(ports)) < 0)
			return PARSE_MALFORMED;
		p->sport = ports[0];
		p->dport = ports[1];
		p->has_ports = true;
	}
	if (ip.protocol == IPPROTO_TCP) {
		if (bpf_skb_load_bytes(skb, p->l4_off + offsetof(struct tcphdr, flags),
				       &p->tcp_flags, 1) < 0)
			return PARSE_MALFORMED;
	}
	return PARSE_OK;
}

/* The headers of the common packet, IPv4 without options and the first 16
 * bytes of TCP or UDP, which pkt_parse reads at once. */
struct pkt_hdrs {
	struct iphdr ip;
	__be16 sport;
	__be16 dport;
	__u8 l4[12]; /* TCP: flags at l4[9] */
};

#define PKT_TCP_FLAGS 9

/* pkt_parse reads the headers in place when the skb's linear part holds
 * them (the common case on a veth), or else with one copy; headers with
 * options and short packets take pkt_parse_copy. */
static __always_inline int pkt_parse(struct __sk_buff *skb, struct pkt *p)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct pkt_hdrs *h = data + ETH_HLEN;
	struct pkt_hdrs buf;

	if (skb->protocol != bpf_htons(ETH_P_IP))
		return PARSE_NOT_IPV4;
	if ((void *)(h + 1) > data_end) {
		if (bpf_skb_load_bytes(skb, ETH_HLEN, &buf, sizeof(buf)) < 0)
			return pkt_parse_copy(skb, p);
		h = &buf;
	}
	if (h->ip.ihl_version != 0x45)
		return pkt_parse_copy(skb, p);

	p->saddr = h->ip.saddr;
	p->daddr = h->ip.daddr;
	p->proto = h->ip.protocol;
	p->l4_off = ETH_HLEN + sizeof(struct iphdr);
	p->sport = 0;
	p->dport = 0;
	p->tcp_flags = 0;
	p->has_ports = false;
	if (h->ip.frag_off & bpf_htons(IP_OFFSET))
		return PARSE_OK;
	if (h->ip.protocol == IPPROTO_TCP || h->ip.protocol == IPPROTO_UDP) {
		p->sport = h->sport;
		p->dport = h->dport;
		p->has_ports = true;
	}
	if (h->ip.protocol == IPPROTO_TCP)
		p->tcp_flags = h->l4[PKT_TCP_FLAGS];
	return PARSE_OK;
}

#define IP_CSUM_OFF (ETH_HLEN + offsetof(struct iphdr, check))
#define IP_SADDR_OFF (ETH_HLEN + offsetof(struct iphdr, saddr))
#define IP_DADDR_OFF (ETH_HLEN + offsetof(struct iphdr, daddr))

/* nat_rewrite_slow replaces the source (dst == false) or destination address and
 * port, fixing the IP checksum and the TCP/UDP checksum incrementally. The
 * csum helpers also handle CHECKSUM_PARTIAL skbs from veth, where only the
 * pseudo-header part of the checksum is in the packet. A UDP checksum of 0
 * means "none" and is left alone (BPF_F_MARK_MANGLED_0). */
static __noinline int nat_rewrite_slow(struct __sk_buff *skb, struct pkt *p, bool dst,
					    __be32 addr, __be16 port)
{
	__be32 old_addr = dst ? p->daddr : p->saddr;
	__be16 old_port = dst ? p->dport : p->sport;
	__u32 addr_off = dst ? IP_DADDR_OFF : IP_SADDR_OFF;
	__u32 port_off = p->l4_off + (dst ? offsetof(struct tcphdr, dest) : offsetof(struct tcphdr, source));
	__u32 csum_off = 0;
	__u64 mangled = 0;

	if (p->proto == IPPROTO_TCP) {
		csum_off = p->l4_off + offsetof(struct tcphdr, check);
	} else if (p->proto == IPPROTO_UDP) {
		csum_off = p->l4_off + offsetof(struct udphdr, check);
		mangled = BPF_F_MARK_MANGLED_0;
	}

	if (addr != old_addr) {
		if (csum_off && bpf_l4_csum_replace(skb, csum_off, old_addr, addr,
						    BPF_F_PSEUDO_HDR | mangled | sizeof(addr)) < 0)
			return -1;
		if (bpf_l3_csum_replace(skb, IP_CSUM_OFF, old_addr, addr, sizeof(addr)) < 0)
			return -1;
		if (bpf_skb_store_bytes(skb, addr_off, &addr, sizeof(addr), 0) < 0)
			return -1;
	}
	if (p->has_ports && port != old_port) {
		if (csum_off && bpf_l4_csum_replace(skb, csum_off, old_port, port,
						    mangled | sizeof(port)) < 0)
			return -1;
		if (bpf_skb_store_bytes(skb, port_off, &port, sizeof(port), 0) < 0)
			return -1;
	}

	if (dst) {
		p->daddr = addr;
		if (p->has_ports)
			p->dport = port;
	} else {
		p->saddr = addr;
		if (p->has_ports)
			p->sport = port;
	}
	return 0;
}

/* Ones' complement arithmetic on raw (network order) values, as the
 * kernel's csum helpers do it. */
static __always_inline __u32 csum_add32(__u32 sum, __u32 v)
{
	sum += v;
	return sum + (sum < v);
}

static __always_inline __u16 csum_fold16(__u32 sum)
{
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return (__u16)sum;
}

/* csum_full is a complete checksum check after from changed to to (the
 * kernel's csum_replace4); csum_pseudo the same change to the pseudo-header
 * sum that a CHECKSUM_PARTIAL skb holds instead. mangled: a result of 0 is
 * written as 0xffff (UDP). */
static __always_inline __u16 csum_full(__u16 check, __u32 from, __u32 to, bool mangled)
{
	__u16 c = ~csum_fold16(csum_add32(csum_add32(~(__u32)check, ~from), to));

	return mangled && !c ? 0xffff : c;
}

static __always_inline __u16 csum_pseudo(__u16 check, __u32 from, __u32 to, bool mangled)
{
	__u16 c = csum_fold16(csum_add32(csum_add32((__u32)check, ~from), to));

	return mangled && !c ? 0xffff : c;
}

/* What nat_rewrite writes back at once: from the IP header checksum
 * (offset 10) to the end of the TCP checksum (the UDP one is nearer), what
 * lies between written as it was. */
#define NAT_STORE_OFF 10
#define NAT_STORE_MAX 28

/* skb->ip_summed, read from the kernel's sk_buff (CO-RE, the kernel's BTF):
 * how the L4 checksum of the packet is to be updated. */
#define CHECKSUM_NONE 0
#define CHECKSUM_UNNECESSARY 1
#define CHECKSUM_COMPLETE 2
#define CHECKSUM_PARTIAL 3

extern void *bpf_cast_to_kern_ctx(void *) __ksym;

struct sk_buff {
	__u8 ip_summed : 2;
} __attribute__((preserve_access_index));

static __always_inline int skb_ip_summed(struct __sk_buff *skb)
{
	struct sk_buff *k = bpf_cast_to_kern_ctx(skb);

	return BPF_CORE_READ_BITFIELD(k, ip_summed);
}

/* nat_rewrite replaces the source (dst == false) or destination address and
 * port, like nat_rewrite_slow, in one helper call rather than five (helper
 * calls are what a packet's time goes to): the checksums are computed here
 * as the csum helpers would (the skb's ip_summed says how: a
 * CHECKSUM_PARTIAL skb from a veth holds only the pseudo-header sum in the
 * L4 checksum), and the IP checksum and addresses, the port and the L4
 * checksum written in one store. What it does not handle (IP options, a
 * non-linear skb, CHECKSUM_COMPLETE, ICMP) goes to nat_rewrite_slow. */
static __always_inline int nat_rewrite(struct __sk_buff *skb, struct pkt *p, bool dst,
				       __be32 addr, __be16 port)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	__be32 old_addr = dst ? p->daddr : p->saddr;
	__be16 old_port = dst ? p->dport : p->sport;
	bool tcp = p->proto == IPPROTO_TCP;
	__u32 check_rel = tcp ? offsetof(struct tcphdr, check) : offsetof(struct udphdr, check);
	__u32 start = dst ? offsetof(struct tcphdr, dest) : offsetof(struct tcphdr, source);
	__u8 buf[NAT_STORE_MAX] __attribute__((aligned(8)));
	struct iphdr *ip;
	__u16 check, ipcheck;
	int summed;

	if ((!tcp && p->proto != IPPROTO_UDP) || !p->has_ports ||
	    p->l4_off != ETH_HLEN + sizeof(struct iphdr))
		return nat_rewrite_slow(skb, p, dst, addr, port);
	summed = skb_ip_summed(skb);
	if (summed == CHECKSUM_COMPLETE)
		return nat_rewrite_slow(skb, p, dst, addr, port);
	ip = data + ETH_HLEN;
	if ((void *)ip + NAT_STORE_OFF + NAT_STORE_MAX > data_end)
		return nat_rewrite_slow(skb, p, dst, addr, port);
	__builtin_memcpy(buf, (void *)ip + NAT_STORE_OFF, NAT_STORE_MAX);

	/* bpf_l4_csum_replace: a UDP checksum of 0 (none) stays; the address
	 * is in the pseudo header, which is all a CHECKSUM_PARTIAL checksum
	 * holds so far; the port only in a complete one. */
	__builtin_memcpy(&check, buf + 10 + check_rel, sizeof(check));
	if (tcp || check) {
		if (summed == CHECKSUM_PARTIAL) {
			check = csum_pseudo(check, old_addr, addr, !tcp);
		} else {
			check = csum_full(check, old_addr, addr, !tcp);
			check = csum_full(check, (__u16)old_port, (__u16)port, !tcp);
		}
	}
	ipcheck = csum_full(ip->check, old_addr, addr, false);
	__builtin_memcpy(buf, &ipcheck, sizeof(ipcheck));
	__builtin_memcpy(buf + (dst ? 6 : 2), &addr, sizeof(addr));
	__builtin_memcpy(buf + 10 + start, &port, sizeof(port));
	__builtin_memcpy(buf + 10 + check_rel, &check, sizeof(check));
	if (bpf_skb_store_bytes(skb, ETH_HLEN + NAT_STORE_OFF, buf, tcp ? NAT_STORE_MAX : 18, 0) < 0)
		return -1;

	if (dst) {
		p->daddr = addr;
		p->dport = port;
	} else {
		p->saddr = addr;
		p->sport = port;
	}
	return 0;
}
