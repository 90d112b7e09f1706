/** The JSON shapes the API answers with (snake_case, as in the seed). */
import type { DnsMode, Mode, Rule } from '../policy/types.js';
import {
  type AgentState,
  type ApiKeyRecord,
  type Computer,
  inForce,
  type Observation,
  type PolicyRecord,
  type PolicyStatus,
  type RecentCount,
} from '../store/store.js';
import type { SuggestedPolicy, SuggestedRule, Suggestion } from './suggestion.js';

/** A policy's enforcement state: what the agent reported of this version, else `pending`. */
export type EnforcementState = AgentState | 'pending';

/** GET /api/v1/service. */
export interface ServiceView {
  /** The node a computer registered without one goes to; null when the service has none. */
  default_node: string | null;
  /** Where this key's computers may live: every sandbox root for the admin, the key's prefix for a tenant key. */
  cgroup_bases: string[];
  tenant: string | null;
}

export interface PolicyView {
  computer_id: string;
  mode: Mode;
  /** What the DNS proxy resolves: listed, all or none. */
  dns: DnsMode;
  /** Deprecated: `dns` is "none" (kept for clients written before `dns`). */
  block_dns: boolean;
  /** Audit: judged as in enforcement, but what it would refuse is let through and reported. */
  audit: boolean;
  rules: Rule[];
  version: number;
  updated_at: string;
  enforcement: EnforcementView;
}

export interface EnforcementView {
  state: EnforcementState;
  /**
   * Why the state is not `enforced`, as the agent said (the cgroup path it
   * looked for, why it refuses the cgroup, why DNS is refused, which
   * version it keeps and which older one it refuses); null when enforced or
   * pending.
   */
  reason: string | null;
  enforced_version: number | null;
  enforced_at: string | null;
  /**
   * What became of the computer's connections that this version no longer
   * allows: `on` (closed, `revoked` of them), `off` (the agent does not
   * revoke), `unsupported` (the kernel cannot), `failed` (see the agent's
   * log); null while pending, or when the agent did not say.
   */
  revocation: 'on' | 'off' | 'unsupported' | 'failed' | null;
  /** How many connections putting this version in force closed; null unless `revocation` is `on`. */
  revoked: number | null;
}

/** The `enforcement` object of a policy (and of a computer in a list). */
export function enforcementView(r: Pick<PolicyRecord, 'version' | 'enforced'>): EnforcementView {
  const state = enforcementState(r);
  return {
    state,
    reason: state !== 'pending' && state !== 'enforced' && r.enforced?.reason ? r.enforced.reason : null,
    // The last version in force: a report of a cgroup missing or forbidden enforces nothing.
    enforced_version: r.enforced && inForce(r.enforced.state) ? r.enforced.version : null,
    enforced_at: r.enforced && inForce(r.enforced.state) ? r.enforced.at : null,
    revocation: state !== 'pending' ? (r.enforced?.revocation?.state ?? null) : null,
    revoked: state !== 'pending' ? (r.enforced?.revocation?.revoked ?? null) : null,
  };
}

export function enforcementState(r: Pick<PolicyRecord, 'version' | 'enforced'>): EnforcementState {
  return r.enforced !== undefined && r.enforced.version >= r.version ? r.enforced.state : 'pending';
}

/** True when this version of the policy is in force in the kernel (the PUT's 200). */
export function isEnforced(r: PolicyRecord): boolean {
  const state = enforcementState(r);
  return state !== 'pending' && inForce(state);
}

export function policyView(r: PolicyRecord): PolicyView {
  return viewOf(r, r.rules);
}

function viewOf<R>(r: PolicyRecord, rules: R) {
  return {
    computer_id: r.computerId,
    mode: r.mode,
    dns: r.dns,
    block_dns: r.dns === 'none',
    audit: r.audit,
    rules,
    version: r.version,
    updated_at: r.updatedAt,
    enforcement: enforcementView(r),
  };
}

/**
 * `{"data": <policy view>}` as JSON text, with the stored rules JSON spliced
 * in as it is (no parse and re-serialise of a large rule list).
 */
export function policyReplyJson(r: PolicyRecord): string {
  const text = JSON.stringify({ data: viewOf(r, RULES_MARK) });
  // `"rules":"<mark>"` cannot occur earlier: computer_id, mode, dns, block_dns and audit hold no double quote.
  return text.replace(`"rules":"${RULES_MARK}"`, () => `"rules":${r.rulesJson}`);
}
const RULES_MARK = 'RULES';

export interface ComputerView {
  id: string;
  cgroup: string;
  node: string;
  tenant: string | null;
  /** The resolver the DNS proxy forwards the computer's queries to; null: the agent's default. */
  dns_upstream: string | null;
  created_at: string;
  updated_at: string;
}

export function computerView(c: Computer): ComputerView {
  return {
    id: c.id,
    cgroup: c.cgroup,
    node: c.node,
    tenant: c.tenant,
    dns_upstream: c.dnsUpstream,
    created_at: c.createdAt,
    updated_at: c.updatedAt,
  };
}

/**
 * A computer in a list: with its policy's mode, audit and version, the
 * agent's report on it, and (only when asked, `?include=denials_1m`) its
 * deny events of the last minute.
 */
export interface ComputerListItemView extends ComputerView {
  policy: { mode: Mode; block_dns: boolean; audit: boolean; version: number; enforcement: EnforcementView };
  denials_1m?: RecentCount;
}

export function computerListItemView(
  c: Computer,
  status: PolicyStatus,
  denials?: RecentCount,
): ComputerListItemView {
  return {
    ...computerView(c),
    policy: {
      mode: status.mode,
      block_dns: status.dns === 'none',
      audit: status.audit,
      version: status.version,
      enforcement: enforcementView(status),
    },
    ...(denials === undefined ? {} : { denials_1m: { count: denials.count, capped: denials.capped } }),
  };
}

export interface ApiKeyView {
  id: string;
  tenant: string;
  cgroup_prefix: string;
  name: string | null;
  created_at: string;
}

export function apiKeyView(k: ApiKeyRecord): ApiKeyView {
  return { id: k.id, tenant: k.tenant, cgroup_prefix: k.cgroupPrefix, name: k.name, created_at: k.createdAt };
}

/** An observation as answered: what the computer connected to, how often, when. */
export interface ObservationView {
  host: string;
  port: number;
  protocol: 'tcp' | 'udp';
  count: number;
  first_seen: string;
  last_seen: string;
}

export function observationView(o: Observation): ObservationView {
  return {
    host: o.host,
    port: o.port,
    protocol: o.protocol,
    count: o.count,
    first_seen: new Date(o.firstSeen).toISOString(),
    last_seen: new Date(o.lastSeen).toISOString(),
  };
}

/** GET /computers/{id}/network-policy/suggestion. */
export interface SuggestionView {
  /** A body to PUT to /network-policy as it is. */
  policy: SuggestedPolicy;
  /** Each rule of `policy`, in its order, with the observations behind it. */
  rules: Array<{ rule: SuggestedRule; observations: ObservationView[] }>;
  wildcard_threshold: number;
  /** The `since` asked for (RFC 3339), null for all. */
  since: string | null;
  /** How many observations it was built from. */
  observed: number;
  /** Observations that no rule can hold: the policy refuses them. */
  skipped: ObservationView[];
  note: string | null;
}

export function suggestionView(
  s: Suggestion,
  meta: { wildcardThreshold: number; since: number | undefined; observed: number },
): SuggestionView {
  return {
    policy: s.policy,
    rules: s.rules.map((r) => ({ rule: r.rule, observations: r.observations.map(observationView) })),
    wildcard_threshold: meta.wildcardThreshold,
    since: meta.since === undefined ? null : new Date(meta.since).toISOString(),
    observed: meta.observed,
    skipped: s.skipped.map(observationView),
    note: s.note,
  };
}
