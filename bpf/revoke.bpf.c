// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * egressd's live revocation: socket iterators (iter/tcp, iter/udp; Linux
 * 6.5+ for bpf_sock_destroy) that close every connected socket of the
 * computers in "revoking" whose peer their policy now refuses, judged by the
 * connect hooks' own verdict code (peer_verdict in lib/verdict.h). A second
 * object, so that a kernel without the kfunc still loads egress.bpf.o; the
 * agent loads it with egress.bpf.o's maps (daemon/kernel/revoker.ts).
 *
 * An iterator walks the sockets of the network namespace it was created in,
 * every one of them: the cgroup check comes first and costs a few loads per
 * socket of another computer or of the host.
 */
#include "lib/verdict.h"

/* The kernel's types, as far as used here; libbpf relocates each field (CO-RE). */
#define KERNEL_TYPE __attribute__((preserve_access_index))

struct kernfs_node {
	__u64 id;
} KERNEL_TYPE;

struct cgroup;

struct cgroup_subsys_state {
	struct cgroup *cgroup;
	struct cgroup_subsys_state *parent;
} KERNEL_TYPE;

struct cgroup {
	struct cgroup_subsys_state self;
	struct kernfs_node *kn;
} KERNEL_TYPE;

struct sock_cgroup_data {
	struct cgroup *cgroup;
} KERNEL_TYPE;

struct net {
	__u64 net_cookie;
} KERNEL_TYPE;

struct sock_common {
	struct {
		struct net *net;
	} skc_net;
	__be32 skc_daddr;
	__be32 skc_rcv_saddr;
	__be16 skc_dport;
	__u16 skc_num;
	unsigned short skc_family;
	volatile unsigned char skc_state;
	struct {
		__u32 w[4];
	} skc_v6_daddr;
	struct {
		__u32 w[4];
	} skc_v6_rcv_saddr;
} KERNEL_TYPE;

struct sock {
	struct sock_common __sk_common;
	struct sock_cgroup_data sk_cgrp_data;
} KERNEL_TYPE;

struct tcp_sock {
	__u32 rcv_nxt;
} KERNEL_TYPE;

struct udp_sock {
	int pending;
} KERNEL_TYPE;

struct bpf_iter_meta {
	void *seq;
} KERNEL_TYPE;

struct bpf_iter__tcp {
	struct bpf_iter_meta *meta;
	struct sock_common *sk_common;
	__u32 uid;
} KERNEL_TYPE;

struct bpf_iter__udp {
	struct bpf_iter_meta *meta;
	struct udp_sock *udp_sk;
	__u32 uid;
} KERNEL_TYPE;

/*
 * Built twice (scripts/build.sh): with the kfunc (revoke.bpf.o, Linux 6.5+),
 * and with EGRESS_REVOKE_BY_NETLINK (revoke-netlink.bpf.o), which only
 * judges and writes each socket's record: user space closes it with netlink
 * SOCK_DESTROY (CONFIG_INET_DIAG_DESTROY) on kernels without the kfunc.
 */
#ifndef EGRESS_REVOKE_BY_NETLINK
extern int bpf_sock_destroy(struct sock_common *sk) __ksym;
#endif

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, EGRESS_MAX_COMPUTERS);
	__type(key, __u64); /* cgroup id */
	__type(value, struct egress_computer);
} revoking SEC(".maps");

/* Never used: puts struct egress_revoked into the object's BTF (an iterator's output has no type). */
const struct egress_revoked revoked_layout __attribute__((unused)) = {};

#define TCP_ESTABLISHED 1
#define TCP_TIME_WAIT 6
#define TCP_CLOSE 7
#define TCP_LISTEN 10
#define TCP_NEW_SYN_RECV 12

/*
 * The computer in "revoking" that governs a socket made in `cg`: the nearest
 * governed cgroup at or above it (a computer nested in another is its own),
 * looked up in "revoking"; NULL when that computer is not being revoked or
 * none governs the socket.
 */
static __always_inline struct egress_computer *revoking_computer(struct cgroup *cg)
{
	__u64 id;
	int level;

	for (level = 0; level < EGRESS_GUARD_MAX_DEPTH && cg; level++) {
		id = cg->kn->id;
		if (bpf_map_lookup_elem(&governed, &id))
			return bpf_map_lookup_elem(&revoking, &id);
		cg = cg->self.parent ? cg->self.parent->cgroup : 0;
	}
	return 0;
}

/* The socket's network namespace is the agent's (no cookie known yet: taken as the agent's, as the hooks do). */
static __always_inline int sock_in_agent_netns(struct sock_common *skc)
{
	__u64 agent = config_get(EGRESS_CONFIG_AGENT_NETNS_COOKIE);

	return agent == 0 || skc->skc_net.net->net_cookie == agent;
}

/*
 * Judges one socket; closes it and writes its record when its peer is
 * refused. `sk` is read, `trusted` (the same socket as the iterator gave it)
 * closed: the kfunc takes only the iterator's own pointer.
 */
static __always_inline void judge_peer(struct bpf_iter_meta *meta, struct sock *sk, struct sock_common *trusted,
				       __u8 protocol, __u32 uid)
{
	struct sock_common *skc = &sk->__sk_common;
	struct egress_computer *c = revoking_computer(sk->sk_cgrp_data.cgroup);
	struct egress_revoked out = {};
	struct eg_addr a = {};

	if (!c)
		return;
	a.port = bpf_ntohs(skc->skc_dport);
	if (skc->skc_family == AF_INET) {
		a.ip[0] = skc->skc_daddr;
		a.sock = 4;
		a.family = 4;
		out.local_addr[0] = skc->skc_rcv_saddr;
	} else if (skc->skc_family == AF_INET6) {
		bpf_probe_read_kernel(a.ip, sizeof(a.ip), &skc->skc_v6_daddr);
		a.sock = 6;
		a.family = is_v4_mapped(a.ip) ? 4 : 6;
		bpf_probe_read_kernel(out.local_addr, sizeof(out.local_addr), &skc->skc_v6_rcv_saddr);
	} else {
		return;
	}
	if (peer_verdict(c, &a, proto_bit(protocol), sock_in_agent_netns(skc)) == ALLOW)
		return;
	out.cgroup_id = c->cgroup_id;
	if (a.family == 4)
		out.addr[0] = addr_v4(&a);
	else
		__builtin_memcpy(out.addr, a.ip, sizeof(out.addr));
	out.port = a.port;
	out.family = a.family;
	out.protocol = protocol;
	out.uid = uid;
	out.local_port = skc->skc_num;
	out.sock_family = a.sock;
	__builtin_memcpy(out.peer_addr, a.ip, sizeof(out.peer_addr));
	out.cookie = bpf_get_socket_cookie(skc);
	/* No room: the iterator shows this socket again at the next read (see struct egress_revoked). */
	if (bpf_seq_write(meta->seq, &out, sizeof(out)))
		return;
#ifndef EGRESS_REVOKE_BY_NETLINK
	out.error = bpf_sock_destroy(trusted);
	if (out.error)
		bpf_seq_write(meta->seq, &out, sizeof(out));
#endif
}

SEC("iter/tcp")
int eg_revoke_tcp(struct bpf_iter__tcp *ctx)
{
	struct sock_common *skc = ctx->sk_common;
	struct tcp_sock *tp;
	unsigned char state;

	if (!skc)
		return 0;
	/* Connections and connection attempts; not listeners, nor what is closing already. */
	state = skc->skc_state;
	if (state == TCP_TIME_WAIT || state == TCP_CLOSE || state == TCP_LISTEN || state == TCP_NEW_SYN_RECV)
		return 0;
	tp = bpf_skc_to_tcp_sock(skc);
	if (!tp)
		return 0;
	judge_peer(ctx->meta, (struct sock *)tp, skc, IPPROTO_TCP, ctx->uid);
	return 0;
}

SEC("iter/udp")
int eg_revoke_udp(struct bpf_iter__udp *ctx)
{
	struct sock *sk = (struct sock *)ctx->udp_sk;

	/* Connected sockets only: every datagram of an unconnected one is judged already. */
	if (!sk || sk->__sk_common.skc_state != TCP_ESTABLISHED)
		return 0;
	judge_peer(ctx->meta, sk, (struct sock_common *)sk, IPPROTO_UDP, ctx->uid);
	return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
