// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* Rule and learned-address matches. */
#ifndef EG_LIB_LOOKUP_H
#define EG_LIB_LOOKUP_H

#include "maps.h"

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
 * The coarse clock (CLOCK_MONOTONIC_COARSE, the agent's clock at tick
 * resolution) is enough for TTLs of seconds, and costs far less than
 * bpf_ktime_get_ns() on this hot path: an entry may outlive its TTL by one tick.
 */
static __always_inline int learned_matches(const struct egress_learned *l, __u32 policy_id, __u8 proto,
					   __u16 port)
{
	return l && l->expires_ns > bpf_ktime_get_coarse_ns() &&
	       port_matches(policy_id, l->port_set, l->any_port_protos, proto, port);
}

#endif /* EG_LIB_LOOKUP_H */
