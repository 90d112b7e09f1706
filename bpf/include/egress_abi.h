/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * egressd ABI: every struct and constant shared between the kernel programs
 * (bpf/egress.bpf.c) and user space (daemon/kernel/abi.ts mirrors this file;
 * test/unit/abi.test.ts compares that mirror with the object's BTF).
 *
 * Rules of the maps, in prose:
 * - "computers" is cgroup storage: one struct egress_computer per cgroup that
 *   the programs are attached to, keyed by the cgroup's inode number. A
 *   process in a descendant cgroup reads its attach point's value, so a child
 *   cgroup is governed like its parent. A freshly attached cgroup reads all
 *   zeroes, which is EGRESS_MODE_PENDING: everything is refused until the
 *   agent writes the computer's policy (fail closed).
 * - A policy is installed under a fresh policy_id: its rules go into the rule
 *   maps keyed by that id, then one write of the computer's storage value
 *   switches mode and policy_id together. A connect therefore sees the old
 *   policy or the new one, never a mix. Old ids are deleted only after an RCU
 *   grace period, when no program can still hold them.
 * - Rule tries hold one entry per distinct CIDR of a policy; the compiler
 *   folds every covering (shorter) prefix's ports into it, so the longest
 *   match alone decides. An entry's protocols in any_port_protos match every
 *   port; otherwise, when port_set is not 0, {policy_id, port_set, port,
 *   proto} in "rule_ports" decides.
 * - Internal tries hold the agent's internal CIDRs, reachable in every mode.
 * - DNS: in every mode but unrestricted, TCP and UDP to port 53 (any address)
 *   are redirected to the agent's proxy: 127.0.0.1 / ::1 for sockets in the
 *   agent's network namespace, else the proxy address in "config" (none:
 *   refused), on the computer's own dns_port, which tells the proxy who
 *   asked. The original destination is kept per socket (cookie) in
 *   "dns_origin" so that recvmsg and getpeername show the resolver the
 *   application asked. Computers cannot reach proxy ports directly.
 * - Learned addresses: what a computer's DNS answers returned for names its
 *   policy names, keyed by the computer's learned_id (one per computer and
 *   policy generation, never shared), with an expiry in CLOCK_MONOTONIC ns and
 *   the same port semantics as a rule entry (port_set of the policy_id).
 * - Sandbox roots: the guard programs are attached to each cgroup subtree
 *   that computers live under (the agent's --cgroup-root). "governed" holds
 *   the cgroup id of every computer whose policy is written. A computer's
 *   sock_create program marks each socket made in its cgroup (or below) with
 *   the computer's cgroup id ("socket_owner"); the guard lets a socket be
 *   made only with the mark of a governed computer, and its later calls
 *   through only while that computer is governed (its own programs judge
 *   them), and refuses everything else under the root. So a cgroup removed
 *   and made again at a computer's path (a new id) has no network until the
 *   agent attaches it, and a task moved out of a computer while making a
 *   socket makes none where no computer governs.
 */
#ifndef EGRESS_ABI_H
#define EGRESS_ABI_H

#include <linux/types.h>

/* Modes of struct egress_computer. PENDING (0) is what a new attachment reads. */
#define EGRESS_MODE_PENDING 0
#define EGRESS_MODE_UNRESTRICTED 1
#define EGRESS_MODE_ALLOWLIST 2
#define EGRESS_MODE_DENYLIST 3
#define EGRESS_MODE_ISOLATED 4

/* Protocol bits of a rule ("any" is all of them, other L4 protocols included). */
#define EGRESS_PROTO_TCP 0x1
#define EGRESS_PROTO_UDP 0x2
#define EGRESS_PROTO_OTHER 0x4
#define EGRESS_PROTO_ANY (EGRESS_PROTO_TCP | EGRESS_PROTO_UDP | EGRESS_PROTO_OTHER)

/*
 * Flags of struct egress_computer. EGRESS_FLAG_BLOCK_DNS (isolated: DNS
 * refused too) is retired: these programs ignore it and the agent no longer
 * sets it, and clears it where an earlier agent did (programs loaded by such
 * an agent and adopted since still honour it until then). A policy's "dns"
 * is enforced by the proxy.
 */
#define EGRESS_FLAG_BLOCK_DNS 0x1
/*
 * Audit: the computer's policy is judged as ever, but what it would refuse
 * is let through, with a deny event that carries this flag.
 */
#define EGRESS_FLAG_AUDIT 0x2
/* Observe: count where the computer's calls go ("observed"); the agent's --observe decides. */
#define EGRESS_FLAG_OBSERVE 0x4

/* Slots of the "config" array map (__u64 each). */
#define EGRESS_CONFIG_AGENT_NETNS_COOKIE 0 /* netns cookie of the agent's namespace */
#define EGRESS_CONFIG_ABI_VERSION 1        /* EGRESS_ABI_VERSION of the loaded object */
#define EGRESS_CONFIG_NEXT_POLICY_ID 2     /* user space's policy id counter, kept across restarts */
#define EGRESS_CONFIG_DNS_PORTS 3          /* proxy port range: min | max << 16 (host byte order) */
#define EGRESS_CONFIG_PROXY_V4 4           /* proxy IPv4 address for other namespaces (network order); 0: none */
#define EGRESS_CONFIG_PROXY_V6_HI 5        /* proxy IPv6 address, bytes 0-7 as in memory; 0 and 0: none */
#define EGRESS_CONFIG_PROXY_V6_LO 6        /* bytes 8-15 */
#define EGRESS_CONFIG_NEXT_LEARNED_ID 7    /* user space's learned id counter */
#define EGRESS_CONFIG_SLOTS 16

/* Bumped whenever a layout or a map definition below changes. */
#define EGRESS_ABI_VERSION 6

/* Reasons of struct egress_deny_event. */
#define EGRESS_REASON_MODE 1       /* allowlist: nothing matched; isolated; no policy yet */
#define EGRESS_REASON_RULE 2       /* denylist: a rule or a learned address matched */
#define EGRESS_REASON_SOCKET 3     /* a socket other than TCP or UDP */
#define EGRESS_REASON_DNS 4        /* DNS refused: no proxy reachable (no port, no proxy address) */
#define EGRESS_REASON_PROXY_PORT 5 /* a proxy port reached directly */
#define EGRESS_REASON_UNGOVERNED 6 /* under a sandbox root, in no attached computer (guard) */
#define EGRESS_REASON_NAME_MISMATCH 7 /* a name-bound connection's first bytes named another server (name_check) */
#define EGRESS_REASON_QUIC 8          /* UDP to port 443 of a name-bound address (QUIC carries no readable name) */

/* Capacities. LPM tries and the port hash allocate on demand (no prealloc). */
#define EGRESS_MAX_RULE_ENTRIES (1 << 21)
#define EGRESS_MAX_INTERNAL_ENTRIES 1024
#define EGRESS_MAX_COMPUTERS 65536
#define EGRESS_GUARD_MAX_DEPTH 16 /* cgroup levels the guard walks from the top */
#define EGRESS_MAX_LEARNED (1 << 20)
#define EGRESS_MAX_DNS_SOCKETS 65536
#define EGRESS_EVENTS_BYTES (1 << 20) /* deny-event ring buffer */
#define EGRESS_MAX_OBSERVED 65536     /* destinations in "observed" (least recently used go first) */
#define EGRESS_MAX_LEARNED_NAMES (1 << 20)
#define EGRESS_MAX_NAME_CHECKS (1 << 18) /* connections waiting for their first bytes to be judged, and refused ones */
#define EGRESS_NAME_MAX 256           /* a name's bytes in "learned_names" and deny events, NUL-padded (DNS: 253) */

/* Value of the "computers" cgroup storage; written whole by user space. */
struct egress_computer {
	__u32 mode;       /* EGRESS_MODE_* */
	__u32 policy_id;  /* rule map key of the policy in force; 0: none */
	__u64 version;    /* policy version from the store, for the agent only */
	__u32 learned_id; /* learned map key of this computer; 0: none */
	__u16 dns_port;   /* the computer's proxy port (host byte order); 0: DNS refused */
	__u16 flags;      /* EGRESS_FLAG_* */
	__u64 cgroup_id;  /* the attach point's cgroup id, for deny events */
};

/*
 * A refused connect, sendmsg or socket creation, in the "deny_events" ring
 * buffer. Only the refusing path writes one: allowed traffic pays nothing.
 */
struct egress_deny_event {
	__u64 time_ns;   /* CLOCK_MONOTONIC */
	__u64 cgroup_id; /* the computer's cgroup (struct egress_computer.cgroup_id) */
	__u32 pid;       /* thread group id */
	__u32 reason;    /* EGRESS_REASON_* */
	__u8 comm[16];
	__u8 addr[16];   /* network byte order; IPv4 in the first 4 bytes */
	__u16 port;      /* host byte order */
	__u8 family;     /* 4 or 6; 0 for a socket creation */
	__u8 protocol;   /* IPPROTO_* */
	__u32 flags;     /* EGRESS_FLAG_AUDIT: the refusal was let through (audit) */
};

/* Key of "rules_v4". prefixlen counts from policy_id: 32 + CIDR length. */
struct egress_lpm_v4 {
	__u32 prefixlen;
	__u32 policy_id; /* host byte order; always matched in full */
	__u8 addr[4];    /* network byte order */
} __attribute__((packed));

/* Key of "rules_v6". prefixlen counts from policy_id: 32 + CIDR length. */
struct egress_lpm_v6 {
	__u32 prefixlen;
	__u32 policy_id; /* host byte order; always matched in full */
	__u8 addr[16];   /* network byte order */
} __attribute__((packed));

/* Value of "rules_v4" and "rules_v6". */
struct egress_rule {
	__u32 port_set;       /* 0: no port-specific rules for this prefix */
	__u8 any_port_protos; /* EGRESS_PROTO_* bits that match on every port */
	__u8 pad[3];
};

/* Key of "rule_ports" (value: __u8, always 1). */
struct egress_port_key {
	__u32 policy_id; /* host byte order */
	__u32 port_set;
	__u16 port;      /* host byte order */
	__u8 proto;      /* one EGRESS_PROTO_* bit */
	__u8 pad;
};

/* Keys of "internal_v4" / "internal_v6" (value: __u8, always 1). */
struct egress_internal_v4 {
	__u32 prefixlen;
	__u8 addr[4]; /* network byte order */
} __attribute__((packed));

struct egress_internal_v6 {
	__u32 prefixlen;
	__u8 addr[16]; /* network byte order */
} __attribute__((packed));

/* Keys of "learned_v4" / "learned_v6". */
struct egress_learned_v4 {
	__u32 learned_id;
	__u8 addr[4]; /* network byte order */
};

struct egress_learned_v6 {
	__u32 learned_id;
	__u8 addr[16]; /* network byte order */
};

/* Flags of struct egress_learned. */
#define EGRESS_LEARNED_BIND_NAME 0x1 /* name-bound: every rule naming it binds names (bind_name not false) */
#define EGRESS_LEARNED_UDP 0x2       /* a rule naming it says "protocol": "udp": QUIC allowed */

/* Value of "learned_v4" / "learned_v6". */
struct egress_learned {
	__u64 expires_ns;     /* CLOCK_MONOTONIC (bpf_ktime_get_ns) */
	__u32 port_set;       /* as in struct egress_rule, of the computer's policy_id */
	__u8 any_port_protos; /* as in struct egress_rule */
	__u8 flags;           /* EGRESS_LEARNED_* */
	__u8 pad[2];
};

/*
 * Name-bound connections. A TCP connection that the computer may make only
 * because a learned address matched (allowlist; no CIDR rule, no internal
 * CIDR) and whose entry has EGRESS_LEARNED_BIND_NAME must start with a TLS
 * ClientHello whose server_name, or an HTTP/1.x request whose Host (and
 * absolute or authority target), is a name the address was learned for
 * under the computer's current learned id: a key of "learned_names" (the
 * exact name, or `*.` + a suffix of it at a label boundary for a wildcard
 * rule), whose value (a struct egress_rule of the computer's policy_id)
 * allows the port. First bytes that are neither are let through.
 * - connect marks the socket ("name_checks", state PENDING, with the peer
 *   as judged and the computer's cgroup id);
 * - the computer's sock_ops program puts it in "name_check_socks" once
 *   established; the sk_msg program on that map judges the first bytes the
 *   application sends (holding them back, corked, until a ClientHello or a
 *   request head is whole, up to a bound), refuses them (the send fails
 *   with EACCES) or lets them through and takes the socket out of the map,
 *   which gives it back its ordinary send path;
 * - the computer's cgroup_skb egress program drops any TCP payload of a
 *   socket whose state is not PASSED: bytes that never went through the
 *   sk_msg program (TCP Fast Open's SYN data, a send that was already
 *   waiting for the handshake) cannot leave.
 * "computer_values" mirrors the computers' storage values by cgroup id, for
 * the sk_msg program, which no cgroup runs.
 */
#define EGRESS_NAME_PENDING 1
#define EGRESS_NAME_PASSED 2
#define EGRESS_NAME_REFUSED 3

/* Key of "learned_names" (value: struct egress_rule). */
struct egress_learned_name {
	__u32 learned_id;
	__u8 family; /* 4 or 6 */
	__u8 pad[3];
	__u8 addr[16];                /* network byte order; IPv4 in the first 4 bytes */
	__u8 name[EGRESS_NAME_MAX];   /* lower case, no trailing dot, NUL-padded */
};

/* Value of "name_checks" (socket storage). */
struct egress_name_check {
	__u64 cgroup_id; /* the computer's (struct egress_computer.cgroup_id) */
	__u64 cookie;    /* the socket's key in "name_check_socks" */
	__u8 addr[16];   /* the peer as judged; IPv4 in the first 4 bytes */
	__u16 port;      /* host byte order */
	__u8 family;     /* 4 or 6 */
	__u8 state;      /* EGRESS_NAME_* */
	__u32 pad;
	__u8 comm[16];   /* the connecting task, for deny events */
};

/*
 * A name_mismatch deny event is a struct egress_deny_event followed by the
 * name the connection tried (EGRESS_NAME_MAX bytes, NUL-padded; empty when
 * it named none): a ring buffer record longer than the struct.
 */

/*
 * Live revocation (bpf/revoke.bpf.c, a second object that shares these
 * maps). User space puts the computers whose policy it just wrote in
 * "revoking" (key: cgroup id; value: the computer's storage value) and reads
 * socket iterators: one struct egress_revoked per socket of those computers (their
 * cgroups and the cgroups below) whose peer the policy now refuses, written
 * before the socket is closed, then a second one with `error` set when
 * bpf_sock_destroy() failed. (An iterator whose buffer is full drops what it
 * wrote for a socket and shows that socket again: writing first means no
 * socket is closed without its record.)
 */
struct egress_revoked {
	__u64 cgroup_id; /* the computer's (a key of "revoking") */
	__u32 addr[4];   /* the peer, network byte order; IPv4 in addr[0] */
	__u16 port;      /* host byte order */
	__u8 family;     /* 4 or 6, as judged: 4 for an IPv4-mapped peer */
	__u8 protocol;   /* IPPROTO_TCP or IPPROTO_UDP */
	__s32 error;     /* 0: closed (to close, by netlink); else what bpf_sock_destroy() returned (a negative errno) */
	__u32 uid;       /* the socket's owner, as the iterator gives it */
	/* The socket as the kernel finds it again (netlink SOCK_DESTROY, where the kfunc is missing): */
	__u16 local_port;     /* host byte order */
	__u8 sock_family;     /* 4 or 6: the socket's own */
	__u8 pad;
	__u32 local_addr[4];  /* network byte order, as the socket holds it; IPv4 in local_addr[0] */
	__u32 peer_addr[4];   /* the peer as the socket holds it (v4-mapped on an IPv6 socket) */
	__u64 cookie;         /* the socket's cookie (SOCK_DESTROY checks it) */
};

/*
 * Key of "observed": a destination a computer's connect or send went to (let
 * through: allowed, or refused in audit), for audit mode's suggested
 * allowlist. DNS (sent to the proxy) and loopback are not observed.
 */
struct egress_observed_key {
	__u64 cgroup_id; /* the computer's (struct egress_computer.cgroup_id) */
	__u8 addr[16];   /* network byte order; IPv4 in the first 4 bytes */
	__u16 port;      /* host byte order */
	__u8 family;     /* 4 or 6, as judged: 4 for an IPv4-mapped address */
	__u8 protocol;   /* IPPROTO_TCP or IPPROTO_UDP */
	__u32 pad;
};

/* Value of "observed". */
struct egress_observed {
	__u64 count;    /* connects and datagrams */
	__u64 first_ns; /* CLOCK_MONOTONIC_COARSE */
	__u64 last_ns;
};

/* Value of "dns_origin" (key: socket cookie): where the application sent its query. */
struct egress_dns_origin {
	__u32 addr[4]; /* network byte order; IPv4 in addr[0] */
	__u16 port;    /* network byte order */
	__u16 family;  /* 4 or 6 */
};

#endif /* EGRESS_ABI_H */
