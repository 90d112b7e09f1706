// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* DNS through the proxy: the redirect (step 1), proxy ports (step 2), the answers shown as the resolver asked. */
#ifndef EG_LIB_DNS_H
#define EG_LIB_DNS_H

#include "addr.h"

static __always_inline int is_dns(__u8 proto, __u16 port)
{
	return port == DNS_PORT && (proto & (EGRESS_PROTO_TCP | EGRESS_PROTO_UDP));
}

static __always_inline int is_proxy_port(__u16 port)
{
	__u64 range = config_get(EGRESS_CONFIG_DNS_PORTS);
	__u16 min = range & 0xffff, max = (range >> 16) & 0xffff;

	return min && port >= min && port <= max;
}

/*
 * Step 1: DNS may leave only through the proxy. A policy that resolves
 * nothing is the proxy's to answer (at once: a refused send makes some stub
 * resolvers wait for their timeout), so only a missing port refuses here.
 */
static __always_inline int dns_allowed(const struct egress_computer *c)
{
	return c->dns_port != 0;
}

static __always_inline int remember_origin(struct bpf_sock_addr *ctx, const struct egress_dns_origin *origin)
{
	__u64 cookie = bpf_get_socket_cookie(ctx);

	return bpf_map_update_elem(&dns_origin, &cookie, origin, BPF_ANY) == 0;
}

/* Where the proxy listens for this socket: loopback in the agent's namespace, else the configured address. */
static __always_inline int is_v4_proxy(struct bpf_sock_addr *ctx, __u32 ip4)
{
	__u32 host = bpf_ntohl(ip4);

	if (in_agent_netns(ctx))
		return (host >> 24) == 127 || (host >> 24) == 0;
	return ip4 == (__u32)config_get(EGRESS_CONFIG_PROXY_V4);
}

/* Redirects an IPv4 DNS message to the proxy; the verdict. */
static __always_inline __u32 sock4_dns(struct bpf_sock_addr *ctx, const struct egress_computer *c, __u32 ip4)
{
	struct egress_dns_origin origin = {.family = 4};
	__u32 proxy = bpf_htonl(0x7f000001); /* 127.0.0.1 */

	if (!dns_allowed(c))
		return EGRESS_REASON_DNS;
	if (!in_agent_netns(ctx)) {
		proxy = (__u32)config_get(EGRESS_CONFIG_PROXY_V4);
		if (!proxy)
			return EGRESS_REASON_DNS;
	}
	origin.addr[0] = ip4;
	origin.port = (__u16)ctx->user_port;
	if (!remember_origin(ctx, &origin))
		return EGRESS_REASON_DNS;
	ctx->user_ip4 = proxy;
	ctx->user_port = bpf_htons(c->dns_port);
	return ALLOW;
}

/* Where the proxy listens for this socket: ::1 in the agent's namespace, else the configured address. */
static __always_inline int is_v6_proxy(struct bpf_sock_addr *ctx, const __u32 ip6[4])
{
	__u64 hi, lo;

	if (in_agent_netns(ctx))
		return is_v6_loopback_or_any(ip6);
	hi = config_get(EGRESS_CONFIG_PROXY_V6_HI);
	lo = config_get(EGRESS_CONFIG_PROXY_V6_LO);
	if (!hi && !lo)
		return 0;
	return ip6[0] == (__u32)hi && ip6[1] == (__u32)(hi >> 32) && ip6[2] == (__u32)lo &&
	       ip6[3] == (__u32)(lo >> 32);
}

/* Redirects an IPv6 DNS message to the proxy; the verdict. */
static __always_inline __u32 sock6_dns(struct bpf_sock_addr *ctx, const struct egress_computer *c, const __u32 ip6[4])
{
	struct egress_dns_origin origin = {.family = 6};
	__u32 proxy[4] = {0, 0, 0, bpf_htonl(1)}; /* ::1 */

	if (!dns_allowed(c))
		return EGRESS_REASON_DNS;
	if (!in_agent_netns(ctx)) {
		__u64 hi = config_get(EGRESS_CONFIG_PROXY_V6_HI), lo = config_get(EGRESS_CONFIG_PROXY_V6_LO);

		if (!hi && !lo)
			return EGRESS_REASON_DNS;
		proxy[0] = (__u32)hi;
		proxy[1] = (__u32)(hi >> 32);
		proxy[2] = (__u32)lo;
		proxy[3] = (__u32)(lo >> 32);
	}
	origin.addr[0] = ip6[0];
	origin.addr[1] = ip6[1];
	origin.addr[2] = ip6[2];
	origin.addr[3] = ip6[3];
	origin.port = (__u16)ctx->user_port;
	if (!remember_origin(ctx, &origin))
		return EGRESS_REASON_DNS;
	/* Verifier: user_ip6 is written one 32-bit word at a time. */
	ctx->user_ip6[0] = proxy[0];
	ctx->user_ip6[1] = proxy[1];
	ctx->user_ip6[2] = proxy[2];
	ctx->user_ip6[3] = proxy[3];
	ctx->user_port = bpf_htons(c->dns_port);
	return ALLOW;
}

/* Redirects DNS sent to an IPv4-mapped address on an IPv6 socket, to the mapped 127.0.0.1 or proxy. */
static __always_inline __u32 sock6_mapped_dns(struct bpf_sock_addr *ctx, const struct egress_computer *c,
					    const __u32 ip6[4])
{
	struct egress_dns_origin origin = {.family = 6};
	__u32 proxy = bpf_htonl(0x7f000001);

	if (!dns_allowed(c))
		return EGRESS_REASON_DNS;
	if (!in_agent_netns(ctx)) {
		proxy = (__u32)config_get(EGRESS_CONFIG_PROXY_V4);
		if (!proxy)
			return EGRESS_REASON_DNS;
	}
	origin.addr[0] = ip6[0];
	origin.addr[1] = ip6[1];
	origin.addr[2] = ip6[2];
	origin.addr[3] = ip6[3];
	origin.port = (__u16)ctx->user_port;
	if (!remember_origin(ctx, &origin))
		return EGRESS_REASON_DNS;
	ctx->user_ip6[0] = 0;
	ctx->user_ip6[1] = 0;
	ctx->user_ip6[2] = bpf_htonl(0x0000ffff);
	ctx->user_ip6[3] = proxy;
	ctx->user_port = bpf_htons(c->dns_port);
	return ALLOW;
}

/*
 * Replies from the proxy (recvmsg) and the peer of a socket connected to it
 * (getpeername) show the resolver the application asked. These hooks never
 * refuse anything.
 */
static __always_inline void sock4_unproxy(struct bpf_sock_addr *ctx)
{
	struct egress_computer *c = bpf_get_local_storage(&computers, 0);
	struct egress_dns_origin *origin;
	__u64 cookie;

	if (!c->dns_port || bpf_ntohs((__u16)ctx->user_port) != c->dns_port || !is_v4_proxy(ctx, ctx->user_ip4))
		return;
	cookie = bpf_get_socket_cookie(ctx);
	origin = bpf_map_lookup_elem(&dns_origin, &cookie);
	if (origin && origin->family == 4) {
		ctx->user_ip4 = origin->addr[0];
		ctx->user_port = origin->port;
	}
}

static __always_inline void sock6_unproxy(struct bpf_sock_addr *ctx)
{
	struct egress_computer *c = bpf_get_local_storage(&computers, 0);
	struct egress_dns_origin *origin;
	__u64 cookie;
	__u32 ip6[4];

	if (!c->dns_port || bpf_ntohs((__u16)ctx->user_port) != c->dns_port)
		return;
	read_ip6(ctx, ip6);
	if (is_v4_mapped(ip6) ? !is_v4_proxy(ctx, ip6[3]) : !is_v6_proxy(ctx, ip6))
		return;
	cookie = bpf_get_socket_cookie(ctx);
	origin = bpf_map_lookup_elem(&dns_origin, &cookie);
	if (!origin)
		return;
	if (origin->family == 4) {
		/* Sent through sendmsg4 (a v6 socket to a mapped address): answer as the mapped resolver. */
		ctx->user_ip6[0] = 0;
		ctx->user_ip6[1] = 0;
		ctx->user_ip6[2] = bpf_htonl(0x0000ffff);
		ctx->user_ip6[3] = origin->addr[0];
	} else {
		ctx->user_ip6[0] = origin->addr[0];
		ctx->user_ip6[1] = origin->addr[1];
		ctx->user_ip6[2] = origin->addr[2];
		ctx->user_ip6[3] = origin->addr[3];
	}
	ctx->user_port = origin->port;
}

#endif /* EG_LIB_DNS_H */
