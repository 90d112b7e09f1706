// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* Where a socket call is going, and from which network namespace. */
#ifndef EG_LIB_ADDR_H
#define EG_LIB_ADDR_H

#include "maps.h"

/* True when the socket lives in the agent's network namespace (or no cookie is known yet). */
static __always_inline int in_agent_netns(struct bpf_sock_addr *ctx)
{
	__u64 agent = config_get(EGRESS_CONFIG_AGENT_NETNS_COOKIE);

	return agent == 0 || bpf_get_netns_cookie(ctx) == agent;
}

static __always_inline int is_v4_mapped(const __u32 ip6[4])
{
	return ip6[0] == 0 && ip6[1] == 0 && ip6[2] == bpf_htonl(0x0000ffff);
}

static __always_inline int is_v6_loopback_or_any(const __u32 ip6[4])
{
	return ip6[0] == 0 && ip6[1] == 0 && ip6[2] == 0 && (ip6[3] == 0 || ip6[3] == bpf_htonl(1));
}

static __always_inline void read_ip6(struct bpf_sock_addr *ctx, __u32 ip6[4])
{
	/* Verifier: user_ip6 is read one 32-bit word at a time. */
	ip6[0] = ctx->user_ip6[0];
	ip6[1] = ctx->user_ip6[1];
	ip6[2] = ctx->user_ip6[2];
	ip6[3] = ctx->user_ip6[3];
}

#endif /* EG_LIB_ADDR_H */
