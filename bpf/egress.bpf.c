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
 * A TCP connection that step 5 allows for a learned address alone (no CIDR
 * rule, no internal CIDR) whose rules bind names must then start with a TLS
 * ClientHello or an HTTP request naming a server the address was learned
 * for (lib/names.h); UDP to port 443 of such an address is refused (QUIC).
 * IPv4-mapped IPv6 destinations (::ffff:a.b.c.d) are judged as IPv4.
 * Live revocation (revoke.bpf.c) judges a connected socket's peer by the same
 * precedence when a policy changes (peer_verdict in lib/verdict.h).
 * Sockets other than TCP and UDP (raw, ICMP ping, SCTP, MPTCP, ...) cannot be
 * created in any mode but unrestricted: no connect or sendmsg hook sees
 * their packets.
 *
 * Under a sandbox root the guard programs (eg_guard_*, attached to the
 * root) run after the computer's own and refuse every call from a cgroup that
 * no attached computer covers (see "governed" in the ABI header).
 *
 * Program names: eg_[guard_]<op><family>, op one of sock (sock_create), conn
 * (connect), send (sendmsg), recv (recvmsg), peer (getpeername); eg_ops
 * (sock_ops), eg_skb (cgroup_skb egress), eg_msg (sk_msg). The kernel
 * keeps 15 characters of a name (BPF_OBJ_NAME_LEN): longer ones are cut in
 * bpf_prog_info, /proc/kallsyms and perf. The workers are in lib/.
 */
#include "lib/guard.h"
#include "lib/names.h"
#include "lib/verdict.h"

/* A computer's programs, attached to its cgroup (daemon/kernel/loader.ts: HOOKS). */

SEC("cgroup/connect4")
int eg_conn4(struct bpf_sock_addr *ctx)
{
	return judge_addr(ctx, 4);
}

SEC("cgroup/connect6")
int eg_conn6(struct bpf_sock_addr *ctx)
{
	return judge_addr(ctx, 6);
}

SEC("cgroup/sendmsg4")
int eg_send4(struct bpf_sock_addr *ctx)
{
	return judge_addr(ctx, 4);
}

SEC("cgroup/sendmsg6")
int eg_send6(struct bpf_sock_addr *ctx)
{
	return judge_addr(ctx, 6);
}

SEC("cgroup/recvmsg4")
int eg_recv4(struct bpf_sock_addr *ctx)
{
	dns_unproxy(ctx, 4);
	return SYS_PROCEED;
}

SEC("cgroup/recvmsg6")
int eg_recv6(struct bpf_sock_addr *ctx)
{
	dns_unproxy(ctx, 6);
	return SYS_PROCEED;
}

SEC("cgroup/getpeername4")
int eg_peer4(struct bpf_sock_addr *ctx)
{
	dns_unproxy(ctx, 4);
	return SYS_PROCEED;
}

SEC("cgroup/getpeername6")
int eg_peer6(struct bpf_sock_addr *ctx)
{
	dns_unproxy(ctx, 6);
	return SYS_PROCEED;
}

SEC("cgroup/sock_create")
int eg_sock(struct bpf_sock *sk)
{
	return judge_socket(sk);
}

/* Name-bound connections (lib/names.h): the computer's sock_ops and egress programs, and the check itself. */

SEC("sockops")
int eg_ops(struct bpf_sock_ops *skops)
{
	watch_name_bound(skops);
	return 1;
}

SEC("cgroup_skb/egress")
int eg_skb(struct __sk_buff *skb)
{
	return guard_unjudged(skb);
}

/* Attached to the "name_check_socks" map, not to a cgroup (daemon/kernel/loader.ts). */
SEC("sk_msg")
int eg_msg(struct sk_msg_md *msg)
{
	return judge_message(msg);
}

/* The guard's programs, attached to each sandbox root (daemon/kernel/loader.ts: GUARD_HOOKS). */

SEC("cgroup/connect4")
int eg_guard_conn4(struct bpf_sock_addr *ctx)
{
	return guard_addr(ctx, 4);
}

SEC("cgroup/connect6")
int eg_guard_conn6(struct bpf_sock_addr *ctx)
{
	return guard_addr(ctx, 6);
}

SEC("cgroup/sendmsg4")
int eg_guard_send4(struct bpf_sock_addr *ctx)
{
	return guard_addr(ctx, 4);
}

SEC("cgroup/sendmsg6")
int eg_guard_send6(struct bpf_sock_addr *ctx)
{
	return guard_addr(ctx, 6);
}

SEC("cgroup/sock_create")
int eg_guard_sock(struct bpf_sock *sk)
{
	return guard_socket(sk);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
