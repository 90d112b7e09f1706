// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * Name-bound connections (see the ABI header): the first bytes of a
 * connection to an address the computer may reach only through a hostname
 * rule must name a server the address was learned for.
 *
 * What is judged, from the first bytes the application sends:
 *   - 0x16 first: a TLS record that must hold a whole ClientHello (not split
 *     over records) with exactly one server_name;
 *   - an upper-case token and a space first (after blank lines, which
 *     servers skip): an HTTP/1.x request head, whose Host header (exactly
 *     one) and absolute-form or CONNECT target name the server;
 *   - anything else: another protocol (SSH, a database), let through.
 * Bytes that could still become either are held back (corked) until they
 * are whole, up to NAME_BUF bytes for a record and NAME_HTTP_HEAD_MAX for a
 * head; past that, or when the bytes are malformed, the connection is
 * refused: what cannot be judged does not pass.
 */
#ifndef EG_LIB_NAMES_H
#define EG_LIB_NAMES_H

#include "verdict.h"

#define NAME_HTTP_HEAD_MAX 8192
#define NAME_CLASSIFY 32     /* bytes that tell TLS, HTTP and other protocols apart */
#define NAME_MAX_EXTENSIONS 64
#define NAME_MAX_LABELS 16   /* wildcard suffixes tried for one name */
#define NAME_LEN_MAX 253
#define NAME_PASS_BYTES 0x7fffffff /* a passed connection's verdict covers this much more */

enum name_outcome { NAME_OK, NAME_REFUSE, NAME_MORE, NAME_OTHER };

static __always_inline struct name_scratch *scratch(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&name_scratch, &zero);
}

static __always_inline __u8 at(const struct name_scratch *s, __u32 i)
{
	return s->buf[i & NAME_MASK];
}

static __always_inline __u32 u16_at(const struct name_scratch *s, __u32 i)
{
	return ((__u32)at(s, i) << 8) | at(s, i + 1);
}

static __always_inline __u8 lower(__u8 c)
{
	return c >= 'A' && c <= 'Z' ? c + 32 : c;
}

/* Copies the first `n` bytes of the message (n <= NAME_BUF) into s->buf; 0 on success. */
static __always_inline int copy_head(struct sk_msg_md *msg, struct name_scratch *s, __u32 n)
{
	void *data, *end;

	if (n > NAME_BUF || n == 0)
		return -1;
	if (bpf_msg_pull_data(msg, 0, n, 0))
		return -1;
	data = msg->data;
	end = msg->data_end;
	if (data + n > end)
		return -1;
	if (bpf_probe_read_kernel(s->buf, n, data))
		return -1;
	s->len = n;
	return 0;
}

/* The name at buf[off, off + len) into s->name, lower case, without a trailing dot; 0 when it is a valid host name. */
__noinline int take_name(struct name_scratch *s, __u32 off, __u32 len)
{
	__u32 i;
	__u8 c;
	int bad = 0;

	if (!s)
		return 1;

	__builtin_memset(s->name, 0, sizeof(s->name));
	s->name_len = 0;
	if (len > 0 && at(s, off + len - 1) == '.')
		len--;
	if (len == 0 || len > NAME_LEN_MAX)
		bad = 1;
	for (i = 0; i < NAME_LEN_MAX; i++) {
		if (i >= len)
			break;
		c = lower(at(s, off + i));
		if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '.' || c == '_')) {
			bad = 1;
			c = '?';
		}
		s->name[i & (EGRESS_NAME_MAX - 1)] = c;
	}
	s->name_len = i;
	return bad;
}

/*
 * Whether learned_names has the scratch key as it stands, allowing the
 * connection's port (policy_id, port). The scratch space is looked up here,
 * not taken as an argument: a global function's pointer argument is plain
 * memory, which Linux 6.1 does not take as a map key.
 */
static __always_inline int name_listed(void)
{
	struct name_scratch *s = scratch();
	struct egress_rule *v;

	if (!s)
		return 0;
	v = bpf_map_lookup_elem(&learned_names, &s->key);
	return v && port_matches(s->policy_id, v->port_set, v->any_port_protos, EGRESS_PROTO_TCP, s->port);
}

/* At each dot of s->name, `*` + the rest (a wildcard rule over it) (bpf_loop callback; s->found when listed). */
static long wildcard_step(__u32 i, void *unused)
{
	struct name_scratch *s = scratch();
	__u32 len;

	if (!s || i >= s->name_len || s->labels >= NAME_MAX_LABELS)
		return 1;
	if (s->name[i & (EGRESS_NAME_MAX - 1)] != '.')
		return 0;
	s->labels++;
	len = s->name_len;
	__builtin_memset(s->key.name, 0, EGRESS_NAME_MAX);
	s->key.name[0] = '*';
	if (bpf_probe_read_kernel(&s->key.name[1], (len - i) & (EGRESS_NAME_MAX - 1), &s->name[i & (EGRESS_NAME_MAX - 1)]))
		return 1;
	if (!name_listed())
		return 0;
	s->found = 1;
	return 1;
}

/* Whether s->name is a name the peer was learned for: exactly, or under a wildcard rule (`*.` + a suffix). */
__noinline int name_allowed(struct name_scratch *s, const struct egress_computer *c, const struct egress_name_check *nc)
{
	if (!s || !c || !nc)
		return 0;
	s->key.learned_id = c->learned_id;
	s->key.family = nc->family;
	__builtin_memcpy(s->key.addr, nc->addr, 16);
	__builtin_memcpy(s->key.name, s->name, EGRESS_NAME_MAX);
	s->policy_id = c->policy_id;
	s->port = nc->port;
	if (name_listed())
		return 1;
	s->found = 0;
	s->labels = 0;
	bpf_loop(NAME_LEN_MAX, wildcard_step, 0, 0);
	return s->found;
}

/* The one server_name of a ClientHello that starts the buffer, into s->name. */
__noinline int tls_name(struct name_scratch *s, __u32 *want)
{
	__u32 rec, end, ext_end, p, i, type, len, list, found = 0;

	if (!s || !want)
		return NAME_REFUSE;

	if (s->len < 5) {
		*want = 5;
		return NAME_MORE;
	}
	rec = u16_at(s, 3);
	if (at(s, 0) != 0x16 || at(s, 1) != 3 || rec > NAME_BUF - 5)
		return NAME_REFUSE; /* the first record of a TLS connection is a handshake */
	if (s->len < 5 + rec) {
		*want = 5 + rec;
		return NAME_MORE;
	}
	/* A ClientHello (type 1) that its first record holds whole. */
	if (at(s, 5) != 1 || at(s, 6) != 0 || u16_at(s, 7) + 4 > rec)
		return NAME_REFUSE;
	end = 9 + u16_at(s, 7);
	p = 9 + 2 + 32; /* version, random */
	if (p + 1 > end)
		return NAME_REFUSE;
	p += 1 + at(s, p); /* session id */
	if (p + 2 > end)
		return NAME_REFUSE;
	p += 2 + u16_at(s, p); /* cipher suites */
	if (p + 1 > end)
		return NAME_REFUSE;
	p += 1 + at(s, p); /* compression methods */
	if (p + 2 > end)
		return NAME_REFUSE; /* no extensions: no server_name */
	ext_end = p + 2 + u16_at(s, p);
	if (ext_end > end)
		return NAME_REFUSE;
	p += 2;
	for (i = 0; i < NAME_MAX_EXTENSIONS; i++) {
		if (p + 4 > ext_end)
			break;
		type = u16_at(s, p);
		len = u16_at(s, p + 2);
		if (p + 4 + len > ext_end)
			return NAME_REFUSE;
		if (type == 0) {
			/* server_name: a list holding one host_name (type 0), as RFC 6066 allows. */
			if (found || len < 5)
				return NAME_REFUSE;
			list = u16_at(s, p + 4);
			if (list + 2 != len || at(s, p + 6) != 0 || u16_at(s, p + 7) + 3 != list)
				return NAME_REFUSE;
			if (take_name(s, p + 9, u16_at(s, p + 7)))
				return NAME_REFUSE;
			found = 1;
		}
		p += 4 + len;
	}
	if (p + 4 <= ext_end || !found)
		return NAME_REFUSE; /* more extensions than judged, or no server_name */
	return NAME_OK;
}

/* One byte of an HTTP request head (bpf_loop callback): finds the request line's spaces, the Host lines, the end. */
static long http_step(__u32 index, void *unused)
{
	struct name_scratch *s = scratch();
	__u32 pos, end;
	__u8 c;

	if (!s || s->pos >= s->len)
		return 1;
	pos = s->pos;
	c = at(s, pos);
	s->pos = pos + 1;
	if (s->lines == 0 && (c == ' ' || c == '\t')) {
		if (!s->sp1)
			s->sp1 = pos;
		else if (!s->sp2)
			s->sp2 = pos;
	}
	if (c != '\n')
		return 0;
	end = pos > s->line && at(s, pos - 1) == '\r' ? pos - 1 : pos;
	if (s->lines++ == 0) {
		s->req_end = end;
	} else if (end == s->line) {
		s->head_end = pos + 1;
		return 1;
	} else if (at(s, s->line) == ' ' || at(s, s->line) == '\t') {
		s->folded = 1; /* obsolete line folding: a header's value could go on here */
	} else if (end - s->line >= 5 && lower(at(s, s->line)) == 'h' && lower(at(s, s->line + 1)) == 'o' &&
		   lower(at(s, s->line + 2)) == 's' && lower(at(s, s->line + 3)) == 't' && at(s, s->line + 4) == ':') {
		s->hosts++;
		s->host_off = s->line + 5;
		s->host_len = end - s->line - 5;
	}
	s->line = pos + 1;
	return 0;
}

/* One byte of an authority: the host starts after the last '@' and ends at a ':' (bpf_loop callback). */
static long host_step(__u32 i, void *unused)
{
	struct name_scratch *s = scratch();
	__u8 c;

	if (!s || i >= s->auth_len)
		return 1;
	c = at(s, s->auth_off + i);
	if (c == '@') {
		s->auth_host = s->auth_off + i + 1;
		s->auth_colon = 0;
	} else if (c == ':') {
		s->auth_colon = s->auth_off + i;
	} else if (c == '[') {
		s->auth_literal = 1; /* an IPv6 literal: no name */
	}
	return 0;
}

/*
 * The host of an authority (`[user@]host[:port]`, or a Host header's value
 * with spaces around it) at buf[off, off + len) into s->name; 0 when it is a
 * valid host name (IP literals and empty hosts are no names).
 */
__noinline int authority_name(struct name_scratch *s, __u32 off, __u32 len)
{
	__u32 i;

	if (!s || len > NAME_HTTP_HEAD_MAX)
		return 1;
	for (i = 0; i < 16; i++) {
		if (len == 0 || (at(s, off) != ' ' && at(s, off) != '\t'))
			break;
		off++;
		len--;
	}
	for (i = 0; i < 16; i++) {
		if (len == 0 || (at(s, off + len - 1) != ' ' && at(s, off + len - 1) != '\t'))
			break;
		len--;
	}
	s->auth_off = off;
	s->auth_len = len;
	s->auth_host = off;
	s->auth_colon = 0;
	s->auth_literal = 0;
	bpf_loop(NAME_HTTP_HEAD_MAX, host_step, 0, 0);
	if (s->auth_literal)
		return 1;
	return take_name(s, s->auth_host, (s->auth_colon ? s->auth_colon : off + len) - s->auth_host);
}

/* The authority of an absolute target ends at its path, query or fragment (bpf_loop callback). */
static long authority_step(__u32 i, void *unused)
{
	struct name_scratch *s = scratch();
	__u32 at_i;
	__u8 c;

	if (!s)
		return 1;
	at_i = s->target_off + i;
	c = at(s, at_i);
	if (at_i >= s->target_end || c == '/' || c == '?' || c == '#')
		return 1;
	s->target_len = i + 1;
	return 0;
}

static __always_inline int token_char(__u8 c)
{
	return (c >= 'A' && c <= 'Z') || c == '-' || c == '_';
}

/*
 * The name an HTTP/1.x request head names: its Host, and its target when
 * that is absolute (`scheme://authority/...`) or CONNECT's authority; both
 * must be allowed where both are given (see name_judge).
 */
__noinline int http_name(struct name_scratch *s, __u32 start, __u32 size, __u32 *want)
{
	__u32 i, t, tlen;

	if (!s || !want)
		return NAME_REFUSE;

	s->pos = start;
	s->line = start;
	s->lines = 0;
	s->sp1 = 0;
	s->sp2 = 0;
	s->req_end = 0;
	s->head_end = 0;
	s->hosts = 0;
	s->folded = 0;
	bpf_loop(NAME_HTTP_HEAD_MAX, http_step, 0, 0);
	if (!s->head_end) {
		if (size >= NAME_HTTP_HEAD_MAX || s->len >= NAME_HTTP_HEAD_MAX)
			return NAME_REFUSE;
		*want = size + 1;
		return NAME_MORE;
	}
	if (!s->sp1 || !s->sp2 || s->sp2 > s->req_end || s->hosts > 1 || s->folded)
		return NAME_REFUSE;
	t = s->sp1 + 1;
	tlen = s->sp2 - t;
	s->target_len = 0;
	if (tlen == 0)
		return NAME_REFUSE;
	if (s->sp1 - start == 7 && at(s, start) == 'C' && at(s, start + 1) == 'O' && at(s, start + 2) == 'N' &&
	    at(s, start + 3) == 'N' && at(s, start + 4) == 'E' && at(s, start + 5) == 'C' && at(s, start + 6) == 'T') {
		s->target_off = t;
		s->target_len = tlen;
	} else if (at(s, t) != '/' && !(tlen == 1 && at(s, t) == '*')) {
		/* absolute-form: the authority after "://", up to the path, query or fragment. */
		for (i = 0; i < 16; i++) {
			if (i + 3 > tlen)
				return NAME_REFUSE;
			if (at(s, t + i) == ':' && at(s, t + i + 1) == '/' && at(s, t + i + 2) == '/')
				break;
		}
		if (i == 16)
			return NAME_REFUSE;
		s->target_off = t + i + 3;
		s->target_end = t + tlen;
		s->target_len = 0;
		bpf_loop(NAME_HTTP_HEAD_MAX, authority_step, 0, 0);
	}
	if (!s->hosts && !s->target_len)
		return NAME_REFUSE;
	return NAME_OK;
}

/* What the first bytes are: TLS, HTTP (with `*start` after the blank lines), another protocol, or not known yet. */
static __always_inline enum name_outcome classify(struct name_scratch *s, __u32 *start, int *tls)
{
	__u32 i, k = 0;
	__u8 c;

	/* A TLS record of any type (20 to 24, version 3.x): judged as TLS, where only a handshake passes. */
	if (at(s, 0) >= 0x14 && at(s, 0) <= 0x18 && (s->len < 2 || at(s, 1) == 3)) {
		*tls = 1;
		return NAME_OK;
	}
	for (i = 0; i < NAME_CLASSIFY; i++) {
		if (i >= s->len)
			return NAME_MORE;
		c = at(s, i);
		if (k == i && (c == '\r' || c == '\n')) {
			k = i + 1;
			continue;
		}
		if (c == ' ' || c == '\t')
			break; /* a method and its delimiter (lenient servers take a tab) */
		if (!token_char(c))
			return NAME_OTHER;
	}
	if (i == NAME_CLASSIFY)
		return k == i ? NAME_REFUSE : NAME_OTHER;
	if (i == k)
		return NAME_OTHER; /* a space first */
	*start = k;
	return NAME_OK;
}

/* A name_mismatch deny event: the fixed record, then the name tried (s->name; empty for none). */
static __always_inline void report_name(const struct egress_name_check *nc, const struct name_scratch *s, __u16 flags)
{
	struct egress_deny_event *e = bpf_ringbuf_reserve(&deny_events, sizeof(*e) + EGRESS_NAME_MAX, 0);

	if (!e)
		return;
	e->time_ns = bpf_ktime_get_ns();
	e->cgroup_id = nc->cgroup_id;
	e->pid = bpf_get_current_pid_tgid() >> 32;
	e->reason = EGRESS_REASON_NAME_MISMATCH;
	__builtin_memcpy(e->comm, nc->comm, sizeof(e->comm));
	__builtin_memset(e->addr, 0, sizeof(e->addr));
	__builtin_memcpy(e->addr, nc->addr, 16);
	e->port = nc->port;
	e->family = nc->family;
	e->protocol = IPPROTO_TCP;
	e->flags = flags & EGRESS_FLAG_AUDIT;
	__builtin_memcpy((__u8 *)(e + 1), s->name, EGRESS_NAME_MAX);
	bpf_ringbuf_submit(e, 0);
}

/*
 * Judges the first bytes of a name-bound connection under the computer's
 * policy as it is now (it may have changed since the connect): NAME_OK,
 * NAME_REFUSE, or NAME_MORE with the bytes it needs in `want`.
 */
__noinline int judge_first_bytes(struct sk_msg_md *msg, struct name_scratch *s, const struct egress_computer *c,
				 struct egress_name_check *nc, __u32 *want)
{
	__u32 size = msg->size, start = 0;
	struct eg_addr a = {};
	enum name_outcome o;
	int tls = 0;
	__u8 bound = 0;

	if (!s || !c || !nc || !want)
		return NAME_REFUSE;
	a.port = nc->port;
	a.family = nc->family;
	a.sock = nc->family;
	__builtin_memcpy(a.ip, nc->addr, 16);
	if (c->mode == EGRESS_MODE_UNRESTRICTED || c->mode == EGRESS_MODE_DENYLIST)
		return NAME_OK;
	if (policy_verdict(0, 0, c, &a, EGRESS_PROTO_TCP, 0, &bound) != ALLOW)
		return NAME_REFUSE;
	if (!bound)
		return NAME_OK; /* a CIDR rule, an internal CIDR or bind_name false lets it through now */
	if (copy_head(msg, s, size < NAME_CLASSIFY ? size : NAME_CLASSIFY))
		return NAME_REFUSE;
	o = classify(s, &start, &tls);
	if (o == NAME_MORE)
		*want = size + 1;
	if (o != NAME_OK)
		return o == NAME_OTHER ? NAME_OK : o;
	if (copy_head(msg, s, size < NAME_BUF ? size : NAME_BUF))
		return NAME_REFUSE;
	if (tls) {
		o = tls_name(s, want);
		if (o != NAME_OK)
			return o;
		return name_allowed(s, c, nc) ? NAME_OK : NAME_REFUSE;
	}
	o = http_name(s, start, size, want);
	if (o != NAME_OK)
		return o;
	if (s->target_len) {
		if (authority_name(s, s->target_off, s->target_len) || !name_allowed(s, c, nc))
			return NAME_REFUSE;
	}
	if (s->hosts) {
		if (authority_name(s, s->host_off, s->host_len) || !name_allowed(s, c, nc))
			return NAME_REFUSE;
	}
	return NAME_OK;
}

/*
 * The sk_msg program's work for one message of a socket in
 * "name_check_socks": SK_PASS or SK_DROP (the send fails with EACCES).
 * Held-back bytes are SK_DROP with cork: should the kernel give up holding
 * them (a full message), they are dropped, never sent unjudged.
 */
static __always_inline int judge_message(struct sk_msg_md *msg)
{
	struct egress_name_check *nc;
	struct egress_computer *c;
	struct name_scratch *s;
	enum name_outcome o;
	__u32 want = 0;

	if (!msg->sk)
		return SK_DROP;
	nc = bpf_sk_storage_get(&name_checks, msg->sk, 0, 0);
	if (!nc)
		return SK_DROP;
	if (nc->state == EGRESS_NAME_PASSED || nc->state == 0) {
		bpf_msg_apply_bytes(msg, NAME_PASS_BYTES);
		return SK_PASS;
	}
	if (nc->state != EGRESS_NAME_PENDING)
		return SK_DROP;
	c = bpf_map_lookup_elem(&computer_values, &nc->cgroup_id);
	s = scratch();
	if (!c || !s || s->busy)
		return SK_DROP;
	s->busy = 1;
	s->name_len = 0;
	__builtin_memset(s->name, 0, sizeof(s->name));
	o = judge_first_bytes(msg, s, c, nc, &want);
	if (o == NAME_MORE) {
		s->busy = 0;
		bpf_msg_cork_bytes(msg, want);
		return SK_DROP;
	}
	if (o == NAME_REFUSE) {
		report_name(nc, s, c->flags);
		if (!(c->flags & EGRESS_FLAG_AUDIT)) {
			nc->state = EGRESS_NAME_REFUSED;
			s->busy = 0;
			return SK_DROP;
		}
	}
	s->busy = 0;
	nc->state = EGRESS_NAME_PASSED;
	/* The verdict holds for what follows: the program runs again only after NAME_PASS_BYTES. */
	bpf_msg_apply_bytes(msg, NAME_PASS_BYTES);
	return SK_PASS;
}

/*
 * sock_ops: a marked connection, once established, goes into
 * "name_check_socks" (or sends nothing: eg_skb), with RTT callbacks on.
 * The sk_msg program cannot take a socket out of its own map; the first
 * RTT callback after its verdict passed does (an ACK, in softirq or task
 * context), which gives the socket its ordinary send path back: bulk
 * transfer does not pay for the check. A refused socket stays: its every
 * send fails.
 */
static __always_inline void watch_name_bound(struct bpf_sock_ops *skops)
{
	struct egress_name_check *nc;
	struct bpf_sock *sk;

	if (skops->op != BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB && skops->op != BPF_SOCK_OPS_RTT_CB)
		return;
	sk = skops->sk;
	if (!sk)
		return;
	nc = bpf_sk_storage_get(&name_checks, sk, 0, 0);
	if (!nc)
		return;
	if (skops->op == BPF_SOCK_OPS_RTT_CB) {
		if (nc->state != EGRESS_NAME_PASSED)
			return;
		bpf_map_delete_elem(&name_check_socks, &nc->cookie);
		bpf_sock_ops_cb_flags_set(skops, skops->bpf_sock_ops_cb_flags & ~BPF_SOCK_OPS_RTT_CB_FLAG);
		return;
	}
	if (nc->state != EGRESS_NAME_PENDING)
		return;
	nc->cookie = bpf_get_socket_cookie(skops);
	if (bpf_sock_hash_update(skops, &name_check_socks, &nc->cookie, BPF_NOEXIST)) {
		nc->state = EGRESS_NAME_REFUSED;
		return;
	}
	bpf_sock_ops_cb_flags_set(skops, skops->bpf_sock_ops_cb_flags | BPF_SOCK_OPS_RTT_CB_FLAG);
}

/* cgroup_skb egress: 1 lets the packet go; TCP payload of a socket whose first bytes were not passed is dropped. */
static __always_inline int guard_unjudged(struct __sk_buff *skb)
{
	struct egress_name_check *nc;
	struct bpf_sock *sk = skb->sk;
	__u32 ip_len, tcp_off;
	__u8 b;

	if (!sk)
		return 1;
	sk = bpf_sk_fullsock(sk);
	if (!sk)
		return 1;
	nc = bpf_sk_storage_get(&name_checks, sk, 0, 0);
	if (!nc || nc->state == 0 || nc->state == EGRESS_NAME_PASSED)
		return 1;
	if (skb->protocol == bpf_htons(0x0800)) {
		if (bpf_skb_load_bytes(skb, 0, &b, 1))
			return 0;
		ip_len = (b & 0xf) * 4;
		if (bpf_skb_load_bytes(skb, 9, &b, 1) || b != IPPROTO_TCP)
			return 0;
	} else {
		ip_len = 40;
		if (bpf_skb_load_bytes(skb, 6, &b, 1) || b != IPPROTO_TCP)
			return 0;
	}
	tcp_off = ip_len + 12;
	if (bpf_skb_load_bytes(skb, tcp_off, &b, 1))
		return 0;
	return skb->len <= ip_len + (b >> 4) * 4;
}

#endif /* EG_LIB_NAMES_H */
