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

/* Name-bound connections (see the ABI header). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, EGRESS_MAX_LEARNED_NAMES);
	__type(key, struct egress_learned_name);
	__type(value, struct egress_rule);
} learned_names SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, EGRESS_MAX_COMPUTERS);
	__type(key, __u64); /* cgroup id of an attached computer */
	__type(value, struct egress_computer);
} computer_values SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct egress_name_check);
} name_checks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__uint(max_entries, EGRESS_MAX_NAME_CHECKS);
	__type(key, __u64); /* socket cookie */
	__type(value, __u64);
} name_check_socks SEC(".maps");

#define NAME_BUF 16384 /* a power of two: indexes are masked with NAME_MASK for the verifier */
#define NAME_MASK (NAME_BUF - 1)

/*
 * Scratch space of the sk_msg program, one per CPU. `busy` guards it where
 * the kernel may preempt a program (a fully preemptible kernel): a second
 * judgement on the same CPU meanwhile is refused, never mixed with the first.
 */
struct name_scratch {
	__u8 buf[NAME_BUF];           /* the first bytes, copied out of the message */
	__u8 name[EGRESS_NAME_MAX];   /* the name found, lower case */
	struct egress_learned_name key;
	__u32 busy;
	__u32 len;                    /* bytes in buf */
	__u32 name_len;
	__u32 policy_id, port, found, labels; /* name_allowed */
	/* HTTP head scan (http_step) */
	__u32 pos, line, lines, sp1, sp2, req_end, head_end, host_off, host_len, hosts, folded;
	__u32 auth_off, auth_len, auth_host, auth_colon, auth_literal; /* authority_name */
	__u32 target_off, target_len, target_end; /* an absolute or CONNECT target's authority (http_name) */
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct name_scratch);
} name_scratch SEC(".maps");

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
