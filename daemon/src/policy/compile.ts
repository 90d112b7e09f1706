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
import { MODE, PROTO } from '../bpf/abi.js';
import { parseHost } from './host.js';
import type { Mode, Policy, Protocol } from './types.js';

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
  mode: number;
  prefixes: CompiledPrefix[];
  ports: PortEntry[];
  /** Hostname and wildcard rules: the DNS proxy fills their addresses; nothing in the tries yet. */
  names: string[];
}

const MODE_CODE: Record<Mode, number> = {
  unrestricted: MODE.unrestricted,
  allowlist: MODE.allowlist,
  denylist: MODE.denylist,
  isolated: MODE.isolated,
};

const PROTO_BITS: Record<Protocol, number> = { tcp: PROTO.tcp, udp: PROTO.udp, any: PROTO.any };

interface Node {
  family: 4 | 6;
  bytes: number[];
  prefixLen: number;
  anyPortProtos: number;
  /** "port/protoBit" strings of this prefix's own rules. */
  ports: Set<string>;
}

export function compile(policy: Policy): CompiledPolicy {
  const mode = MODE_CODE[policy.mode];
  if (policy.mode !== 'allowlist' && policy.mode !== 'denylist') {
    return { mode, prefixes: [], ports: [], names: [] };
  }
  const nodes = new Map<string, Node>();
  const names: string[] = [];
  for (const rule of policy.rules) {
    const host = parseHost(rule.host);
    if (host.kind !== 'cidr') {
      names.push(host.normalised);
      continue;
    }
    const id = `${host.family}/${host.bytes.join('.')}/${host.prefixLen}`;
    let node = nodes.get(id);
    if (!node) {
      node = {
        family: host.family,
        bytes: host.bytes,
        prefixLen: host.prefixLen,
        anyPortProtos: 0,
        ports: new Set(),
      };
      nodes.set(id, node);
    }
    const protos = PROTO_BITS[rule.protocol];
    if (rule.port === undefined) {
      node.anyPortProtos |= protos;
    } else {
      for (const bit of [PROTO.tcp, PROTO.udp, PROTO.other]) {
        if (protos & bit) node.ports.add(`${rule.port}/${bit}`);
      }
    }
  }
  return { mode, ...fold([...nodes.values()]), names: [...new Set(names)] };
}

/** Sorts prefixes so that every covering prefix comes before the prefixes it covers. */
function comparePrefixes(a: Node, b: Node): number {
  if (a.family !== b.family) return a.family - b.family;
  for (let i = 0; i < a.bytes.length; i++) {
    const d = (a.bytes[i] ?? 0) - (b.bytes[i] ?? 0);
    if (d !== 0) return d;
  }
  return a.prefixLen - b.prefixLen;
}

function covers(outer: Node, inner: Node): boolean {
  if (outer.family !== inner.family || outer.prefixLen > inner.prefixLen) return false;
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
  ports: Set<string>;
  portSet: number;
}

function fold(nodes: Node[]): { prefixes: CompiledPrefix[]; ports: PortEntry[] } {
  nodes.sort(comparePrefixes);
  const prefixes: CompiledPrefix[] = [];
  const ports: PortEntry[] = [];
  const portSetIds = new Map<string, number>();
  // Prefixes nest like brackets in this order: the stack holds the chain of
  // covering prefixes of the current one, each with its folded answer.
  const stack: Folded[] = [];
  for (const node of nodes) {
    while (stack.length > 0 && !covers(stack[stack.length - 1]!.node, node)) stack.pop();
    const parent = stack[stack.length - 1];
    const anyPortProtos = node.anyPortProtos | (parent?.anyPortProtos ?? 0);
    if (parent && node.ports.size === 0 && anyPortProtos === parent.anyPortProtos) {
      // Same answer as the covering prefix (the common case of many hosts in one block).
      stack.push({ ...parent, node });
      prefixes.push({
        family: node.family,
        bytes: node.bytes,
        prefixLen: node.prefixLen,
        anyPortProtos,
        portSet: parent.portSet,
      });
      continue;
    }
    const merged = new Set<string>();
    for (const source of [parent?.ports, node.ports]) {
      for (const entry of source ?? []) {
        const bit = Number(entry.split('/')[1]);
        if (!(anyPortProtos & bit)) merged.add(entry);
      }
    }
    let portSet = 0;
    if (merged.size > 0) {
      const signature = [...merged].sort().join(',');
      const known = portSetIds.get(signature);
      if (known !== undefined) {
        portSet = known;
      } else {
        portSet = portSetIds.size + 1;
        portSetIds.set(signature, portSet);
        for (const entry of merged) {
          const [port, proto] = entry.split('/').map(Number) as [number, number];
          ports.push({ portSet, port, proto });
        }
      }
    }
    stack.push({ node, anyPortProtos, ports: merged, portSet });
    prefixes.push({
      family: node.family,
      bytes: node.bytes,
      prefixLen: node.prefixLen,
      anyPortProtos,
      portSet,
    });
  }
  return { prefixes, ports };
}
