/**
 * The records the kernel programs write for user space to read: deny events
 * (the ring buffer), revocation records (the iterators' output) and observed
 * destinations. With abi.ts (the maps' keys and values, the constants) and
 * uapi.ts (the kernel's own structs), the only code that reads kernel bytes;
 * layouts in abi.ts's LAYOUT, checked against the objects' BTF.
 */
import { FLAG, LAYOUT as L } from './abi.js';

export interface DenyEvent {
  timeNs: bigint;
  cgroupId: bigint;
  pid: number;
  reason: number;
  comm: string;
  /** Address bytes: 4 for IPv4, 16 for IPv6, none for a socket creation. */
  address: number[];
  port: number;
  protocol: number;
  /** The refusal was let through: the computer's policy is in audit. */
  audit: boolean;
  /** name_mismatch: the server name the connection's first bytes gave ('' for none). */
  name?: string;
}

export function decodeDenyEvent(b: Buffer): DenyEvent {
  const o = L.egress_deny_event.offsets;
  const family = b[o.family] ?? 0;
  const comm = b.subarray(o.comm, o.comm + 16);
  const end = comm.indexOf(0);
  return {
    timeNs: b.readBigUInt64LE(o.time_ns),
    cgroupId: b.readBigUInt64LE(o.cgroup_id),
    pid: b.readUInt32LE(o.pid),
    reason: b.readUInt32LE(o.reason),
    comm: comm.toString('utf8', 0, end < 0 ? 16 : end),
    address:
      family === 4
        ? [...b.subarray(o.addr, o.addr + 4)]
        : family === 6
          ? [...b.subarray(o.addr, o.addr + 16)]
          : [],
    port: b.readUInt16LE(o.port),
    protocol: b[o.protocol] ?? 0,
    audit: (b.readUInt32LE(o.flags) & FLAG.audit) !== 0,
    ...(b.length > L.egress_deny_event.size ? { name: cString(b.subarray(L.egress_deny_event.size)) } : {}),
  };
}

/** Bytes up to the first NUL, as Latin-1 (a name the kernel copied; anything but a host name shows as '?'). */
function cString(b: Buffer): string {
  const end = b.indexOf(0);
  return b.toString('latin1', 0, end < 0 ? b.length : end);
}

/**
 * A socket closed (error 0) or not (a negative errno); `address` is the peer as judged (4 bytes for
 * IPv4, v4-mapped too, else 16). `socket`: how netlink SOCK_DESTROY finds it (its family, its own
 * address and port, the peer as it holds it, the cookie).
 */
export type RevokedRecord = Record<'port' | 'protocol' | 'error' | 'uid', number> & {
  cgroupId: bigint;
  address: number[];
  socket: { family: 4 | 6; localAddress: number[]; localPort: number; peerAddress: number[]; cookie: bigint };
};

/** An iterator's output: a record with an error replaces the one before (the same socket, not closed). */
export function decodeRevoked(b: Buffer): RevokedRecord[] {
  const { size, offsets: o } = L.egress_revoked;
  const out: RevokedRecord[] = [];
  for (let at = 0; at + size <= b.length; at += size) {
    const bytes = (offset: number, family: number | undefined) => [
      ...b.subarray(at + offset, at + offset + (family === 4 ? 4 : 16)),
    ];
    const error = b.readInt32LE(at + o.error);
    const family = b[at + o.sock_family] === 4 ? 4 : 6;
    if (error !== 0) out.pop();
    out.push({
      cgroupId: b.readBigUInt64LE(at + o.cgroup_id),
      address: bytes(o.addr, b[at + o.family]),
      port: b.readUInt16LE(at + o.port),
      protocol: b[at + o.protocol] ?? 0,
      error,
      uid: b.readUInt32LE(at + o.uid),
      socket: {
        family,
        localAddress: bytes(o.local_addr, family),
        localPort: b.readUInt16LE(at + o.local_port),
        peerAddress: bytes(o.peer_addr, family),
        cookie: b.readBigUInt64LE(at + o.cookie),
      },
    });
  }
  return out;
}

/** A destination in "observed": the computer, the address (4 or 16 bytes), port and protocol; how often, when. */
export type ObservedEntry = Record<'cgroupId' | 'count' | 'firstNs' | 'lastNs', bigint> &
  Record<'port' | 'protocol', number> & { address: number[] };

export function decodeObserved(key: Buffer, value: Buffer): ObservedEntry {
  const k = L.egress_observed_key.offsets;
  const v = L.egress_observed.offsets;
  const size = key[k.family] === 4 ? 4 : 16;
  return {
    cgroupId: key.readBigUInt64LE(k.cgroup_id),
    address: [...key.subarray(k.addr, k.addr + size)],
    port: key.readUInt16LE(k.port),
    protocol: key[k.protocol] ?? 0,
    count: value.readBigUInt64LE(v.count),
    firstNs: value.readBigUInt64LE(v.first_ns),
    lastNs: value.readBigUInt64LE(v.last_ns),
  };
}
