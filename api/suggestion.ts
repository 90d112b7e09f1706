/**
 * The suggested allowlist (issue 17, "observe, then enforce"): what a
 * computer was seen connecting to (the store's observations) as a policy
 * body ready to PUT, with the observations behind each rule.
 *
 * - A hostname observation is a hostname rule, an address one an address
 *   rule (normalised as the policy schema normalises hosts), each with the
 *   port and protocol seen.
 * - More than WILDCARD_THRESHOLD distinct names directly below one parent
 *   domain (the name minus its first label; a parent of at least two
 *   labels, so never `*.com`), seen on the same port and protocol, become
 *   one `*.parent` rule; it also takes the deeper names below that parent on
 *   that port and protocol. The parent itself is not below `*.parent`: seen,
 *   it keeps a rule of its own.
 * - One rule per (host, port, protocol); hostnames (and wildcards) first,
 *   then addresses (IPv4, then IPv6, by value); then port, protocol.
 * - Nothing observed (or nothing a rule can hold): an allowlist needs a rule
 *   (400 rules_required), so the suggestion is what an empty allowlist
 *   would be: isolated mode with `dns: none`, refusing every connection and
 *   every DNS query; `note` says so.
 *
 * Pure: no I/O, no clock.
 */
import { HostError, parseHost } from '../policy/host.js';
import type { Observation } from '../store/store.js';

/** Distinct names below one parent (same port and protocol) beyond which they become `*.parent`. */
export const WILDCARD_THRESHOLD = 3;

export interface SuggestedRule {
  host: string;
  port: number;
  protocol: 'tcp' | 'udp';
}

/** A policy body (PolicyInput): `dns` is left to the API's default but for the isolated fallback. */
export interface SuggestedPolicy {
  mode: 'allowlist' | 'isolated';
  rules: SuggestedRule[];
  dns?: 'none';
}

export interface Suggestion {
  policy: SuggestedPolicy;
  /** In the order of `policy.rules`: each rule, and what was seen that it allows. */
  rules: Array<{ rule: SuggestedRule; observations: Observation[] }>;
  /** Observations that no rule can hold (a host the policy schema refuses, a port out of range). */
  skipped: Observation[];
  /** What to know before applying it; null when nothing. */
  note: string | null;
}

export interface SuggestOptions {
  /** The service's most rules per policy: more is said in `note` (the PUT would be refused). */
  maxRules?: number;
}

interface Seen {
  observation: Observation;
  /** Normalised host. */
  host: string;
  /** 4 or 6 for an address; 0 for a hostname. */
  family: 0 | 4 | 6;
  bytes: number[];
}

/** Observations → the suggested policy, and the observations behind each rule. */
export function suggestPolicy(
  observations: readonly Observation[],
  options: SuggestOptions = {},
): Suggestion {
  const seen: Seen[] = [];
  const skipped: Observation[] = [];
  for (const o of observations) {
    const s = classify(o);
    if (s) seen.push(s);
    else skipped.push(o);
  }
  const wildcards = wildcardSuffixes(seen);
  const byRule = new Map<
    string,
    { rule: SuggestedRule; family: 0 | 4 | 6; bytes: number[]; seen: Observation[] }
  >();
  for (const s of seen) {
    const { port, protocol } = s.observation;
    const host = s.family === 0 ? coveringWildcard(s.host, wildcards.get(`${port} ${protocol}`)) : s.host;
    const key = `${host} ${port} ${protocol}`;
    let entry = byRule.get(key);
    if (!entry) {
      entry = { rule: { host, port, protocol }, family: s.family, bytes: s.bytes, seen: [] };
      byRule.set(key, entry);
    }
    entry.seen.push(s.observation);
  }
  const entries = [...byRule.values()].sort(
    (a, b) =>
      (a.family === 0 ? 0 : 1) - (b.family === 0 ? 0 : 1) ||
      (a.family === 0 ? compareText(a.rule.host, b.rule.host) : compareAddress(a, b)) ||
      a.rule.port - b.rule.port ||
      compareText(a.rule.protocol, b.rule.protocol),
  );
  const rules = entries.map((e) => ({ rule: e.rule, observations: e.seen.sort(byRecency) }));
  const policy: SuggestedPolicy =
    rules.length === 0
      ? { mode: 'isolated', rules: [], dns: 'none' }
      : { mode: 'allowlist', rules: rules.map((r) => ({ ...r.rule })) };
  return { policy, rules, skipped, note: noteOf(observations.length, rules.length, skipped, options) };
}

/** A rule's host for an observation, or undefined when no rule can hold it. */
function classify(o: Observation): Seen | undefined {
  if (!Number.isInteger(o.port) || o.port < 1 || o.port > 65535) return undefined;
  if (o.protocol !== 'tcp' && o.protocol !== 'udp') return undefined;
  // An observation is one name or one address: never a block or a wildcard.
  if (o.host.includes('/') || o.host.includes('*')) return undefined;
  try {
    const parsed = parseHost(o.host);
    if (parsed.kind === 'hostname') return { observation: o, host: parsed.normalised, family: 0, bytes: [] };
    if (parsed.kind === 'cidr') {
      return { observation: o, host: parsed.normalised, family: parsed.family, bytes: parsed.bytes };
    }
    return undefined;
  } catch (err) {
    if (err instanceof HostError) return undefined;
    throw err;
  }
}

/**
 * "port protocol" → the parents that get a wildcard: those with more than
 * WILDCARD_THRESHOLD distinct names directly below them.
 */
function wildcardSuffixes(seen: readonly Seen[]): Map<string, Set<string>> {
  const children = new Map<string, Set<string>>();
  for (const s of seen) {
    if (s.family !== 0) continue;
    const dot = s.host.indexOf('.');
    const parent = s.host.slice(dot + 1);
    if (dot < 0 || !parent.includes('.')) continue; // never *.com
    const key = `${s.observation.port} ${s.observation.protocol}\n${parent}`;
    let names = children.get(key);
    if (!names) {
      names = new Set();
      children.set(key, names);
    }
    names.add(s.host);
  }
  const out = new Map<string, Set<string>>();
  for (const [key, names] of children) {
    if (names.size <= WILDCARD_THRESHOLD) continue;
    const [portProtocol = '', parent = ''] = key.split('\n');
    let parents = out.get(portProtocol);
    if (!parents) {
      parents = new Set();
      out.set(portProtocol, parents);
    }
    parents.add(parent);
  }
  return out;
}

/** `*.` + the shortest wildcard parent that `name` lies below, else `name`. */
function coveringWildcard(name: string, parents: Set<string> | undefined): string {
  if (!parents) return name;
  let best: string | undefined;
  for (let dot = name.indexOf('.'); dot >= 0; dot = name.indexOf('.', dot + 1)) {
    const suffix = name.slice(dot + 1);
    if (parents.has(suffix)) best = suffix;
  }
  return best === undefined ? name : `*.${best}`;
}

function noteOf(
  observed: number,
  ruleCount: number,
  skipped: readonly Observation[],
  options: SuggestOptions,
): string | null {
  const notes: string[] = [];
  if (observed === 0) {
    notes.push(
      'nothing was observed: the suggestion refuses everything (isolated mode with dns none, what an allowlist with no rules would be: the API refuses an allowlist without rules); let the computer run in audit mode first, or ask with an earlier since',
    );
  } else if (ruleCount === 0) {
    notes.push(
      'no observation can be a rule: the suggestion refuses everything (isolated mode with dns none, what an allowlist with no rules would be)',
    );
  }
  if (skipped.length > 0) {
    const hosts = [...new Set(skipped.map((o) => `${o.host}:${o.port}/${o.protocol}`))];
    const shown = hosts.slice(0, 3).join(', ') + (hosts.length > 3 ? `, and ${hosts.length - 3} more` : '');
    notes.push(
      `${skipped.length} observation${skipped.length === 1 ? ' is' : 's are'} left out, being no valid rule (${shown}): the suggestion refuses ${skipped.length === 1 ? 'it' : 'them'}`,
    );
  }
  if (options.maxRules !== undefined && ruleCount > options.maxRules) {
    notes.push(
      `${ruleCount} rules are more than this service takes in one policy (${options.maxRules}): the PUT would be refused (too_many_rules); ask with a later since, or merge rules into wildcards or CIDR blocks`,
    );
  }
  return notes.length === 0 ? null : `${notes.join('; ')}.`;
}

function compareText(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

function compareAddress(a: { family: number; bytes: number[] }, b: { family: number; bytes: number[] }) {
  if (a.family !== b.family) return a.family - b.family;
  for (let i = 0; i < a.bytes.length; i++) {
    const d = (a.bytes[i] ?? 0) - (b.bytes[i] ?? 0);
    if (d !== 0) return d;
  }
  return 0;
}

/** Most recently seen first, then by host and port (the store's order). */
function byRecency(a: Observation, b: Observation): number {
  return b.lastSeen - a.lastSeen || compareText(a.host, b.host) || a.port - b.port;
}
