// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* A socket call's destination, IPv4 or IPv6, in one form; the caller's network namespace. */
#ifndef EG_LIB_ADDR_H
#define EG_LIB_ADDR_H

#include "maps.h"

/*
 * The workers take this one form for both families. Each hook passes its
 * socket family as a constant and everything is inlined, so a v4 hook keeps
 * no v6 code: no cost over separate v4 and v6 functions.
 */
struct eg_addr {
	__u32 ip[4];  /* network byte order, as the call gave it: an IPv4 socket's address in ip[0] */
	__u16 port;   /* host byte order */
	__u8 sock;    /* 4 or 6: the socket's family (user_ip4 or user_ip6 of the context) */
	__u8 family;  /* 4 or 6: how it is judged; 4 for an IPv4-mapped IPv6 address */
};

static __always_inline int is_v4_mapped(const __u32 ip6[4])
{
	return ip6[0] == 0 && ip6[1] == 0 && ip6[2] == bpf_htonl(0x0000ffff);
}

static __always_inline void addr_read(struct bpf_sock_addr *ctx, __u8 sock, struct eg_addr *a)
{
	a->port = bpf_ntohs((__u16)ctx->user_port);
	a->sock = sock;
	if (sock == 4) {
		a->ip[0] = ctx->user_ip4;
		a->ip[1] = 0;
		a->ip[2] = 0;
		a->ip[3] = 0;
		a->family = 4;
		return;
	}
	/* Verifier: user_ip6 is read one 32-bit word at a time. */
	a->ip[0] = ctx->user_ip6[0];
	a->ip[1] = ctx->user_ip6[1];
	a->ip[2] = ctx->user_ip6[2];
	a->ip[3] = ctx->user_ip6[3];
	a->family = is_v4_mapped(a->ip) ? 4 : 6;
}

/* The IPv4 address of a destination judged as IPv4 (network byte order). */
static __always_inline __u32 addr_v4(const struct eg_addr *a)
{
	return a->sock == 4 ? a->ip[0] : a->ip[3];
}

/* 127.0.0.0/8 and 0.0.0.0/8; ::1 and ::. */
static __always_inline int addr_is_loopback(const struct eg_addr *a)
{
	__u32 first;

	if (a->family == 4) {
		first = bpf_ntohl(addr_v4(a)) >> 24;
		return first == 127 || first == 0;
	}
	return a->ip[0] == 0 && a->ip[1] == 0 && a->ip[2] == 0 && (a->ip[3] == 0 || a->ip[3] == bpf_htonl(1));
}

/*
 * Writes an address of `family` (IPv4 in ip[0]) into the context as a socket
 * of family `sock` holds it: IPv4-mapped on an IPv6 socket.
 */
static __always_inline void addr_write(struct bpf_sock_addr *ctx, __u8 sock, __u8 family, const __u32 ip[4])
{
	if (sock == 4) {
		ctx->user_ip4 = ip[0];
		return;
	}
	/* Verifier: user_ip6 is written one 32-bit word at a time. */
	if (family == 4) {
		ctx->user_ip6[0] = 0;
		ctx->user_ip6[1] = 0;
		ctx->user_ip6[2] = bpf_htonl(0x0000ffff);
		ctx->user_ip6[3] = ip[0];
		return;
	}
	ctx->user_ip6[0] = ip[0];
	ctx->user_ip6[1] = ip[1];
	ctx->user_ip6[2] = ip[2];
	ctx->user_ip6[3] = ip[3];
}

/* True when the socket lives in the agent's network namespace (or no cookie is known yet). */
static __always_inline int in_agent_netns(struct bpf_sock_addr *ctx)
{
	__u64 agent = config_get(EGRESS_CONFIG_AGENT_NETNS_COOKIE);

	return agent == 0 || bpf_get_netns_cookie(ctx) == agent;
}

#endif /* EG_LIB_ADDR_H */
