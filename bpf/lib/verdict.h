// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* A computer's verdict (the precedence heading egress.bpf.c) and the workers of its hooks. */
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

/* Steps 1 to 5 for a destination of either family. */
static __always_inline __u32 addr_verdict(struct bpf_sock_addr *ctx, const struct egress_computer *c,
					  const struct eg_addr *a)
{
	__u8 proto = proto_bit(ctx->protocol);
	__u32 verdict;
	int matched;

	if (is_dns(proto, a->port))
		return dns_redirect(ctx, c, a);
	if (is_proxy_port(a->port) && is_proxy_addr(ctx, a))
		return EGRESS_REASON_PROXY_PORT;
	if (addr_is_loopback(a) && !in_agent_netns(ctx))
		return ALLOW;
	matched = c->policy_id && rule_matches(rule_lookup(c->policy_id, a), c->policy_id, proto, a->port);
	if (!matched && c->learned_id)
		matched = learned_matches(learned_lookup(c->learned_id, a), c->policy_id, proto, a->port);
	verdict = mode_verdict(c->mode, matched);
	if (verdict == ALLOW)
		return ALLOW;
	/* Step 4 comes first in the precedence but only changes a refusal: looked up only for one. */
	return internal_lookup(a) ? ALLOW : verdict;
}

/* connect and sendmsg of a socket of family `sock` (4 or 6). */
static __always_inline int judge_addr(struct bpf_sock_addr *ctx, __u8 sock)
{
	struct egress_computer *c = bpf_get_local_storage(&computers, 0);
	struct eg_addr a;
	__u32 reason;

	if (c->mode == EGRESS_MODE_UNRESTRICTED)
		return SYS_PROCEED;
	addr_read(ctx, sock, &a);
	reason = addr_verdict(ctx, c, &a);
	if (reason == ALLOW)
		return SYS_PROCEED;
	report(c, reason, sock, ctx->protocol, a.ip, a.port);
	return SYS_REJECT;
}

/* Only plain TCP and UDP sockets exist in a governed computer. */
static __always_inline int judge_socket(struct bpf_sock *sk)
{
	struct egress_computer *c = bpf_get_local_storage(&computers, 0);
	__u32 none[4] = {};

	if (c->mode == EGRESS_MODE_UNRESTRICTED)
		return SYS_PROCEED;
	if (sk->type == SOCK_STREAM && sk->protocol == IPPROTO_TCP)
		return SYS_PROCEED;
	if (sk->type == SOCK_DGRAM && sk->protocol == IPPROTO_UDP)
		return SYS_PROCEED;
	report(c, EGRESS_REASON_SOCKET, 0, sk->protocol, none, 0);
	return SYS_REJECT;
}

#endif /* EG_LIB_VERDICT_H */
