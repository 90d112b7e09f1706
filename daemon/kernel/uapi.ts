/**
 * The kernel's own structs (uapi <linux/bpf.h>) that egressd reads: with
 * abi.ts (egressd's structs), the only code that reads kernel struct bytes.
 * test/unit/abi.test.ts compares these layouts with the system's header.
 */

/**
 * The leading members read from bpf_obj_get_info_by_fd; a buffer of `size`
 * bytes is enough for them (the kernel fills at most what it is given).
 */
export const UAPI_LAYOUT = {
  bpf_prog_info: { size: 8, offsets: { type: 0, id: 4 } },
  /** Up to the cgroup member of its union: cgroup_id, then attach_type. */
  bpf_link_info: { size: 32, offsets: { type: 0, id: 4, prog_id: 8, cgroup_id: 16, attach_type: 24 } },
} as const;

export function decodeProgInfo(b: Buffer): { id: number } {
  return { id: b.readUInt32LE(UAPI_LAYOUT.bpf_prog_info.offsets.id) };
}

/** The program and the cgroup of a cgroup link; cgroupId is 0n once the cgroup is gone. */
export function decodeCgroupLinkInfo(b: Buffer): { progId: number; cgroupId: bigint } {
  const o = UAPI_LAYOUT.bpf_link_info.offsets;
  return { progId: b.readUInt32LE(o.prog_id), cgroupId: b.readBigUInt64LE(o.cgroup_id) };
}

/** The socket netlink SOCK_DESTROY is to close (see records.ts RevokedRecord.socket); addresses 4 or 16 bytes. */
export interface DestroyTarget {
  family: 4 | 6;
  protocol: number;
  localAddress: number[];
  localPort: number;
  peerAddress: number[];
  peerPort: number;
  cookie: bigint;
}

/** A netlink SOCK_DESTROY request (struct nlmsghdr, then struct inet_diag_req_v2) asking for an ack. */
export function encodeSockDestroy(seq: number, t: DestroyTarget): Buffer {
  const b = Buffer.alloc(72);
  b.writeUInt32LE(b.length, 0); // nlmsg_len
  b.writeUInt16LE(21, 4); // SOCK_DESTROY
  b.writeUInt16LE(0x1 | 0x4, 6); // NLM_F_REQUEST | NLM_F_ACK
  b.writeUInt32LE(seq, 8);
  b[16] = t.family === 4 ? 2 : 10; // sdiag_family
  b[17] = t.protocol; // sdiag_protocol
  b.writeUInt32LE(0xffffffff, 20); // idiag_states: any
  // struct inet_diag_sockid: the socket's own port and address are "src", the peer's "dst".
  b.writeUInt16BE(t.localPort, 24);
  b.writeUInt16BE(t.peerPort, 26);
  Buffer.from(t.localAddress).copy(b, 28);
  Buffer.from(t.peerAddress).copy(b, 44);
  b.writeUInt32LE(Number(t.cookie & 0xffffffffn), 64);
  b.writeUInt32LE(Number(t.cookie >> 32n), 68);
  return b;
}

/** The errno of a netlink ack (NLMSG_ERROR: 0 is success), or undefined for another message. */
export function decodeNetlinkAck(b: Buffer): number | undefined {
  if (b.length < 20 || b.readUInt16LE(4) !== 2) return undefined;
  return -b.readInt32LE(16) | 0; // | 0: no -0 for an ack
}
