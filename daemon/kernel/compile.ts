/**
 * compile(policy): the pure step from a policy to the entries of the rule
 * maps (bpf/include/egress_abi.h), with no I/O and no policy id; the
 * enforcer encodes the result under a fresh id.
 *
 * The kernel looks up the longest matching prefix only, so each entry must
 * carry the whole answer for its prefix: a prefix inherits the protocols and
 * ports of every shorter rule prefix that covers it. Distinct port lists are
 * stored once and shared by id (port_set).
 */

import { parseHost } from '../../policy/host.js';
import { modeTakesRules, type Policy, type Protocol } from '../../policy/types.js';
import { encodeMode, PROTO } from './abi.js';

export interface CompiledPrefix {
  family: 4 | 6;
  /** Address bytes, network order, host bits cleared. */
  bytes: number[];
  prefixLen: number;
  /** PROTO bits that match on every port. */
  anyPortProtos: number;
  /** 0 when no port-specific rule applies; else an id into portSets. */
  portSet: number;
}

export interface PortEntry {
  portSet: number;
  port: number;
  /** One PROTO bit. */
  proto: number;
}

export interface CompiledPolicy {
  /** EGRESS_MODE_* code (encodeMode). */
  mode: number;
  prefixes: CompiledPrefix[];
  ports: PortEntry[];
  /**
   * Hostname and wildcard rules, one entry per distinct pattern with the
   * union of its rules' ports: the DNS proxy learns their addresses.
   */
  names: CompiledName[];
}

export interface CompiledName {
  /** A hostname, or `*.` + hostname. */
  pattern: string;
  anyPortProtos: number;
  /** 0 or an id of `ports`, as for prefixes. */
  portSet: number;
  /** Connections to its addresses must name it (no rule of the pattern says `bind_name: false`). */
  bindName: boolean;
  /** A rule of the pattern says `"protocol": "udp"`: QUIC to its addresses is allowed. */
  udp: boolean;
}

const PROTO_BITS: Record<Protocol, number> = { tcp: PROTO.tcp, udp: PROTO.udp, any: PROTO.any };

interface Node {
  family: 4 | 6;
  bytes: number[];
  prefixLen: number;
  /** Orders covering prefixes before the prefixes they cover (address, then length). */
  sortKey: string | number;
  anyPortProtos: number;
  /** Port codes (port * 8 + PROTO bit) of this prefix's own rules. */
  ports: number[];
}

export function compile(policy: Policy): CompiledPolicy {
  const mode = encodeMode(policy.mode);
  if (!modeTakesRules(policy.mode)) {
    return { mode, prefixes: [], ports: [], names: [] };
  }
  const nodes = new Map<string, Node>();
  const names = new Map<
    string,
    { anyPortProtos: number; ports: number[]; bindName: boolean; udp: boolean }
  >();
  for (const rule of policy.rules) {
    const host = parseHost(rule.host);
    if (host.kind !== 'cidr') {
      let name = names.get(host.normalised);
      if (!name) {
        name = { anyPortProtos: 0, ports: [], bindName: true, udp: false };
        names.set(host.normalised, name);
      }
      addRule(name, rule);
      if (rule.bind_name === false) name.bindName = false;
      if (rule.protocol === 'udp') name.udp = true;
      continue;
    }
    let node = nodes.get(host.normalised);
    if (!node) {
      node = {
        family: host.family,
        bytes: host.bytes,
        prefixLen: host.prefixLen,
        sortKey: sortKey(host.family, host.bytes, host.prefixLen),
        anyPortProtos: 0,
        ports: [],
      };
      nodes.set(host.normalised, node);
    }
    addRule(node, rule);
  }
  const v4: Node[] = [];
  const v6: Node[] = [];
  for (const node of nodes.values()) (node.family === 4 ? v4 : v6).push(node);
  const portSetIds = new Map<string, number>();
  const ports: PortEntry[] = [];
  const prefixes = [...fold(v4, portSetIds, ports), ...fold(v6, portSetIds, ports)];
  const compiledNames = [...names].map(([pattern, n]) => ({
    pattern,
    anyPortProtos: n.anyPortProtos,
    portSet: portSetOf(mergePorts([], n.ports, n.anyPortProtos), portSetIds, ports),
    bindName: n.bindName,
    udp: n.udp,
  }));
  return { mode, prefixes, ports, names: compiledNames };
}

/** Adds a rule's protocols (every port) or port codes (port * 8 + PROTO bit) to a target. */
function addRule(target: { anyPortProtos: number; ports: number[] }, rule: Policy['rules'][number]): void {
  const protos = PROTO_BITS[rule.protocol];
  if (rule.port === undefined) {
    target.anyPortProtos |= protos;
    return;
  }
  if (protos & PROTO.tcp) target.ports.push(rule.port * 8 + PROTO.tcp);
  if (protos & PROTO.udp) target.ports.push(rule.port * 8 + PROTO.udp);
  if (protos & PROTO.other) target.ports.push(rule.port * 8 + PROTO.other);
}

/** True when `name` (normalised) matches `pattern`: equal, or strictly below a `*.` suffix. */
export function nameMatches(pattern: string, name: string): boolean {
  if (pattern.startsWith('*.')) return name.endsWith(pattern.slice(1)) && name.length > pattern.length - 1;
  return name === pattern;
}

/** What the policy says of a name chain (see nameVerdict). */
export interface NameVerdict {
  anyPortProtos: number;
  codes: number[];
  /** Every matching pattern binds names: connections must name one of the chain (see bpf/lib/names.h). */
  bindName: boolean;
  /** A matching pattern allows QUIC (a rule says "udp"). */
  udp: boolean;
  /** The wildcard patterns that match, each with its own ports: a connection may name any name under them. */
  wildcards: { pattern: string; anyPortProtos: number; codes: number[] }[];
}

/**
 * The answer for a name: the union of every pattern that matches it, as
 * protocols on every port plus port codes; undefined when none matches.
 */
export function nameVerdict(compiled: CompiledPolicy, names: readonly string[]): NameVerdict | undefined {
  let anyPortProtos = 0;
  const codes: number[] = [];
  let matched = false;
  let bindName = true;
  let udp = false;
  const wildcards: NameVerdict['wildcards'] = [];
  for (const n of compiled.names) {
    if (!names.some((name) => nameMatches(n.pattern, name))) continue;
    matched = true;
    anyPortProtos |= n.anyPortProtos;
    const own = n.portSet === 0 ? [] : compiled.ports.filter((e) => e.portSet === n.portSet);
    for (const e of own) codes.push(e.port * 8 + e.proto);
    bindName &&= n.bindName;
    udp ||= n.udp;
    if (n.pattern.startsWith('*.')) {
      const ownCodes = own.map((e) => e.port * 8 + e.proto);
      wildcards.push({ pattern: n.pattern, anyPortProtos: n.anyPortProtos, codes: ownCodes });
    }
  }
  if (!matched) return undefined;
  return { anyPortProtos, codes: mergePorts([], codes, anyPortProtos), bindName, udp, wildcards };
}

function sortKey(family: 4 | 6, bytes: number[], prefixLen: number): string | number {
  if (family === 4)
    return (
      ((bytes[0]! << 24) >>> 0) * 2 ** 14 +
      ((bytes[1]! << 16) | (bytes[2]! << 8) | bytes[3]!) * 64 +
      prefixLen
    );
  return Buffer.from(bytes).toString('hex') + String(prefixLen).padStart(3, '0');
}

function covers(outer: Node, inner: Node): boolean {
  if (outer.prefixLen > inner.prefixLen) return false;
  const full = outer.prefixLen >> 3;
  for (let i = 0; i < full; i++) if (outer.bytes[i] !== inner.bytes[i]) return false;
  const rest = outer.prefixLen & 7;
  if (rest === 0) return true;
  const mask = (0xff << (8 - rest)) & 0xff;
  return ((outer.bytes[full] ?? 0) & mask) === ((inner.bytes[full] ?? 0) & mask);
}

interface Folded {
  node: Node;
  anyPortProtos: number;
  /** Sorted, distinct port codes that apply (own and inherited, minus any-port protocols). */
  ports: number[];
  portSet: number;
}

/** Nodes of one family; port sets are shared across families through `portSetIds`. */
function fold(nodes: Node[], portSetIds: Map<string, number>, ports: PortEntry[]): CompiledPrefix[] {
  if (nodes[0]?.family === 4) nodes.sort((a, b) => (a.sortKey as number) - (b.sortKey as number));
  else nodes.sort((a, b) => (a.sortKey < b.sortKey ? -1 : a.sortKey > b.sortKey ? 1 : 0));
  const prefixes: CompiledPrefix[] = [];
  // Prefixes nest like brackets in this order: the stack holds the chain of
  // covering prefixes of the current one, each with its folded answer.
  const stack: Folded[] = [];
  for (const node of nodes) {
    while (stack.length > 0 && !covers(stack[stack.length - 1]!.node, node)) stack.pop();
    const parent = stack[stack.length - 1];
    const anyPortProtos = node.anyPortProtos | (parent?.anyPortProtos ?? 0);
    let folded: Folded;
    if (parent && node.ports.length === 0 && anyPortProtos === parent.anyPortProtos) {
      // Same answer as the covering prefix (the common case of many hosts in one block).
      folded = { ...parent, node };
    } else {
      const distinct = mergePorts(parent?.ports ?? [], node.ports, anyPortProtos);
      folded = { node, anyPortProtos, ports: distinct, portSet: portSetOf(distinct, portSetIds, ports) };
    }
    stack.push(folded);
    prefixes.push({
      family: node.family,
      bytes: node.bytes,
      prefixLen: node.prefixLen,
      anyPortProtos,
      portSet: folded.portSet,
    });
  }
  return prefixes;
}

/** Sorted distinct port codes of both lists whose protocol is not already allowed on every port. */
export function mergePorts(inherited: number[], own: number[], anyPortProtos: number): number[] {
  if (inherited.length === 0 && own.length === 1) return anyPortProtos & own[0]! & 7 ? [] : own;
  const merged = inherited.concat(own).filter((code) => !(anyPortProtos & code & 7));
  return [...new Set(merged)].sort((a, b) => a - b);
}

export function portSetOf(codes: number[], portSetIds: Map<string, number>, ports: PortEntry[]): number {
  if (codes.length === 0) return 0;
  const signature = codes.join(',');
  const known = portSetIds.get(signature);
  if (known !== undefined) return known;
  const portSet = portSetIds.size + 1;
  portSetIds.set(signature, portSet);
  for (const code of codes) ports.push({ portSet, port: Math.floor(code / 8), proto: code & 7 });
  return portSet;
}
