/**
 * The dashboard's pure parts (no DOM, no fetch), unit-tested in
 * test/unit/ui-model.test.ts: the list's filter and sort, a rule diff, where
 * an API error belongs in the edit form, the per-second denial counts of the
 * chart, and how times and rules read.
 */
import type { ApiErrorBody, ComputerItem, DenyEvent, DnsMode, Mode, Protocol, Rule } from './api.js';

export const SORT_KEYS = ['id', 'node', 'tenant', 'mode', 'version', 'state', 'denials'] as const;
export type SortKey = (typeof SORT_KEYS)[number];
export interface Sort {
  key: SortKey;
  descending: boolean;
}

/** The text a computer is found by: every column of its row. */
export function searchText(c: ComputerItem): string {
  const e = c.policy.enforcement;
  return [c.id, c.node, c.tenant ?? '', c.policy.mode, c.policy.audit ? 'audit' : '', e.state, e.reason ?? '']
    .join(' ')
    .toLowerCase();
}

/** The computers whose row holds every word of `filter` (case-insensitive). */
export function filterComputers(items: readonly ComputerItem[], filter: string): ComputerItem[] {
  const words = filter.toLowerCase().split(/\s+/).filter(Boolean);
  if (words.length === 0) return [...items];
  return items.filter((c) => {
    const text = searchText(c);
    return words.every((w) => text.includes(w));
  });
}

/** Denials of the last minute as a number to sort by: above the cap when capped, -1 when unknown. */
export function denialsValue(c: ComputerItem): number {
  const d = c.denials_1m;
  return d === undefined ? -1 : d.count + (d.capped ? 1 : 0);
}

function sortValue(c: ComputerItem, key: SortKey): string | number {
  switch (key) {
    case 'id':
      return c.id;
    case 'node':
      return c.node;
    case 'tenant':
      return c.tenant ?? '';
    case 'mode':
      return `${c.policy.mode}${c.policy.audit ? ' audit' : ''}`;
    case 'version':
      return c.policy.version;
    case 'state':
      return c.policy.enforcement.state;
    case 'denials':
      return denialsValue(c);
  }
}

/** A sorted copy; ties keep the id order. */
export function sortComputers(items: readonly ComputerItem[], sort: Sort): ComputerItem[] {
  const sign = sort.descending ? -1 : 1;
  return [...items].sort((a, b) => {
    const x = sortValue(a, sort.key);
    const y = sortValue(b, sort.key);
    const order = typeof x === 'number' && typeof y === 'number' ? x - y : String(x).localeCompare(String(y));
    return order !== 0 ? sign * order : a.id.localeCompare(b.id);
  });
}

/** A rule as one line: `pypi.org:443/tcp`, `10.0.0.0/8 (any port)/any`, `, not name-bound`. */
export function ruleText(r: Rule): string {
  const port = r.port === undefined ? ' (any port)' : `:${r.port}`;
  return `${r.host}${port}/${r.protocol}${r.bind_name === false ? ', not name-bound' : ''}`;
}

const ruleKey = (r: Rule) => JSON.stringify([r.host, r.port ?? null, r.protocol, r.bind_name ?? true]);

export interface RuleDiff {
  /** In the suggestion, not in the policy. */
  added: Rule[];
  /** In the policy, not in the suggestion: applying it drops them. */
  removed: Rule[];
  kept: Rule[];
}

export function diffRules(current: readonly Rule[], next: readonly Rule[]): RuleDiff {
  const now = new Set(current.map(ruleKey));
  const then = new Set(next.map(ruleKey));
  return {
    added: next.filter((r) => !now.has(ruleKey(r))),
    removed: current.filter((r) => !then.has(ruleKey(r))),
    kept: next.filter((r) => now.has(ruleKey(r))),
  };
}

/** The edit form's fields, as typed (a port is text until it is sent). */
export interface RuleRow {
  host: string;
  port: string;
  protocol: Protocol;
  bindName: boolean;
}
export interface PolicyForm {
  mode: Mode;
  /** '' leaves dns out: the API's default for the mode and rules. */
  dns: DnsMode | '';
  audit: boolean;
  rules: RuleRow[];
}

export function formOf(p: { mode: Mode; dns: DnsMode; audit: boolean; rules: readonly Rule[] }): PolicyForm {
  return {
    mode: p.mode,
    dns: p.dns,
    audit: p.audit,
    rules: p.rules.map((r) => ({
      host: r.host,
      port: r.port === undefined ? '' : String(r.port),
      protocol: r.protocol,
      bindName: r.bind_name !== false,
    })),
  };
}

/**
 * The PUT body of a form. A port that is a whole number is sent as one, any
 * other text as it is, so that the API says what is wrong with it (the
 * page does not judge rules: one schema, the API's).
 */
export function bodyOf(form: PolicyForm): Record<string, unknown> {
  const takesRules = form.mode === 'allowlist' || form.mode === 'denylist';
  const rules = takesRules
    ? form.rules.map((r) => {
        const port = r.port.trim();
        const rule: Record<string, unknown> = { host: r.host.trim() };
        if (port !== '') rule['port'] = /^\d{1,9}$/.test(port) ? Number(port) : port;
        rule['protocol'] = r.protocol;
        if (!r.bindName) rule['bind_name'] = false;
        return rule;
      })
    : [];
  return { mode: form.mode, rules, ...(form.dns === '' ? {} : { dns: form.dns }), audit: form.audit };
}

/** The form field an error path names: `rules[2].port` → `rules.2.port`; '' is the form itself. */
export function fieldOf(path: string): string {
  return path.replace(/\[(\d+)\]/g, '.$1').replace(/^\./, '');
}

/**
 * Each field's messages from a 400: the `details` by path, else (codes the
 * API gives without details) the field the code is about, else the form ('').
 */
export function fieldErrors(error: ApiErrorBody): Map<string, string[]> {
  const out = new Map<string, string[]>();
  const add = (field: string, message: string) => out.set(field, [...(out.get(field) ?? []), message]);
  if (error.details && error.details.length > 0) {
    for (const d of error.details) add(fieldOf(d.path), d.message);
    return out;
  }
  const byCode: Record<string, string> = {
    rules_required: 'rules',
    rules_not_allowed: 'rules',
    too_many_rules: 'rules',
    dns_not_allowed: 'dns',
  };
  add(byCode[error.code] ?? '', error.message);
  return out;
}

/** `4m 05s`, `59s`, `2h 03m`; '0s' for the past. */
export function duration(ms: number): string {
  const s = Math.max(0, Math.floor(ms / 1000));
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${String(s % 60).padStart(2, '0')}s`;
  return `${Math.floor(s / 3600)}h ${String(Math.floor((s % 3600) / 60)).padStart(2, '0')}m`;
}

/** Where an event went: `203.0.113.5:443 (api.example.com)`, or the name a DNS refusal asked. */
export function eventTarget(e: DenyEvent): string {
  if (e.address === null) return e.hostname ?? '—';
  const address = e.family === 'ipv6' ? `[${e.address}]` : e.address;
  const where = e.port === null ? address : `${address}:${e.port}`;
  return e.hostname ? `${where} (${e.hostname})` : where;
}

/**
 * Deny events counted per second and reason, for the chart: the last
 * `windowS` seconds, as uPlot's columns (times, then one column per reason).
 */
export class DenialCounts {
  private readonly counts = new Map<number, Map<string, number>>();
  private readonly reasons = new Set<string>();

  constructor(private readonly windowS = 60) {}

  add(e: Pick<DenyEvent, 'at' | 'reason'>): void {
    const second = Math.floor(Date.parse(e.at) / 1000);
    if (!Number.isFinite(second)) return;
    const bucket = this.counts.get(second) ?? new Map<string, number>();
    bucket.set(e.reason, (bucket.get(e.reason) ?? 0) + 1);
    this.counts.set(second, bucket);
    this.reasons.add(e.reason);
  }

  /** The reasons seen, sorted: one series each. */
  reasonList(): string[] {
    return [...this.reasons].sort();
  }

  /** [seconds, count per reason...] for the window ending at `nowMs`; older buckets are dropped. */
  columns(nowMs: number): [number[], ...number[][]] {
    const end = Math.floor(nowMs / 1000);
    const start = end - this.windowS + 1;
    for (const second of this.counts.keys()) if (second < start) this.counts.delete(second);
    const reasons = this.reasonList();
    const xs: number[] = [];
    const ys = reasons.map(() => [] as number[]);
    for (let s = start; s <= end; s++) {
      xs.push(s);
      const bucket = this.counts.get(s);
      for (const [i, r] of reasons.entries()) ys[i]?.push(bucket?.get(r) ?? 0);
    }
    return [xs, ...ys];
  }
}

/** The admin's banner while nodes follow no store (`store_lost` in /readyz); '' when none. */
export function storeLostText(nodes: number): string {
  if (!Number.isInteger(nodes) || nodes <= 0) return '';
  const which = nodes === 1 ? '1 node has' : `${nodes} nodes have`;
  return (
    `${which} lost the store: Redis came back empty or was replaced. They keep enforcing the ` +
    'policies they had and follow no change. PUT every policy again, check "egressd store status", ' +
    'then run "egressd store accept".'
  );
}
