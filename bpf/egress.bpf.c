// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * egressd kernel programs: cgroup socket hooks that decide every outbound
 * connect() and unconnected sendto()/sendmsg() of a governed computer, and
 * send its DNS through the agent's proxy.
 *
 * Precedence, for a computer in any mode but unrestricted (first match wins):
 *   1. TCP/UDP to port 53, any address (DNS)         -> redirected to the
 *      computer's proxy port (refused when no proxy can be reached); what
 *      the proxy resolves, even nothing, is the proxy's business
 *   2. destination is a proxy port, not redirected   -> deny
 *   3. destination is loopback and the socket is not in the agent's network
 *      namespace (a computer's own loopback)          -> allow
 *   4. destination is in an internal CIDR (agent config) -> allow
 *   5. allowlist: a CIDR rule or a learned address (unexpired) matches -> allow,
 *                 else deny
 *      denylist:  a CIDR rule or a learned address matches -> deny, else allow
 *      isolated, pending (no policy written yet), unknown -> deny
 * IPv4-mapped IPv6 destinations (::ffff:a.b.c.d) are judged as IPv4.
 * Sockets other than TCP and UDP (raw, ICMP ping, SCTP, MPTCP, ...) cannot be
 * created in any mode but unrestricted: no connect or sendmsg hook sees
 * their packets.
 *
 * Under a sandbox root the guard programs (egress_guard_*, attached to the
 * root) run after the computer's own and refuse every call from a cgroup that
 * no attached computer covers (see "governed" in the ABI header).
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
#ifndef AF_INET
#define AF_INET 2
#define AF_INET6 10
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

/* True when the socket lives in the agent's network namespace (or no cookie is known yet). */
static __always_inline int in_agent_netns(struct bpf_sock_addr *ctx)
{
	__u64 agent = config_get(EGRESS_CONFIG_AGENT_NETNS_COOKIE);

	return agent == 0 || bpf_get_netns_cookie(ctx) == agent;
}

static __always_inline int is_proxy_port(__u16 port)
{
	__u64 range = config_get(EGRESS_CONFIG_DNS_PORTS);
	__u16 min = range & 0xffff, max = (range >> 16) & 0xffff;

	return min && port >= min && port <= max;
}

static __always_inline int is_v4_mapped(const __u32 ip6[4])
{
	return ip6[0] == 0 && ip6[1] == 0 && ip6[2] == bpf_htonl(0x0000ffff);
}

static __always_inline int is_v6_loopback_or_any(const __u32 ip6[4])
{
	return ip6[0] == 0 && ip6[1] == 0 && ip6[2] == 0 && (ip6[3] == 0 || ip6[3] == bpf_htonl(1));
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

/*
 * The verdict functions below return 0 to let a call through, else the
 * EGRESS_REASON_* of the refusal; the hooks turn that into SYS_REJECT plus a
 * deny event.
 */
#define ALLOW 0

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
 * Step 1: DNS may leave only through the proxy. A policy that resolves
 * nothing is the proxy's to answer (at once: a refused send makes some stub
 * resolvers wait for their timeout), so only a missing port refuses here.
 */
static __always_inline int dns_allowed(const struct egress_computer *c)
{
	return c->dns_port != 0;
}

static __always_inline int remember_origin(struct bpf_sock_addr *ctx, const struct egress_dns_origin *origin)
{
	__u64 cookie = bpf_get_socket_cookie(ctx);

	return bpf_map_update_elem(&dns_origin, &cookie, origin, BPF_ANY) == 0;
}

/* Where the proxy listens for this socket: loopback in the agent's namespace, else the configured address. */
static __always_inline int is_v4_proxy(struct bpf_sock_addr *ctx, __u32 ip4)
{
	__u32 host = bpf_ntohl(ip4);

	if (in_agent_netns(ctx))
		return (host >> 24) == 127 || (host >> 24) == 0;
	return ip4 == (__u32)config_get(EGRESS_CONFIG_PROXY_V4);
}

/* Redirects an IPv4 DNS message to the proxy; the verdict. */
static __always_inline __u32 sock4_dns(struct bpf_sock_addr *ctx, const struct egress_computer *c, __u32 ip4)
{
	struct egress_dns_origin origin = {.family = 4};
	__u32 proxy = bpf_htonl(0x7f000001); /* 127.0.0.1 */

	if (!dns_allowed(c))
		return EGRESS_REASON_DNS;
	if (!in_agent_netns(ctx)) {
		proxy = (__u32)config_get(EGRESS_CONFIG_PROXY_V4);
		if (!proxy)
			return EGRESS_REASON_DNS;
	}
	origin.addr[0] = ip4;
	origin.port = (__u16)ctx->user_port;
	if (!remember_origin(ctx, &origin))
		return EGRESS_REASON_DNS;
	ctx->user_ip4 = proxy;
	ctx->user_port = bpf_htons(c->dns_port);
	return ALLOW;
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

/* Where the proxy listens for this socket: ::1 in the agent's namespace, else the configured address. */
static __always_inline int is_v6_proxy(struct bpf_sock_addr *ctx, const __u32 ip6[4])
{
	__u64 hi, lo;

	if (in_agent_netns(ctx))
		return is_v6_loopback_or_any(ip6);
	hi = config_get(EGRESS_CONFIG_PROXY_V6_HI);
	lo = config_get(EGRESS_CONFIG_PROXY_V6_LO);
	if (!hi && !lo)
		return 0;
	return ip6[0] == (__u32)hi && ip6[1] == (__u32)(hi >> 32) && ip6[2] == (__u32)lo &&
	       ip6[3] == (__u32)(lo >> 32);
}

/* Redirects an IPv6 DNS message to the proxy; the verdict. */
static __always_inline __u32 sock6_dns(struct bpf_sock_addr *ctx, const struct egress_computer *c, const __u32 ip6[4])
{
	struct egress_dns_origin origin = {.family = 6};
	__u32 proxy[4] = {0, 0, 0, bpf_htonl(1)}; /* ::1 */

	if (!dns_allowed(c))
		return EGRESS_REASON_DNS;
	if (!in_agent_netns(ctx)) {
		__u64 hi = config_get(EGRESS_CONFIG_PROXY_V6_HI), lo = config_get(EGRESS_CONFIG_PROXY_V6_LO);

		if (!hi && !lo)
			return EGRESS_REASON_DNS;
		proxy[0] = (__u32)hi;
		proxy[1] = (__u32)(hi >> 32);
		proxy[2] = (__u32)lo;
		proxy[3] = (__u32)(lo >> 32);
	}
	origin.addr[0] = ip6[0];
	origin.addr[1] = ip6[1];
	origin.addr[2] = ip6[2];
	origin.addr[3] = ip6[3];
	origin.port = (__u16)ctx->user_port;
	if (!remember_origin(ctx, &origin))
		return EGRESS_REASON_DNS;
	/* Verifier: user_ip6 is written one 32-bit word at a time. */
	ctx->user_ip6[0] = proxy[0];
	ctx->user_ip6[1] = proxy[1];
	ctx->user_ip6[2] = proxy[2];
	ctx->user_ip6[3] = proxy[3];
	ctx->user_port = bpf_htons(c->dns_port);
	return ALLOW;
}

/* Redirects DNS sent to an IPv4-mapped address on an IPv6 socket, to the mapped 127.0.0.1 or proxy. */
static __always_inline __u32 sock6_mapped_dns(struct bpf_sock_addr *ctx, const struct egress_computer *c,
					    const __u32 ip6[4])
{
	struct egress_dns_origin origin = {.family = 6};
	__u32 proxy = bpf_htonl(0x7f000001);

	if (!dns_allowed(c))
		return EGRESS_REASON_DNS;
	if (!in_agent_netns(ctx)) {
		proxy = (__u32)config_get(EGRESS_CONFIG_PROXY_V4);
		if (!proxy)
			return EGRESS_REASON_DNS;
	}
	origin.addr[0] = ip6[0];
	origin.addr[1] = ip6[1];
	origin.addr[2] = ip6[2];
	origin.addr[3] = ip6[3];
	origin.port = (__u16)ctx->user_port;
	if (!remember_origin(ctx, &origin))
		return EGRESS_REASON_DNS;
	ctx->user_ip6[0] = 0;
	ctx->user_ip6[1] = 0;
	ctx->user_ip6[2] = bpf_htonl(0x0000ffff);
	ctx->user_ip6[3] = proxy;
	ctx->user_port = bpf_htons(c->dns_port);
	return ALLOW;
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

/* Writes a deny event; the ring buffer being full only costs the event (counted by the agent's gaps). */
static __always_inline void report(const struct egress_computer *c, __u32 reason, __u8 family, __u8 protocol,
				   const __u32 addr[4], __u16 port)
{
	struct egress_deny_event *e = bpf_ringbuf_reserve(&deny_events, sizeof(*e), 0);

	if (!e)
		return;
	e->time_ns = bpf_ktime_get_ns();
	e->cgroup_id = c->cgroup_id;
	e->pid = bpf_get_current_pid_tgid() >> 32;
	e->reason = reason;
	bpf_get_current_comm(e->comm, sizeof(e->comm));
	__builtin_memcpy(e->addr, addr, 16);
	e->port = port;
	e->family = family;
	e->protocol = protocol;
	e->pad = 0;
	bpf_ringbuf_submit(e, 0);
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

static __always_inline void read_ip6(struct bpf_sock_addr *ctx, __u32 ip6[4])
{
	/* Verifier: user_ip6 is read one 32-bit word at a time. */
	ip6[0] = ctx->user_ip6[0];
	ip6[1] = ctx->user_ip6[1];
	ip6[2] = ctx->user_ip6[2];
	ip6[3] = ctx->user_ip6[3];
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

/*
 * Replies from the proxy (recvmsg) and the peer of a socket connected to it
 * (getpeername) show the resolver the application asked. These hooks never
 * refuse anything.
 */
static __always_inline void sock4_unproxy(struct bpf_sock_addr *ctx)
{
	struct egress_computer *c = bpf_get_local_storage(&computers, 0);
	struct egress_dns_origin *origin;
	__u64 cookie;

	if (!c->dns_port || bpf_ntohs((__u16)ctx->user_port) != c->dns_port || !is_v4_proxy(ctx, ctx->user_ip4))
		return;
	cookie = bpf_get_socket_cookie(ctx);
	origin = bpf_map_lookup_elem(&dns_origin, &cookie);
	if (origin && origin->family == 4) {
		ctx->user_ip4 = origin->addr[0];
		ctx->user_port = origin->port;
	}
}

static __always_inline void sock6_unproxy(struct bpf_sock_addr *ctx)
{
	struct egress_computer *c = bpf_get_local_storage(&computers, 0);
	struct egress_dns_origin *origin;
	__u64 cookie;
	__u32 ip6[4];

	if (!c->dns_port || bpf_ntohs((__u16)ctx->user_port) != c->dns_port)
		return;
	read_ip6(ctx, ip6);
	if (is_v4_mapped(ip6) ? !is_v4_proxy(ctx, ip6[3]) : !is_v6_proxy(ctx, ip6))
		return;
	cookie = bpf_get_socket_cookie(ctx);
	origin = bpf_map_lookup_elem(&dns_origin, &cookie);
	if (!origin)
		return;
	if (origin->family == 4) {
		/* Sent through sendmsg4 (a v6 socket to a mapped address): answer as the mapped resolver. */
		ctx->user_ip6[0] = 0;
		ctx->user_ip6[1] = 0;
		ctx->user_ip6[2] = bpf_htonl(0x0000ffff);
		ctx->user_ip6[3] = origin->addr[0];
	} else {
		ctx->user_ip6[0] = origin->addr[0];
		ctx->user_ip6[1] = origin->addr[1];
		ctx->user_ip6[2] = origin->addr[2];
		ctx->user_ip6[3] = origin->addr[3];
	}
	ctx->user_port = origin->port;
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

SEC("cgroup/recvmsg4")
int egress_recvmsg4(struct bpf_sock_addr *ctx)
{
	sock4_unproxy(ctx);
	return SYS_PROCEED;
}

SEC("cgroup/recvmsg6")
int egress_recvmsg6(struct bpf_sock_addr *ctx)
{
	sock6_unproxy(ctx);
	return SYS_PROCEED;
}

SEC("cgroup/getpeername4")
int egress_getpeername4(struct bpf_sock_addr *ctx)
{
	sock4_unproxy(ctx);
	return SYS_PROCEED;
}

SEC("cgroup/getpeername6")
int egress_getpeername6(struct bpf_sock_addr *ctx)
{
	sock6_unproxy(ctx);
	return SYS_PROCEED;
}

/* Only plain TCP and UDP sockets exist in a governed computer. */
SEC("cgroup/sock_create")
int egress_sock_create(struct bpf_sock *sk)
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

/*
 * The guard, attached to a sandbox root. A socket may be created when the
 * caller's cgroup, or an ancestor of it, is a governed computer; the socket
 * remembers that computer ("socket_owner"), and its later calls pass only
 * while that computer is still governed. Judging connects by the calling
 * task's cgroup instead would let a socket made in a computer whose cgroup
 * was removed since (its programs detached) through from a governed one: the
 * kernel picks the programs that run by the socket's cgroup, not the task's.
 * The caller's own cgroup is looked up first (where a sandbox's processes
 * almost always are), then the ancestors from the top down.
 */
static __always_inline __u64 governing_computer(void)
{
	__u64 id = bpf_get_current_cgroup_id();
	int level;

	if (bpf_map_lookup_elem(&governed, &id))
		return id;
	for (level = 1; level < EGRESS_GUARD_MAX_DEPTH; level++) {
		id = bpf_get_current_ancestor_cgroup_id(level);
		if (!id)
			return 0;
		if (bpf_map_lookup_elem(&governed, &id))
			return id;
	}
	return 0;
}

static __always_inline int governed_socket(struct bpf_sock_addr *ctx)
{
	struct bpf_sock *sk = ctx->sk;
	__u64 *owner;

	if (!sk)
		return 0;
	owner = bpf_sk_storage_get(&socket_owner, sk, 0, 0);
	/* No owner: a socket made before the guard was attached; its caller decides. */
	if (!owner)
		return governing_computer() != 0;
	return *owner && bpf_map_lookup_elem(&governed, owner);
}

static __always_inline void report_ungoverned(__u8 family, __u8 protocol, const __u32 addr[4], __u16 port)
{
	struct egress_computer none = {.cgroup_id = bpf_get_current_cgroup_id()};

	report(&none, EGRESS_REASON_UNGOVERNED, family, protocol, addr, port);
}

static __always_inline int guard4(struct bpf_sock_addr *ctx)
{
	__u32 addr[4] = {ctx->user_ip4, 0, 0, 0};

	if (governed_socket(ctx))
		return SYS_PROCEED;
	report_ungoverned(4, ctx->protocol, addr, bpf_ntohs((__u16)ctx->user_port));
	return SYS_REJECT;
}

static __always_inline int guard6(struct bpf_sock_addr *ctx)
{
	__u32 ip6[4];

	if (governed_socket(ctx))
		return SYS_PROCEED;
	read_ip6(ctx, ip6);
	report_ungoverned(6, ctx->protocol, ip6, bpf_ntohs((__u16)ctx->user_port));
	return SYS_REJECT;
}

SEC("cgroup/connect4")
int egress_guard_connect4(struct bpf_sock_addr *ctx)
{
	return guard4(ctx);
}

SEC("cgroup/connect6")
int egress_guard_connect6(struct bpf_sock_addr *ctx)
{
	return guard6(ctx);
}

SEC("cgroup/sendmsg4")
int egress_guard_sendmsg4(struct bpf_sock_addr *ctx)
{
	return guard4(ctx);
}

SEC("cgroup/sendmsg6")
int egress_guard_sendmsg6(struct bpf_sock_addr *ctx)
{
	return guard6(ctx);
}

SEC("cgroup/sock_create")
int egress_guard_sock_create(struct bpf_sock *sk)
{
	__u64 owner = governing_computer();
	__u32 none[4] = {};
	__u64 *slot;

	if (owner) {
		slot = bpf_sk_storage_get(&socket_owner, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
		if (slot) {
			*slot = owner;
			return SYS_PROCEED;
		}
	}
	report_ungoverned(0, sk->protocol, none, 0);
	return SYS_REJECT;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
