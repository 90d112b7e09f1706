// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* The guard of the sandbox roots: calls from cgroups that no attached computer covers are refused. */
#ifndef EG_LIB_GUARD_H
#define EG_LIB_GUARD_H

#include "addr.h"
#include "events.h"

/*
 * The guard, attached to a sandbox root. A socket may be made only in a
 * cgroup that a governed computer covers: the computer's own sock_create
 * program, which runs first and only for sockets of its cgroup and the
 * cgroups below, marks the socket with the computer ("socket_owner"), and
 * the guard lets the socket through only with a mark of a governed
 * computer. The socket's cgroup decides, not the calling task's: a task
 * moved between its socket's allocation and these programs would otherwise
 * make, in a cgroup no computer governs, a socket that only the guard
 * judges. A socket's later calls pass only while its computer is still
 * governed: judging connects by the calling task's cgroup instead would let
 * a socket made in a computer whose cgroup was removed since (its programs
 * detached) through from a governed one: the kernel picks the programs that
 * run by the socket's cgroup, not the task's.
 * Sockets made before the guard was attached have no mark: their caller's
 * cgroup, or an ancestor of it, must be a governed computer (looked up
 * first where a sandbox's processes almost always are, then from the top).
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

/* connect and sendmsg of a socket of family `sock` (4 or 6). */
static __always_inline int guard_addr(struct bpf_sock_addr *ctx, __u8 sock)
{
	struct eg_addr a;

	if (governed_socket(ctx))
		return SYS_PROCEED;
	addr_read(ctx, sock, &a);
	report_ungoverned(sock, ctx->protocol, a.ip, a.port);
	return SYS_REJECT;
}

/* A socket is made only where a governed computer's sock_create program marked it (see above). */
static __always_inline int guard_socket(struct bpf_sock *sk)
{
	__u64 *owner = bpf_sk_storage_get(&socket_owner, sk, 0, 0);
	__u32 none[4] = {};

	if (owner && *owner && bpf_map_lookup_elem(&governed, owner))
		return SYS_PROCEED;
	report_ungoverned(0, sk->protocol, none, 0);
	return SYS_REJECT;
}

#endif /* EG_LIB_GUARD_H */
