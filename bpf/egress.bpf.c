// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * egressd kernel programs: cgroup socket hooks that decide every outbound
 * connect() and unconnected sendto()/sendmsg() of a governed computer.
 *
 * Precedence, for a computer in any mode but unrestricted (first match wins):
 *   1. destination is loopback and the socket is not in the agent's network
 *      namespace (a computer's own loopback)              -> allow
 *   2. destination is in an internal CIDR (agent config)  -> allow
 *   3. allowlist or isolated, TCP/UDP to port 53 (DNS)    -> allow
 *   4. allowlist: a rule matches -> allow, else deny
 *      denylist:  a rule matches -> deny,  else allow
 *      isolated, pending (no policy written yet), unknown -> deny
 * IPv4-mapped IPv6 destinations (::ffff:a.b.c.d) are judged as IPv4.
 * Sockets other than TCP and UDP (raw, ICMP ping, SCTP, MPTCP, ...) cannot be
 * created in any mode but unrestricted: no connect or sendmsg hook sees
 * their packets.
 */
#include <linux/bpf.h>
#include <linux/in.h>
#include <linux/socket.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "include/egress_abi.h"

#define SYS_REJECT 0
#define SYS_PROCEED 1

#ifndef SOCK_STREAM
#define SOCK_STREAM 1
#define SOCK_DGRAM 2
#endif

#define DNS_PORT 53

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

static __always_inline __u8 proto_bit(__u32 protocol)
{
	if (protocol == IPPROTO_TCP)
		return EGRESS_PROTO_TCP;
	if (protocol == IPPROTO_UDP)
		return EGRESS_PROTO_UDP;
	return EGRESS_PROTO_OTHER;
}

static __always_inline int is_dns(__u8 proto, __u16 port)
{
	return port == DNS_PORT && (proto & (EGRESS_PROTO_TCP | EGRESS_PROTO_UDP));
}

/* True when the socket lives in another network namespace than the agent's. */
static __always_inline int in_own_netns(struct bpf_sock_addr *ctx)
{
	__u32 slot = EGRESS_CONFIG_AGENT_NETNS_COOKIE;
	__u64 *agent = bpf_map_lookup_elem(&config, &slot);

	/* No cookie written yet: treat as the agent's namespace (stricter). */
	if (!agent || *agent == 0)
		return 0;
	return bpf_get_netns_cookie(ctx) != *agent;
}

static __always_inline int rule_matches(const struct egress_rule *rule, __u32 policy_id, __u8 proto,
					__u16 port)
{
	struct egress_port_key key = {};

	if (!rule)
		return 0;
	if (rule->any_port_protos & proto)
		return 1;
	if (!rule->port_set)
		return 0;
	key.policy_id = policy_id;
	key.port_set = rule->port_set;
	key.port = port;
	key.proto = proto;
	return bpf_map_lookup_elem(&rule_ports, &key) != NULL;
}

/* Steps 3 and 4 of the precedence, once the address checks are done. */
static __always_inline int mode_verdict(__u32 mode, int matched, __u8 proto, __u16 port)
{
	switch (mode) {
	case EGRESS_MODE_UNRESTRICTED:
		return SYS_PROCEED;
	case EGRESS_MODE_ALLOWLIST:
		return matched || is_dns(proto, port) ? SYS_PROCEED : SYS_REJECT;
	case EGRESS_MODE_DENYLIST:
		return matched ? SYS_REJECT : SYS_PROCEED;
	case EGRESS_MODE_ISOLATED:
		return is_dns(proto, port) ? SYS_PROCEED : SYS_REJECT;
	default:
		return SYS_REJECT;
	}
}

/* ip4 in network byte order, port in host byte order. */
static __always_inline int sock4_verdict(struct bpf_sock_addr *ctx, const struct egress_computer *c, __u32 ip4,
					 __u16 port)
{
	__u8 proto = proto_bit(ctx->protocol);
	struct egress_internal_v4 ikey = {.prefixlen = 32};
	struct egress_lpm_v4 key = {.prefixlen = 64};
	__u32 host = bpf_ntohl(ip4);

	/* 127.0.0.0/8, and 0.0.0.0/8 which the kernel also delivers locally. */
	if (((host >> 24) == 127 || (host >> 24) == 0) && in_own_netns(ctx))
		return SYS_PROCEED;
	__builtin_memcpy(ikey.addr, &ip4, 4);
	if (bpf_map_lookup_elem(&internal_v4, &ikey))
		return SYS_PROCEED;
	key.policy_id = c->policy_id;
	__builtin_memcpy(key.addr, &ip4, 4);
	return mode_verdict(c->mode, rule_matches(bpf_map_lookup_elem(&rules_v4, &key), c->policy_id, proto, port),
			    proto, port);
}

static __always_inline int is_v4_mapped(const __u32 ip6[4])
{
	return ip6[0] == 0 && ip6[1] == 0 && ip6[2] == bpf_htonl(0x0000ffff);
}

/* ip6 in network byte order, port in host byte order. */
static __always_inline int sock6_verdict(struct bpf_sock_addr *ctx, const struct egress_computer *c,
					 const __u32 ip6[4], __u16 port)
{
	__u8 proto = proto_bit(ctx->protocol);
	struct egress_internal_v6 ikey = {.prefixlen = 128};
	struct egress_lpm_v6 key = {.prefixlen = 160};
	int loopback_or_any = ip6[0] == 0 && ip6[1] == 0 && ip6[2] == 0 &&
			      (ip6[3] == 0 || ip6[3] == bpf_htonl(1));

	if (is_v4_mapped(ip6))
		return sock4_verdict(ctx, c, ip6[3], port);
	if (loopback_or_any && in_own_netns(ctx))
		return SYS_PROCEED;
	__builtin_memcpy(ikey.addr, ip6, 16);
	if (bpf_map_lookup_elem(&internal_v6, &ikey))
		return SYS_PROCEED;
	key.policy_id = c->policy_id;
	__builtin_memcpy(key.addr, ip6, 16);
	return mode_verdict(c->mode, rule_matches(bpf_map_lookup_elem(&rules_v6, &key), c->policy_id, proto, port),
			    proto, port);
}

static __always_inline int sock4_judge(struct bpf_sock_addr *ctx)
{
	struct egress_computer *c = bpf_get_local_storage(&computers, 0);

	if (c->mode == EGRESS_MODE_UNRESTRICTED)
		return SYS_PROCEED;
	return sock4_verdict(ctx, c, ctx->user_ip4, bpf_ntohs((__u16)ctx->user_port));
}

static __always_inline int sock6_judge(struct bpf_sock_addr *ctx)
{
	struct egress_computer *c = bpf_get_local_storage(&computers, 0);
	__u32 ip6[4];

	if (c->mode == EGRESS_MODE_UNRESTRICTED)
		return SYS_PROCEED;
	/* Verifier: user_ip6 is read one 32-bit word at a time. */
	ip6[0] = ctx->user_ip6[0];
	ip6[1] = ctx->user_ip6[1];
	ip6[2] = ctx->user_ip6[2];
	ip6[3] = ctx->user_ip6[3];
	return sock6_verdict(ctx, c, ip6, bpf_ntohs((__u16)ctx->user_port));
}

SEC("cgroup/connect4")
int egress_connect4(struct bpf_sock_addr *ctx)
{
	return sock4_judge(ctx);
}

SEC("cgroup/connect6")
int egress_connect6(struct bpf_sock_addr *ctx)
{
	return sock6_judge(ctx);
}

SEC("cgroup/sendmsg4")
int egress_sendmsg4(struct bpf_sock_addr *ctx)
{
	return sock4_judge(ctx);
}

SEC("cgroup/sendmsg6")
int egress_sendmsg6(struct bpf_sock_addr *ctx)
{
	return sock6_judge(ctx);
}

/* Only plain TCP and UDP sockets exist in a governed computer. */
SEC("cgroup/sock_create")
int egress_sock_create(struct bpf_sock *sk)
{
	struct egress_computer *c = bpf_get_local_storage(&computers, 0);

	if (c->mode == EGRESS_MODE_UNRESTRICTED)
		return SYS_PROCEED;
	if (sk->type == SOCK_STREAM && sk->protocol == IPPROTO_TCP)
		return SYS_PROCEED;
	if (sk->type == SOCK_DGRAM && sk->protocol == IPPROTO_UDP)
		return SYS_PROCEED;
	return SYS_REJECT;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
