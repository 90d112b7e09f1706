/**
 * TypeScript mirror of bpf/include/egress_abi.h: constants, layouts and the
 * only functions that write or read raw map buffers. Every layout here must
 * match its struct in the header; test/privileged/abi.test.ts compares them
 * with the BTF of the built object.
 */

export const MODE = {
  pending: 0,
  unrestricted: 1,
  allowlist: 2,
  denylist: 3,
  isolated: 4,
} as const;

export const PROTO = { tcp: 0x1, udp: 0x2, other: 0x4, any: 0x7 } as const;

/** Retired (see EGRESS_FLAG_BLOCK_DNS in the header): only cleared where an earlier agent set it. */
export const FLAG = { blockDns: 0x1 } as const;

export const CONFIG_SLOT = {
  agentNetnsCookie: 0,
  abiVersion: 1,
  nextPolicyId: 2,
  dnsPorts: 3,
  proxyV4: 4,
  proxyV6Hi: 5,
  proxyV6Lo: 6,
  nextLearnedId: 7,
} as const;
export const CONFIG_SLOTS = 16;
export const ABI_VERSION = 4;

/** Reasons of a deny event (EGRESS_REASON_*), by their code. */
export const REASON = { mode: 1, rule: 2, socket: 3, dns: 4, proxyPort: 5, ungoverned: 6 } as const;

/** Names of the maps and programs in build/egress.bpf.o; nothing else spells them. */
export const MAPS = {
  computers: 'computers',
  rulesV4: 'rules_v4',
  rulesV6: 'rules_v6',
  rulePorts: 'rule_ports',
  internalV4: 'internal_v4',
  internalV6: 'internal_v6',
  learnedV4: 'learned_v4',
  learnedV6: 'learned_v6',
  dnsOrigin: 'dns_origin',
  governed: 'governed',
  socketOwner: 'socket_owner',
  denyEvents: 'deny_events',
  config: 'config',
  barrierInner: 'barrier_inner',
  rcuBarrier: 'rcu_barrier',
} as const;

/** Byte layouts: size and member offsets, as in the header. */
export const LAYOUT = {
  egress_computer: {
    size: 32,
    offsets: { mode: 0, policy_id: 4, version: 8, learned_id: 16, dns_port: 20, flags: 22, cgroup_id: 24 },
  },
  egress_deny_event: {
    size: 64,
    offsets: {
      time_ns: 0,
      cgroup_id: 8,
      pid: 16,
      reason: 20,
      comm: 24,
      addr: 40,
      port: 56,
      family: 58,
      protocol: 59,
      pad: 60,
    },
  },
  egress_lpm_v4: { size: 12, offsets: { prefixlen: 0, policy_id: 4, addr: 8 } },
  egress_lpm_v6: { size: 24, offsets: { prefixlen: 0, policy_id: 4, addr: 8 } },
  egress_rule: { size: 8, offsets: { port_set: 0, any_port_protos: 4, pad: 5 } },
  egress_port_key: { size: 12, offsets: { policy_id: 0, port_set: 4, port: 8, proto: 10, pad: 11 } },
  egress_internal_v4: { size: 8, offsets: { prefixlen: 0, addr: 4 } },
  egress_internal_v6: { size: 20, offsets: { prefixlen: 0, addr: 4 } },
  egress_learned_v4: { size: 8, offsets: { learned_id: 0, addr: 4 } },
  egress_learned_v6: { size: 20, offsets: { learned_id: 0, addr: 4 } },
  egress_learned: { size: 16, offsets: { expires_ns: 0, port_set: 8, any_port_protos: 12, pad: 13 } },
  egress_dns_origin: { size: 20, offsets: { addr: 0, port: 16, family: 18 } },
} as const;

export interface ComputerValue {
  mode: number;
  policyId: number;
  version: bigint;
  learnedId: number;
  dnsPort: number;
  flags: number;
  cgroupId: bigint;
}

const L = LAYOUT;

export function encodeComputer(v: ComputerValue): Buffer {
  const b = Buffer.alloc(L.egress_computer.size);
  b.writeUInt32LE(v.mode, L.egress_computer.offsets.mode);
  b.writeUInt32LE(v.policyId, L.egress_computer.offsets.policy_id);
  b.writeBigUInt64LE(v.version, L.egress_computer.offsets.version);
  b.writeUInt32LE(v.learnedId, L.egress_computer.offsets.learned_id);
  b.writeUInt16LE(v.dnsPort, L.egress_computer.offsets.dns_port);
  b.writeUInt16LE(v.flags, L.egress_computer.offsets.flags);
  b.writeBigUInt64LE(v.cgroupId, L.egress_computer.offsets.cgroup_id);
  return b;
}

export function decodeComputer(b: Buffer): ComputerValue {
  return {
    mode: b.readUInt32LE(L.egress_computer.offsets.mode),
    policyId: b.readUInt32LE(L.egress_computer.offsets.policy_id),
    version: b.readBigUInt64LE(L.egress_computer.offsets.version),
    learnedId: b.readUInt32LE(L.egress_computer.offsets.learned_id),
    dnsPort: b.readUInt16LE(L.egress_computer.offsets.dns_port),
    flags: b.readUInt16LE(L.egress_computer.offsets.flags),
    cgroupId: b.readBigUInt64LE(L.egress_computer.offsets.cgroup_id),
  };
}

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
  };
}

/** Learned map key for (learnedId, address bytes); the family follows bytes.length. */
export function encodeLearnedKey(learnedId: number, bytes: readonly number[]): Buffer {
  const layout = bytes.length === 4 ? L.egress_learned_v4 : L.egress_learned_v6;
  const b = Buffer.alloc(layout.size);
  b.writeUInt32LE(learnedId, layout.offsets.learned_id);
  for (let i = 0; i < bytes.length; i++) b[layout.offsets.addr + i] = bytes[i] ?? 0;
  return b;
}

export interface LearnedValue {
  expiresNs: bigint;
  portSet: number;
  anyPortProtos: number;
}

export function encodeLearned(v: LearnedValue): Buffer {
  const b = Buffer.alloc(L.egress_learned.size);
  b.writeBigUInt64LE(v.expiresNs, L.egress_learned.offsets.expires_ns);
  b.writeUInt32LE(v.portSet, L.egress_learned.offsets.port_set);
  b[L.egress_learned.offsets.any_port_protos] = v.anyPortProtos;
  return b;
}

export function decodeLearned(b: Buffer): LearnedValue {
  return {
    expiresNs: b.readBigUInt64LE(L.egress_learned.offsets.expires_ns),
    portSet: b.readUInt32LE(L.egress_learned.offsets.port_set),
    anyPortProtos: b[L.egress_learned.offsets.any_port_protos] ?? 0,
  };
}

/** Cgroup storage key: the cgroup's inode number. */
export function encodeCgroupKey(cgroupId: bigint): Buffer {
  const b = Buffer.alloc(8);
  b.writeBigUInt64LE(cgroupId);
  return b;
}

/** Writes a rule trie key for (policyId, prefix) at `offset` of `into`; the family follows bytes.length. */
export function writeRuleKey(
  into: Buffer,
  offset: number,
  policyId: number,
  bytes: readonly number[],
  prefixLen: number,
) {
  const layout = bytes.length === 4 ? L.egress_lpm_v4 : L.egress_lpm_v6;
  into.writeUInt32LE(32 + prefixLen, offset + layout.offsets.prefixlen);
  into.writeUInt32LE(policyId, offset + layout.offsets.policy_id);
  for (let i = 0; i < bytes.length; i++) into[offset + layout.offsets.addr + i] = bytes[i] ?? 0;
}

export function ruleKeySize(family: 4 | 6): number {
  return family === 4 ? L.egress_lpm_v4.size : L.egress_lpm_v6.size;
}

export function readRuleKeyPolicyId(key: Buffer): number {
  return key.readUInt32LE(L.egress_lpm_v4.offsets.policy_id);
}

export function writeRuleValue(into: Buffer, offset: number, portSet: number, anyPortProtos: number) {
  into.writeUInt32LE(portSet, offset + L.egress_rule.offsets.port_set);
  into[offset + L.egress_rule.offsets.any_port_protos] = anyPortProtos;
}

export function writePortKey(
  into: Buffer,
  offset: number,
  policyId: number,
  portSet: number,
  port: number,
  proto: number,
) {
  const o = L.egress_port_key.offsets;
  into.writeUInt32LE(policyId, offset + o.policy_id);
  into.writeUInt32LE(portSet, offset + o.port_set);
  into.writeUInt16LE(port, offset + o.port);
  into[offset + o.proto] = proto;
}

export function readPortKeyPolicyId(key: Buffer): number {
  return key.readUInt32LE(L.egress_port_key.offsets.policy_id);
}

export function readPortKeyPortSet(key: Buffer): number {
  return key.readUInt32LE(L.egress_port_key.offsets.port_set);
}

export function encodeInternalKey(bytes: readonly number[], prefixLen: number): Buffer {
  const layout = bytes.length === 4 ? L.egress_internal_v4 : L.egress_internal_v6;
  const b = Buffer.alloc(layout.size);
  b.writeUInt32LE(prefixLen, layout.offsets.prefixlen);
  for (let i = 0; i < bytes.length; i++) b[layout.offsets.addr + i] = bytes[i] ?? 0;
  return b;
}

export function encodeU32(n: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(n);
  return b;
}

export function encodeU64(n: bigint): Buffer {
  const b = Buffer.alloc(8);
  b.writeBigUInt64LE(n);
  return b;
}
