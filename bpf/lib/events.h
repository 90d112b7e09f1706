// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* Deny events. */
#ifndef EG_LIB_EVENTS_H
#define EG_LIB_EVENTS_H

#include "maps.h"

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
	e->flags = c->flags & EGRESS_FLAG_AUDIT;
	bpf_ringbuf_submit(e, 0);
}

#endif /* EG_LIB_EVENTS_H */
