// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* What every part of the programs uses: kernel headers, the ABI, return codes. */
#ifndef EG_LIB_COMMON_H
#define EG_LIB_COMMON_H

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

/*
 * A verdict is 0 to let a call through, else the EGRESS_REASON_* of the
 * refusal; the hooks turn that into SYS_REJECT plus a deny event.
 */
#define ALLOW 0

#endif /* EG_LIB_COMMON_H */
