/**
 * TypeScript mirror of bpf/include/egress_abi.h: constants, layouts and the
 * only functions that write or read raw bytes of kernel structures (map keys
 * and values, and the parts of the kernel's own bpf_*_info structs egressd
 * reads). Every layout here must match its struct; test/unit/abi.test.ts
 * compares them with the BTF of the built object and with <linux/bpf.h>,
 * test/unit/abi-bytes.test.ts every encoder with bytes written out by hand.
 */
import type { Mode } from '../../policy/types.js';

/** What a computer's storage can hold: a policy's mode, or pending (all zeroes: nothing written yet). */
export type KernelMode = Mode | 'pending';

/** The one mode table: EGRESS_MODE_* by the policy's mode name. */
export const MODE: Readonly<Record<KernelMode, number>> = {
  pending: 0,
  unrestricted: 1,
  allowlist: 2,
  denylist: 3,
  isolated: 4,
};

const MODE_BY_CODE = new Map(Object.entries(MODE).map(([name, code]) => [code, name as KernelMode]));

export function encodeMode(mode: KernelMode): number {
  return MODE[mode];
}

/** The mode of a storage value's code; undefined for a code this build does not know. */
export function decodeMode(code: number): KernelMode | undefined {
  return MODE_BY_CODE.get(code);
}

export const PROTO = { tcp: 0x1, udp: 0x2, other: 0x4, any: 0x7 } as const;

/** Retired (see EGRESS_FLAG_BLOCK_DNS in the header): only cleared where an earlier agent set it. */
export const FLAG = { blockDns: 0x1, audit: 0x2, observe: 0x4 } as const;

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
export const ABI_VERSION = 6;

/** Reasons of a deny event (EGRESS_REASON_*), by their code. */
export const REASON = {
  ...{ mode: 1, rule: 2, socket: 3, dns: 4, proxyPort: 5, ungoverned: 6 },
  ...{ nameMismatch: 7, quic: 8 },
} as const;

/** Flags of a learned entry (EGRESS_LEARNED_*). */
export const LEARNED_FLAG = { bindName: 0x1, udp: 0x2 } as const;

/** EGRESS_NAME_MAX: a name's bytes in learned_names keys and name_mismatch events. */
export const NAME_MAX = 256;

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
  observed: 'observed',
  socketOwner: 'socket_owner',
  learnedNames: 'learned_names',
  computerValues: 'computer_values',
  nameChecks: 'name_checks',
  nameCheckSocks: 'name_check_socks',
  nameScratch: 'name_scratch',
  denyEvents: 'deny_events',
  config: 'config',
  barrierInner: 'barrier_inner',
  rcuBarrier: 'rcu_barrier',
} as const;

/** The maps that only build/revoke.bpf.o has (it shares every map of MAPS with egress.bpf.o). */
export const REVOKE_MAPS = { revoking: 'revoking' } as const;

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
      flags: 60,
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
  egress_learned: {
    size: 16,
    offsets: { expires_ns: 0, port_set: 8, any_port_protos: 12, flags: 13, pad: 14 },
  },
  egress_learned_name: { size: 280, offsets: { learned_id: 0, family: 4, pad: 5, addr: 8, name: 24 } },
  egress_name_check: {
    size: 56,
    offsets: { cgroup_id: 0, cookie: 8, addr: 16, port: 32, family: 34, state: 35, pad: 36, comm: 40 },
  },
  egress_dns_origin: { size: 20, offsets: { addr: 0, port: 16, family: 18 } },
  egress_observed_key: {
    size: 32,
    offsets: { cgroup_id: 0, addr: 8, port: 24, family: 26, protocol: 27, pad: 28 },
  },
  egress_observed: { size: 24, offsets: { count: 0, first_ns: 8, last_ns: 16 } },
  egress_revoked: {
    size: 80,
    offsets: {
      ...{ cgroup_id: 0, addr: 8, port: 24, family: 26, protocol: 27, error: 28, uid: 32, local_port: 36 },
      ...{ sock_family: 38, pad: 39, local_addr: 40, peer_addr: 56, cookie: 72 },
    },
  },
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
  /** LEARNED_FLAG bits. */
  flags: number;
}

export function encodeLearned(v: LearnedValue): Buffer {
  const b = Buffer.alloc(L.egress_learned.size);
  b.writeBigUInt64LE(v.expiresNs, L.egress_learned.offsets.expires_ns);
  b.writeUInt32LE(v.portSet, L.egress_learned.offsets.port_set);
  b[L.egress_learned.offsets.any_port_protos] = v.anyPortProtos;
  b[L.egress_learned.offsets.flags] = v.flags;
  return b;
}

/** A learned_names key: a name (lower case, at most NAME_MAX - 1 bytes) the address was learned for. */
export function encodeLearnedName(learnedId: number, bytes: readonly number[], name: string): Buffer {
  const o = L.egress_learned_name.offsets;
  const b = Buffer.alloc(L.egress_learned_name.size);
  b.writeUInt32LE(learnedId, o.learned_id);
  b[o.family] = bytes.length === 4 ? 4 : 6;
  for (let i = 0; i < bytes.length; i++) b[o.addr + i] = bytes[i] ?? 0;
  b.write(name.slice(0, NAME_MAX - 1), o.name, 'latin1');
  return b;
}

export function decodeLearnedName(b: Buffer): { learnedId: number; bytes: number[]; name: string } {
  const o = L.egress_learned_name.offsets;
  const family = b[o.family];
  const name = b.subarray(o.name, o.name + NAME_MAX);
  const end = name.indexOf(0);
  return {
    learnedId: b.readUInt32LE(o.learned_id),
    bytes: [...b.subarray(o.addr, o.addr + (family === 4 ? 4 : 16))],
    name: name.toString('latin1', 0, end < 0 ? NAME_MAX : end),
  };
}

export function decodeLearned(b: Buffer): LearnedValue {
  return {
    expiresNs: b.readBigUInt64LE(L.egress_learned.offsets.expires_ns),
    portSet: b.readUInt32LE(L.egress_learned.offsets.port_set),
    anyPortProtos: b[L.egress_learned.offsets.any_port_protos] ?? 0,
    flags: b[L.egress_learned.offsets.flags] ?? 0,
  };
}

/** Keys of cgroup storage and "governed": the cgroup's inode number. */
export const CGROUP_KEY_SIZE = 8;

export function encodeCgroupKey(cgroupId: bigint): Buffer {
  const b = Buffer.alloc(CGROUP_KEY_SIZE);
  b.writeBigUInt64LE(cgroupId);
  return b;
}

export function decodeCgroupKey(b: Buffer): bigint {
  return b.readBigUInt64LE(0);
}

export function learnedKeySize(family: 4 | 6): number {
  return family === 4 ? L.egress_learned_v4.size : L.egress_learned_v6.size;
}

/** The learned id and address bytes of a learned map key; the family follows the key's size. */
export function decodeLearnedKey(b: Buffer): { learnedId: number; bytes: number[] } {
  const layout = b.length === L.egress_learned_v4.size ? L.egress_learned_v4 : L.egress_learned_v6;
  const o = layout.offsets;
  return { learnedId: b.readUInt32LE(o.learned_id), bytes: [...b.subarray(o.addr, layout.size)] };
}

/** What a rule trie entry holds for one prefix (the fields of CompiledPrefix that the maps store). */
export interface RuleEntry {
  bytes: readonly number[];
  prefixLen: number;
  portSet: number;
  anyPortProtos: number;
}

export const RULE_VALUE_SIZE = L.egress_rule.size;
export const PORT_KEY_SIZE = L.egress_port_key.size;

export function ruleKeySize(family: 4 | 6): number {
  return family === 4 ? L.egress_lpm_v4.size : L.egress_lpm_v6.size;
}

/**
 * Packed keys and values of `rules_v4` or `rules_v6` (the family follows
 * `family`) for the prefixes of policy `policyId`, for one batch update.
 */
export function encodeRules(
  policyId: number,
  family: 4 | 6,
  entries: readonly RuleEntry[],
): { keys: Buffer; values: Buffer } {
  const layout = family === 4 ? L.egress_lpm_v4 : L.egress_lpm_v6;
  const v = L.egress_rule.offsets;
  const keys = Buffer.alloc(entries.length * layout.size);
  const values = Buffer.alloc(entries.length * RULE_VALUE_SIZE);
  entries.forEach((e, i) => {
    const k = i * layout.size;
    // prefixlen counts from policy_id, which is always matched in full.
    keys.writeUInt32LE(32 + e.prefixLen, k + layout.offsets.prefixlen);
    keys.writeUInt32LE(policyId, k + layout.offsets.policy_id);
    for (let j = 0; j < e.bytes.length; j++) keys[k + layout.offsets.addr + j] = e.bytes[j] ?? 0;
    values.writeUInt32LE(e.portSet, i * RULE_VALUE_SIZE + v.port_set);
    values[i * RULE_VALUE_SIZE + v.any_port_protos] = e.anyPortProtos;
  });
  return { keys, values };
}

/** One struct egress_rule (the value of learned_names too). */
export function encodeRuleValue(portSet: number, anyPortProtos: number): Buffer {
  const b = Buffer.alloc(RULE_VALUE_SIZE);
  b.writeUInt32LE(portSet, L.egress_rule.offsets.port_set);
  b[L.egress_rule.offsets.any_port_protos] = anyPortProtos;
  return b;
}

/** The policy id, address bytes and CIDR length of a rule trie key; the family follows the key's size. */
export function decodeRuleKey(b: Buffer): { policyId: number; bytes: number[]; prefixLen: number } {
  const layout = b.length === L.egress_lpm_v4.size ? L.egress_lpm_v4 : L.egress_lpm_v6;
  const o = layout.offsets;
  return {
    policyId: b.readUInt32LE(o.policy_id),
    bytes: [...b.subarray(o.addr, layout.size)],
    prefixLen: b.readUInt32LE(o.prefixlen) - 32,
  };
}

export interface PortKey {
  portSet: number;
  port: number;
  /** One PROTO bit. */
  proto: number;
}

/** Packed `rule_ports` keys of policy `policyId`, for one batch update (values: encodeMarks). */
export function encodePortKeys(policyId: number, entries: readonly PortKey[]): Buffer {
  const o = L.egress_port_key.offsets;
  const keys = Buffer.alloc(entries.length * PORT_KEY_SIZE);
  entries.forEach((e, i) => {
    const k = i * PORT_KEY_SIZE;
    keys.writeUInt32LE(policyId, k + o.policy_id);
    keys.writeUInt32LE(e.portSet, k + o.port_set);
    keys.writeUInt16LE(e.port, k + o.port);
    keys[k + o.proto] = e.proto;
  });
  return keys;
}

export function decodePortKey(b: Buffer): PortKey & { policyId: number } {
  const o = L.egress_port_key.offsets;
  return {
    policyId: b.readUInt32LE(o.policy_id),
    portSet: b.readUInt32LE(o.port_set),
    port: b.readUInt16LE(o.port),
    proto: b[o.proto] ?? 0,
  };
}

/** Values of the set maps (rule_ports, internal_v4/v6, governed): one byte, always 1; `count` packed. */
export function encodeMarks(count = 1): Buffer {
  return Buffer.alloc(count, 1);
}

export function internalKeySize(family: 4 | 6): number {
  return family === 4 ? L.egress_internal_v4.size : L.egress_internal_v6.size;
}

export function encodeInternalKey(bytes: readonly number[], prefixLen: number): Buffer {
  const layout = bytes.length === 4 ? L.egress_internal_v4 : L.egress_internal_v6;
  const b = Buffer.alloc(layout.size);
  b.writeUInt32LE(prefixLen, layout.offsets.prefixlen);
  for (let i = 0; i < bytes.length; i++) b[layout.offsets.addr + i] = bytes[i] ?? 0;
  return b;
}

/** Keys of "config" and of the RCU barrier's array maps. */
export function encodeU32(n: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(n);
  return b;
}

/** Values of "config" (__u64 slots). */
export const CONFIG_VALUE_SIZE = 8;

export function encodeU64(n: bigint): Buffer {
  const b = Buffer.alloc(8);
  b.writeBigUInt64LE(n);
  return b;
}

export function decodeU64(b: Buffer): bigint {
  return b.readBigUInt64LE(0);
}

/** EGRESS_CONFIG_DNS_PORTS: min | max << 16, host byte order. */
export function encodeDnsPorts(min: number, max: number): Buffer {
  return encodeU64(BigInt(min) | (BigInt(max) << 16n));
}

/** EGRESS_CONFIG_PROXY_V4: the address in network order in the slot's first bytes; none: 0. */
export function encodeProxyV4(bytes?: readonly number[]): Buffer {
  const b = Buffer.alloc(8);
  if (bytes) Buffer.from(bytes).copy(b, 0);
  return b;
}

/** EGRESS_CONFIG_PROXY_V6_HI and _LO: the address's bytes 0-7 and 8-15 as in memory; none: 0 and 0. */
export function encodeProxyV6(bytes?: readonly number[]): { hi: Buffer; lo: Buffer } {
  const b = Buffer.alloc(16);
  if (bytes) Buffer.from(bytes).copy(b, 0);
  return { hi: b.subarray(0, 8), lo: b.subarray(8, 16) };
}
