// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* The policy's maps for a destination: rules, learned addresses, internal CIDRs. */
#ifndef EG_LIB_LOOKUP_H
#define EG_LIB_LOOKUP_H

#include "addr.h"

static __always_inline __u8 proto_bit(__u32 protocol)
{
	if (protocol == IPPROTO_TCP)
		return EGRESS_PROTO_TCP;
	if (protocol == IPPROTO_UDP)
		return EGRESS_PROTO_UDP;
	return EGRESS_PROTO_OTHER;
}

static __always_inline int port_matches(__u32 policy_id, __u32 port_set, __u8 any_port_protos, __u8 proto,
					__u16 port)
{
	struct egress_port_key key = {};

	if (any_port_protos & proto)
		return 1;
	if (!port_set)
		return 0;
	key.policy_id = policy_id;
	key.port_set = port_set;
	key.port = port;
	key.proto = proto;
	return bpf_map_lookup_elem(&rule_ports, &key) != NULL;
}

static __always_inline int rule_matches(const struct egress_rule *rule, __u32 policy_id, __u8 proto,
					__u16 port)
{
	return rule && port_matches(policy_id, rule->port_set, rule->any_port_protos, proto, port);
}

/*
 * `fresh`: the address counts only until its TTL runs out (a connect or a
 * send); revocation passes 0, so that a connection made while the address
 * was fresh is not closed for the TTL alone (the agent keeps expired entries
 * a while for that: LEARNED_GRACE_MS in daemon/kernel/learned-table.ts).
 * The coarse clock (CLOCK_MONOTONIC_COARSE, the agent's clock at tick
 * resolution) is enough for TTLs of seconds, and costs far less than
 * bpf_ktime_get_ns() on this hot path: an entry may outlive its TTL by one tick.
 */
static __always_inline int learned_matches(const struct egress_learned *l, __u32 policy_id, __u8 proto,
					   __u16 port, int fresh)
{
	return l && (!fresh || l->expires_ns > bpf_ktime_get_coarse_ns()) &&
	       port_matches(policy_id, l->port_set, l->any_port_protos, proto, port);
}

/* The longest prefix of the policy's rules holding the destination. */
static __always_inline struct egress_rule *rule_lookup(__u32 policy_id, const struct eg_addr *a)
{
	struct egress_lpm_v4 key4 = {.prefixlen = 64, .policy_id = policy_id};
	struct egress_lpm_v6 key6 = {.prefixlen = 160, .policy_id = policy_id};
	__u32 ip4;

	if (a->family == 4) {
		ip4 = addr_v4(a);
		__builtin_memcpy(key4.addr, &ip4, 4);
		return bpf_map_lookup_elem(&rules_v4, &key4);
	}
	__builtin_memcpy(key6.addr, a->ip, 16);
	return bpf_map_lookup_elem(&rules_v6, &key6);
}

static __always_inline struct egress_learned *learned_lookup(__u32 learned_id, const struct eg_addr *a)
{
	struct egress_learned_v4 key4 = {.learned_id = learned_id};
	struct egress_learned_v6 key6 = {.learned_id = learned_id};
	__u32 ip4;

	if (a->family == 4) {
		ip4 = addr_v4(a);
		__builtin_memcpy(key4.addr, &ip4, 4);
		return bpf_map_lookup_elem(&learned_v4, &key4);
	}
	__builtin_memcpy(key6.addr, a->ip, 16);
	return bpf_map_lookup_elem(&learned_v6, &key6);
}

/* True when the destination is in an internal CIDR. */
static __always_inline int internal_lookup(const struct eg_addr *a)
{
	struct egress_internal_v4 key4 = {.prefixlen = 32};
	struct egress_internal_v6 key6 = {.prefixlen = 128};
	__u32 ip4;

	if (a->family == 4) {
		ip4 = addr_v4(a);
		__builtin_memcpy(key4.addr, &ip4, 4);
		return bpf_map_lookup_elem(&internal_v4, &key4) != NULL;
	}
	__builtin_memcpy(key6.addr, a->ip, 16);
	return bpf_map_lookup_elem(&internal_v6, &key6) != NULL;
}

#endif /* EG_LIB_LOOKUP_H */
