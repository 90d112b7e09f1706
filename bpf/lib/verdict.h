// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* The computer's verdict (steps 2 to 5 of the precedence in egress.bpf.c) and the hooks' workers. */
#ifndef EG_LIB_VERDICT_H
#define EG_LIB_VERDICT_H

#include "dns.h"
#include "events.h"
#include "lookup.h"

/* Step 5 of the precedence, once the address checks are done. */
static __always_inline __u32 mode_verdict(__u32 mode, int matched)
{
	switch (mode) {
	case EGRESS_MODE_UNRESTRICTED:
		return ALLOW;
	case EGRESS_MODE_ALLOWLIST:
		return matched ? ALLOW : EGRESS_REASON_MODE;
	case EGRESS_MODE_DENYLIST:
		return matched ? EGRESS_REASON_RULE : ALLOW;
	default:
		return EGRESS_REASON_MODE;
	}
}

/* ip4 in network byte order, port in host byte order. */
static __always_inline __u32 sock4_verdict(struct bpf_sock_addr *ctx, const struct egress_computer *c, __u32 ip4,
					 __u16 port)
{
	__u8 proto = proto_bit(ctx->protocol);
	struct egress_internal_v4 ikey = {.prefixlen = 32};
	struct egress_lpm_v4 key = {.prefixlen = 64};
	struct egress_learned_v4 lkey = {};
	__u32 host = bpf_ntohl(ip4);
	int loopback = (host >> 24) == 127 || (host >> 24) == 0;
	__u32 verdict;
	int matched;

	if (is_dns(proto, port))
		return sock4_dns(ctx, c, ip4);
	if (is_proxy_port(port) && is_v4_proxy(ctx, ip4))
		return EGRESS_REASON_PROXY_PORT;
	if (loopback && !in_agent_netns(ctx))
		return ALLOW;
	key.policy_id = c->policy_id;
	__builtin_memcpy(key.addr, &ip4, 4);
	matched = c->policy_id && rule_matches(bpf_map_lookup_elem(&rules_v4, &key), c->policy_id, proto, port);
	if (!matched && c->learned_id) {
		lkey.learned_id = c->learned_id;
		__builtin_memcpy(lkey.addr, &ip4, 4);
		matched = learned_matches(bpf_map_lookup_elem(&learned_v4, &lkey), c->policy_id, proto, port);
	}
	verdict = mode_verdict(c->mode, matched);
	if (verdict == ALLOW)
		return ALLOW;
	/* Step 4 comes first in the precedence but only changes a refusal: looked up only for one. */
	__builtin_memcpy(ikey.addr, &ip4, 4);
	return bpf_map_lookup_elem(&internal_v4, &ikey) ? ALLOW : verdict;
}

/* ip6 in network byte order, port in host byte order. */
static __always_inline __u32 sock6_verdict(struct bpf_sock_addr *ctx, const struct egress_computer *c,
					 const __u32 ip6[4], __u16 port)
{
	__u8 proto = proto_bit(ctx->protocol);
	struct egress_internal_v6 ikey = {.prefixlen = 128};
	struct egress_lpm_v6 key = {.prefixlen = 160};
	struct egress_learned_v6 lkey = {};
	int loopback = is_v6_loopback_or_any(ip6);
	__u32 verdict;
	int matched;

	if (is_v4_mapped(ip6)) {
		if (is_dns(proto, port))
			return sock6_mapped_dns(ctx, c, ip6);
		return sock4_verdict(ctx, c, ip6[3], port);
	}
	if (is_dns(proto, port))
		return sock6_dns(ctx, c, ip6);
	if (is_proxy_port(port) && is_v6_proxy(ctx, ip6))
		return EGRESS_REASON_PROXY_PORT;
	if (loopback && !in_agent_netns(ctx))
		return ALLOW;
	key.policy_id = c->policy_id;
	__builtin_memcpy(key.addr, ip6, 16);
	matched = c->policy_id && rule_matches(bpf_map_lookup_elem(&rules_v6, &key), c->policy_id, proto, port);
	if (!matched && c->learned_id) {
		lkey.learned_id = c->learned_id;
		__builtin_memcpy(lkey.addr, ip6, 16);
		matched = learned_matches(bpf_map_lookup_elem(&learned_v6, &lkey), c->policy_id, proto, port);
	}
	verdict = mode_verdict(c->mode, matched);
	if (verdict == ALLOW)
		return ALLOW;
	/* Step 4 comes first in the precedence but only changes a refusal: looked up only for one. */
	__builtin_memcpy(ikey.addr, ip6, 16);
	return bpf_map_lookup_elem(&internal_v6, &ikey) ? ALLOW : verdict;
}

static __always_inline int sock4_judge(struct bpf_sock_addr *ctx)
{
	struct egress_computer *c = bpf_get_local_storage(&computers, 0);
	__u32 addr[4] = {ctx->user_ip4, 0, 0, 0};
	__u16 port = bpf_ntohs((__u16)ctx->user_port);
	__u32 reason;

	if (c->mode == EGRESS_MODE_UNRESTRICTED)
		return SYS_PROCEED;
	reason = sock4_verdict(ctx, c, addr[0], port);
	if (reason == ALLOW)
		return SYS_PROCEED;
	report(c, reason, 4, ctx->protocol, addr, port);
	return SYS_REJECT;
}

static __always_inline int sock6_judge(struct bpf_sock_addr *ctx)
{
	struct egress_computer *c = bpf_get_local_storage(&computers, 0);
	__u16 port = bpf_ntohs((__u16)ctx->user_port);
	__u32 ip6[4], reason;

	if (c->mode == EGRESS_MODE_UNRESTRICTED)
		return SYS_PROCEED;
	read_ip6(ctx, ip6);
	reason = sock6_verdict(ctx, c, ip6, port);
	if (reason == ALLOW)
		return SYS_PROCEED;
	report(c, reason, 6, ctx->protocol, ip6, port);
	return SYS_REJECT;
}

#endif /* EG_LIB_VERDICT_H */
