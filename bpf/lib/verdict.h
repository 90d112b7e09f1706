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

/*
 * Steps 3 to 5, the same for a socket call and for revocation. The socket is
 * in the agent's network namespace when `ctx` says so (a hook: asked only
 * for a loopback destination), else when `agent_ns` does (revocation).
 * `fresh`: see learned_matches(). `bound`, when given, is set to the learned
 * entry's flags when an allowlist lets the destination through for a learned
 * address alone (no CIDR rule, no internal CIDR): see "name-bound" in the
 * ABI header.
 */
static __always_inline __u32 policy_verdict(struct bpf_sock_addr *ctx, int agent_ns, const struct egress_computer *c,
					    const struct eg_addr *a, __u8 proto, int fresh, __u8 *bound)
{
	struct egress_learned *l;
	__u32 verdict;
	int matched;

	if (addr_is_loopback(a) && !(ctx ? in_agent_netns(ctx) : agent_ns))
		return ALLOW;
	matched = c->policy_id && rule_matches(rule_lookup(c->policy_id, a), c->policy_id, proto, a->port);
	if (!matched && c->learned_id) {
		l = learned_lookup(c->learned_id, a);
		matched = learned_matches(l, c->policy_id, proto, a->port, fresh);
		if (matched && bound && l && c->mode == EGRESS_MODE_ALLOWLIST &&
		    (l->flags & EGRESS_LEARNED_BIND_NAME) && !internal_lookup(a))
			*bound = l->flags;
	}
	verdict = mode_verdict(c->mode, matched);
	if (verdict == ALLOW)
		return ALLOW;
	/* Step 4 comes first in the precedence but only changes a refusal: looked up only for one. */
	return internal_lookup(a) ? ALLOW : verdict;
}

/* Steps 1 to 5 for a destination of either family; `bound` as for policy_verdict(). */
static __always_inline __u32 addr_verdict(struct bpf_sock_addr *ctx, const struct egress_computer *c,
					  const struct eg_addr *a, __u8 *bound)
{
	__u8 proto = proto_bit(ctx->protocol);

	if (is_dns(proto, a->port))
		return dns_redirect(ctx, c, a);
	if (is_proxy_port(a->port) && is_proxy_addr(in_agent_netns(ctx), a))
		return EGRESS_REASON_PROXY_PORT;
	return policy_verdict(ctx, 0, c, a, proto, 1, bound);
}

/*
 * A name-bound destination (see the ABI header): a TCP socket is marked for
 * the check of its first bytes; UDP to port 443 (QUIC, whose name no program
 * can read) is refused unless a rule naming the address says "udp". A TCP
 * socket connected before to a destination that was not name-bound (a
 * failed connect, then another) loses its mark.
 */
static __always_inline __u32 bind_name(struct bpf_sock_addr *ctx, const struct egress_computer *c,
				       const struct eg_addr *a, __u8 bound)
{
	struct egress_name_check *nc;
	__u32 ip4;

	if (ctx->protocol == IPPROTO_UDP)
		return bound && a->port == 443 && !(bound & EGRESS_LEARNED_UDP) ? EGRESS_REASON_QUIC : ALLOW;
	if (ctx->protocol != IPPROTO_TCP)
		return ALLOW;
	nc = bpf_sk_storage_get(&name_checks, ctx->sk, 0, bound ? BPF_SK_STORAGE_GET_F_CREATE : 0);
	if (!nc)
		return bound ? EGRESS_REASON_NAME_MISMATCH : ALLOW; /* no memory for the mark: fail closed */
	if (!bound) {
		nc->state = 0;
		return ALLOW;
	}
	nc->cgroup_id = c->cgroup_id;
	nc->port = a->port;
	nc->family = a->family;
	if (a->family == 4) {
		ip4 = addr_v4(a);
		__builtin_memcpy(nc->addr, &ip4, 4);
	} else {
		__builtin_memcpy(nc->addr, a->ip, 16);
	}
	bpf_get_current_comm(nc->comm, sizeof(nc->comm));
	nc->state = EGRESS_NAME_PENDING;
	return ALLOW;
}

/*
 * The verdict on a connected socket's peer under a computer's policy, for
 * live revocation (bpf/revoke.bpf.c): the precedence above, as a connect to
 * that peer would be judged now, except that
 *   - a socket connected to the computer's own proxy port is where step 1
 *     sent it: kept;
 *   - a socket connected to port 53 elsewhere reached a resolver before DNS
 *     went through the proxy: closed;
 *   - learned addresses count past their TTL (see learned_matches());
 *   - a computer in audit keeps everything (its connects would be let through).
 */
static __always_inline __u32 peer_verdict(const struct egress_computer *c, const struct eg_addr *a, __u8 proto,
					  int agent_ns)
{
	if (c->mode == EGRESS_MODE_UNRESTRICTED || (c->flags & EGRESS_FLAG_AUDIT))
		return ALLOW;
	if (c->dns_port && a->port == c->dns_port && is_proxy_addr(agent_ns, a))
		return ALLOW;
	if (is_dns(proto, a->port))
		return EGRESS_REASON_DNS;
	return policy_verdict(0, agent_ns, c, a, proto, 0, 0);
}

/*
 * A destination the computer's call goes to (observations: what it connected
 * to, for the suggested allowlist), for a computer with EGRESS_FLAG_OBSERVE.
 * One hash lookup when the destination was seen before, an insert when not;
 * DNS and loopback are left out.
 */
static __always_inline void observe(const struct egress_computer *c, const struct eg_addr *a, __u32 protocol)
{
	struct egress_observed_key key = {
		.cgroup_id = c->cgroup_id, .port = a->port, .family = a->family, .protocol = protocol};
	struct egress_observed *seen, fresh = {};
	__u64 now = bpf_ktime_get_coarse_ns();
	__u32 ip4;

	if (!(c->flags & EGRESS_FLAG_OBSERVE) || is_dns(proto_bit(protocol), a->port) || addr_is_loopback(a))
		return;
	if (a->family == 4) {
		ip4 = addr_v4(a);
		__builtin_memcpy(key.addr, &ip4, 4);
	} else {
		__builtin_memcpy(key.addr, a->ip, 16);
	}
	seen = bpf_map_lookup_elem(&observed, &key);
	if (seen) {
		__sync_fetch_and_add(&seen->count, 1);
		seen->last_ns = now;
		return;
	}
	fresh.count = 1;
	fresh.first_ns = now;
	fresh.last_ns = now;
	bpf_map_update_elem(&observed, &key, &fresh, BPF_NOEXIST);
}

/* A refusal the computer's policy makes: SYS_REJECT, or in audit SYS_PROCEED (its event says it was audit). */
static __always_inline int refuse(const struct egress_computer *c)
{
	return c->flags & EGRESS_FLAG_AUDIT ? SYS_PROCEED : SYS_REJECT;
}

/* connect and sendmsg of a socket of family `sock` (4 or 6). */
static __always_inline int judge_addr(struct bpf_sock_addr *ctx, __u8 sock)
{
	struct egress_computer *c = bpf_get_local_storage(&computers, 0);
	struct eg_addr a;
	__u8 bound = 0;
	__u32 reason;

	addr_read(ctx, sock, &a);
	if (c->mode == EGRESS_MODE_UNRESTRICTED) {
		observe(c, &a, ctx->protocol);
		return SYS_PROCEED;
	}
	reason = addr_verdict(ctx, c, &a, &bound);
	if (reason == ALLOW)
		reason = bind_name(ctx, c, &a, bound);
	if (reason == ALLOW) {
		observe(c, &a, ctx->protocol);
		return SYS_PROCEED;
	}
	report(c, reason, sock, ctx->protocol, a.ip, a.port);
	if (refuse(c) == SYS_REJECT)
		return SYS_REJECT;
	observe(c, &a, ctx->protocol);
	return SYS_PROCEED;
}

/*
 * Only plain TCP and UDP sockets exist in a governed computer. Every socket
 * made under the computer's cgroup is marked as the computer's
 * ("socket_owner"), in every mode: the guard, which runs next, lets a socket
 * be made only with that mark (see guard_socket()).
 */
static __always_inline int judge_socket(struct bpf_sock *sk)
{
	struct egress_computer *c = bpf_get_local_storage(&computers, 0);
	__u64 *owner = bpf_sk_storage_get(&socket_owner, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	__u32 none[4] = {};

	if (owner)
		*owner = c->cgroup_id;
	if (c->mode == EGRESS_MODE_UNRESTRICTED)
		return SYS_PROCEED;
	if (sk->type == SOCK_STREAM && sk->protocol == IPPROTO_TCP)
		return SYS_PROCEED;
	if (sk->type == SOCK_DGRAM && sk->protocol == IPPROTO_UDP)
		return SYS_PROCEED;
	report(c, EGRESS_REASON_SOCKET, 0, sk->protocol, none, 0);
	return refuse(c);
}

#endif /* EG_LIB_VERDICT_H */
