// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* The guard of the sandbox roots: calls from cgroups that no attached computer covers are refused. */
#ifndef EG_LIB_GUARD_H
#define EG_LIB_GUARD_H

#include "addr.h"
#include "events.h"

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

/* A socket is made only in a governed computer, and remembers which. */
static __always_inline int guard_socket(struct bpf_sock *sk)
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

#endif /* EG_LIB_GUARD_H */
