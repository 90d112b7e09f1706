// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* The maps (rules in bpf/include/egress_abi.h) and the config slots. */
#ifndef EG_LIB_MAPS_H
#define EG_LIB_MAPS_H

#include "common.h"

struct {
	__uint(type, BPF_MAP_TYPE_CGROUP_STORAGE);
	__type(key, __u64);
	__type(value, struct egress_computer);
} computers SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, EGRESS_MAX_RULE_ENTRIES);
	__type(key, struct egress_lpm_v4);
	__type(value, struct egress_rule);
} rules_v4 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, EGRESS_MAX_RULE_ENTRIES);
	__type(key, struct egress_lpm_v6);
	__type(value, struct egress_rule);
} rules_v6 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, EGRESS_MAX_RULE_ENTRIES);
	__type(key, struct egress_port_key);
	__type(value, __u8);
} rule_ports SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, EGRESS_MAX_INTERNAL_ENTRIES);
	__type(key, struct egress_internal_v4);
	__type(value, __u8);
} internal_v4 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, EGRESS_MAX_INTERNAL_ENTRIES);
	__type(key, struct egress_internal_v6);
	__type(value, __u8);
} internal_v6 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, EGRESS_MAX_LEARNED);
	__type(key, struct egress_learned_v4);
	__type(value, struct egress_learned);
} learned_v4 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, EGRESS_MAX_LEARNED);
	__type(key, struct egress_learned_v6);
	__type(value, struct egress_learned);
} learned_v6 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, EGRESS_MAX_DNS_SOCKETS);
	__type(key, __u64);
	__type(value, struct egress_dns_origin);
} dns_origin SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, EGRESS_MAX_COMPUTERS);
	__type(key, __u64);  /* cgroup id of an attached computer */
	__type(value, __u8); /* always 1 */
} governed SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, __u64); /* cgroup id of the governed computer the socket was made in */
} socket_owner SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, EGRESS_MAX_OBSERVED);
	__type(key, struct egress_observed_key);
	__type(value, struct egress_observed);
} observed SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, EGRESS_EVENTS_BYTES);
} deny_events SEC(".maps");

/* Never used: puts struct egress_deny_event into the object's BTF (a ring buffer has no value type). */
const struct egress_deny_event deny_event_layout __attribute__((unused)) = {};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, EGRESS_CONFIG_SLOTS);
	__type(key, __u32);
	__type(value, __u64);
} config SEC(".maps");

/*
 * Never read by the programs: user space replaces its one slot to wait for an
 * RCU grace period (the kernel calls synchronize_rcu() after any update of a
 * map-in-map), after which no program can still hold a retired policy_id.
 */
struct barrier_inner {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} barrier_inner SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, 1);
	__type(key, __u32);
	__array(values, struct barrier_inner);
} rcu_barrier SEC(".maps") = {
	.values = {[0] = &barrier_inner},
};

static __always_inline __u64 config_get(__u32 slot)
{
	__u64 *v = bpf_map_lookup_elem(&config, &slot);

	return v ? *v : 0;
}

#endif /* EG_LIB_MAPS_H */
