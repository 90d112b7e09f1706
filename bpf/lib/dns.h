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
 * Where the proxy listens for a socket: loopback in the agent's namespace
 * (`agent_ns`), else the configured address.
 */
static __always_inline int is_proxy_addr(int agent_ns, const struct eg_addr *a)
{
	__u64 hi, lo;

	if (agent_ns)
		return addr_is_loopback(a);
	if (a->family == 4)
		return addr_v4(a) == (__u32)config_get(EGRESS_CONFIG_PROXY_V4);
	hi = config_get(EGRESS_CONFIG_PROXY_V6_HI);
	lo = config_get(EGRESS_CONFIG_PROXY_V6_LO);
	if (!hi && !lo)
		return 0;
	return a->ip[0] == (__u32)hi && a->ip[1] == (__u32)(hi >> 32) && a->ip[2] == (__u32)lo &&
	       a->ip[3] == (__u32)(lo >> 32);
}

/* The proxy's address of `family` for this socket (IPv4 in ip[0]); 0 when there is none. */
static __always_inline int proxy_addr(struct bpf_sock_addr *ctx, __u8 family, __u32 ip[4])
{
	__u64 hi, lo;

	if (in_agent_netns(ctx)) {
		if (family == 4) {
			ip[0] = bpf_htonl(0x7f000001); /* 127.0.0.1 */
			return 1;
		}
		ip[0] = 0; /* ::1 */
		ip[1] = 0;
		ip[2] = 0;
		ip[3] = bpf_htonl(1);
		return 1;
	}
	if (family == 4) {
		ip[0] = (__u32)config_get(EGRESS_CONFIG_PROXY_V4);
		return ip[0] != 0;
	}
	hi = config_get(EGRESS_CONFIG_PROXY_V6_HI);
	lo = config_get(EGRESS_CONFIG_PROXY_V6_LO);
	ip[0] = (__u32)hi;
	ip[1] = (__u32)(hi >> 32);
	ip[2] = (__u32)lo;
	ip[3] = (__u32)(lo >> 32);
	return hi || lo;
}

static __always_inline int remember_origin(struct bpf_sock_addr *ctx, const struct egress_dns_origin *origin)
{
	__u64 cookie = bpf_get_socket_cookie(ctx);

	return bpf_map_update_elem(&dns_origin, &cookie, origin, BPF_ANY) == 0;
}

/*
 * Step 1: DNS may leave only through the proxy; redirects it there, to the
 * proxy of the family it is judged as (mapped on an IPv6 socket), and
 * returns the verdict. A policy that resolves nothing is the proxy's to
 * answer (at once: a refused send makes some stub resolvers wait for their
 * timeout), so only a missing port or proxy refuses here.
 */
static __always_inline __u32 dns_redirect(struct bpf_sock_addr *ctx, const struct egress_computer *c,
					  const struct eg_addr *a)
{
	struct egress_dns_origin origin = {.family = a->sock};
	__u32 proxy[4] = {};

	if (!c->dns_port)
		return EGRESS_REASON_DNS;
	if (!proxy_addr(ctx, a->family, proxy))
		return EGRESS_REASON_DNS;
	__builtin_memcpy(origin.addr, a->ip, 16);
	origin.port = (__u16)ctx->user_port;
	if (!remember_origin(ctx, &origin))
		return EGRESS_REASON_DNS;
	addr_write(ctx, a->sock, a->family, proxy);
	ctx->user_port = bpf_htons(c->dns_port);
	return ALLOW;
}

/*
 * Replies from the proxy (recvmsg) and the peer of a socket connected to it
 * (getpeername) show the resolver the application asked. Never refuses.
 */
static __always_inline void dns_unproxy(struct bpf_sock_addr *ctx, __u8 sock)
{
	struct egress_computer *c = bpf_get_local_storage(&computers, 0);
	struct egress_dns_origin *origin;
	struct eg_addr a;
	__u64 cookie;

	if (!c->dns_port || bpf_ntohs((__u16)ctx->user_port) != c->dns_port)
		return;
	addr_read(ctx, sock, &a);
	if (!is_proxy_addr(in_agent_netns(ctx), &a))
		return;
	cookie = bpf_get_socket_cookie(ctx);
	origin = bpf_map_lookup_elem(&dns_origin, &cookie);
	if (!origin || (sock == 4 && origin->family != 4))
		return;
	/* An origin of family 4 on an IPv6 socket went through sendmsg4 (a mapped address): answer as the mapped resolver. */
	addr_write(ctx, sock, origin->family == 4 ? 4 : 6, origin->addr);
	ctx->user_port = origin->port;
}

#endif /* EG_LIB_DNS_H */
