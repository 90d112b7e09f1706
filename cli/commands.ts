/**
 * The client commands: they talk to the REST API with the typed client.
 * Readable output by default, --json for scripts; errors say what to do and
 * exit non-zero.
 */
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import {
  ApiClientError,
  ApiUnreachableError,
  Client,
  type ComputerListItemView,
  type PolicyView,
  type RuleInput,
  type SuggestionView,
} from '../api/client.js';
import { findCgroup2Mount } from '../daemon/kernel/system.js';
import { EgressdError } from '../policy/errors.js';
import { DNS_MODES, type DnsMode, MODES, type Mode } from '../policy/types.js';
import type { EgressdConfig } from './config.js';
import type { Accounts } from './confine.js';
import { formatCliRule, parseCliRule } from './rules.js';

export interface CommandContext {
  config: EgressdConfig;
  env: Record<string, string | undefined>;
  json: boolean;
  out: (line: string) => void;
  /** Warnings (stderr). */
  warn: (line: string) => void;
  /** The account database `run` resolves --user and --group in. @default systemAccounts */
  accounts?: Accounts;
}

/** EGRESSD_API_KEY (else EGRESSD_ADMIN_KEY), else the admin key file of the state directory (readable by root). */
export function client(ctx: CommandContext): Client {
  let apiKey = ctx.config.apiKey || ctx.config.adminKey;
  const file = path.join(ctx.config.stateDir, 'admin.key');
  if (!apiKey && existsSync(file)) {
    try {
      apiKey = readFileSync(file, 'utf8').trim();
    } catch {}
  }
  if (!apiKey) {
    throw new EgressdError(
      'NO_API_KEY',
      `no API key: set EGRESSD_API_KEY (or run as root on the egressd host, which reads ${file})`,
    );
  }
  return new Client({ baseUrl: ctx.config.apiUrl, apiKey });
}

function print(ctx: CommandContext, data: unknown, human: () => string[]): void {
  if (ctx.json) ctx.out(JSON.stringify(data, null, 2));
  else for (const line of human()) ctx.out(line);
}

/** "enforced", or "cgroup_missing: cgroup /sys/fs/cgroup/... does not exist ...". */
export function describeState(e: PolicyView['enforcement']): string {
  return e.reason ? `${e.state}: ${e.reason}` : e.state;
}

/** What putting the version in force did to the connections it refuses (live revocation). */
function describeRevocation(e: PolicyView['enforcement']): string {
  if (e.revocation === 'on') return `${e.revoked} connection${e.revoked === 1 ? '' : 's'} closed`;
  if (e.revocation === 'unsupported') return 'unsupported by this kernel (Linux 6.5+): open connections stay';
  if (e.revocation === 'off') return 'off (--revocation off): open connections stay';
  return 'failed: see the agent log; open connections may stay';
}

function describePolicy(p: PolicyView): string[] {
  const e = p.enforcement;
  return [
    `computer:    ${p.computer_id}`,
    `mode:        ${p.mode}`,
    `dns:         ${p.dns}`,
    `audit:       ${p.audit ? 'on (refusals are let through and reported)' : 'off'}`,
    `version:     ${p.version} (in force: ${e.enforced_version ?? 'none'})`,
    `state:       ${describeState(e)}`,
    ...(e.revocation === null ? [] : [`revocation:  ${describeRevocation(e)}`]),
    `rules:       ${p.rules.length === 0 ? '(none)' : formatCliRule(p.rules[0]!)}`,
    ...p.rules.slice(1).map((r) => `             ${formatCliRule(r)}`),
  ];
}

const POLICY_USAGE =
  'usage: egressd policy get|set|reset|learned ID [--mode MODE] [--rule host[:port][/proto][,bind_name=false]]... [--dns listed|all|none] [--audit] [--file policy.json]\n' +
  '       egressd policy suggest ID [--since TIME] [--apply]';

/** Flags of `policy set` that `policy suggest` does not take. */
const SET_FLAGS = ['mode', 'rule', 'file', 'dns', 'block-dns', 'audit'];

export async function policyCommand(ctx: CommandContext, args: string[], flags: Record<string, unknown>) {
  const [action, id] = args;
  if (!action || !id || !['get', 'set', 'reset', 'learned', 'suggest'].includes(action)) {
    throw new EgressdError('USAGE', POLICY_USAGE);
  }
  if (action !== 'suggest' && (flags['since'] !== undefined || flags['apply'] !== undefined)) {
    throw new EgressdError('USAGE', `--since and --apply go with policy suggest, not policy ${action}`);
  }
  if (action === 'suggest') return suggestCommand(ctx, id, flags);
  const api = client(ctx);
  if (action === 'get') {
    const p = await api.networkPolicy.get(id);
    return print(ctx, p, () => describePolicy(p));
  }
  if (action === 'learned') {
    const learned = await api.networkPolicy.learned(id);
    return print(ctx, learned, () =>
      learned.length === 0
        ? [`${id}: nothing learned from DNS (or all of it expired)`]
        : learned.map((l) => `${l.name.padEnd(40)} ${l.address.padEnd(39)} until ${l.expires_at}`),
    );
  }
  if (action === 'reset') {
    const p = await api.networkPolicy.delete(id);
    print(ctx, p, () => [`${id}: reset to unrestricted (${describeState(p.enforcement)})`]);
    return notInForce(id, p);
  }
  let body: { mode: Mode; rules?: RuleInput[]; dns?: DnsMode; block_dns?: boolean; audit?: boolean };
  if (typeof flags['file'] === 'string') {
    try {
      body = JSON.parse(readFileSync(flags['file'], 'utf8'));
    } catch (err) {
      throw new EgressdError(
        'BAD_FILE',
        `cannot read the policy in ${flags['file']}: ${(err as Error).message}`,
      );
    }
  } else {
    const mode = flags['mode'];
    if (typeof mode !== 'string' || !(MODES as readonly string[]).includes(mode)) {
      throw new EgressdError('USAGE', `--mode must be one of ${MODES.join(', ')} (or give --file)`);
    }
    const dns = flags['dns'];
    if (dns !== undefined && (typeof dns !== 'string' || !(DNS_MODES as readonly string[]).includes(dns))) {
      throw new EgressdError(
        'USAGE',
        `--dns must be one of ${DNS_MODES.join(', ')} (listed: only names the hostname rules cover; none: no DNS)`,
      );
    }
    const rules = ((flags['rule'] as string[] | undefined) ?? []).map(parseCliRule);
    body = {
      mode: mode as Mode,
      ...(rules.length > 0 ? { rules } : {}),
      ...(dns !== undefined ? { dns: dns as DnsMode } : {}),
      // Before --dns: the same as --dns none (the API says so when both are given and differ).
      ...(flags['block-dns'] === true ? { block_dns: true } : {}),
      // A set replaces the whole policy: without --audit, audit is off.
      audit: flags['audit'] === true,
    };
  }
  const p = await api.networkPolicy.update(id, body);
  print(ctx, p, () => describePolicy(p));
  notInForce(id, p);
}

/**
 * egressd policy suggest ID [--since TIME] [--apply]: the suggested allowlist (what the computer
 * was seen connecting to), one rule a line with how often and when last; --apply PUTs it.
 */
async function suggestCommand(ctx: CommandContext, id: string, flags: Record<string, unknown>) {
  const given = SET_FLAGS.filter((f) => flags[f] !== undefined);
  if (given.length > 0) {
    throw new EgressdError(
      'USAGE',
      `policy suggest takes no ${given.map((f) => `--${f}`).join(', ')}: it suggests the rules; to change them, save its policy (egressd policy suggest ${id} --json, its "policy") and use policy set --file`,
    );
  }
  const since = flags['since'] === undefined ? undefined : sinceArgument(flags['since']);
  const api = client(ctx);
  const s = await api.networkPolicy.suggestion(id, since === undefined ? {} : { since });
  if (flags['apply'] === true) {
    if (s.note !== null) ctx.warn(`egressd: note: ${s.note}`);
    const p = await api.networkPolicy.update(id, s.policy);
    print(ctx, p, () => describePolicy(p));
    return notInForce(id, p);
  }
  print(ctx, s, () => describeSuggestion(id, s));
}

/** --since: an RFC 3339 time, or a time back from now (90s, 30m, 24h, 7d), as an RFC 3339 time. */
export function sinceArgument(value: unknown, now = Date.now()): string {
  const text = typeof value === 'string' ? value.trim() : '';
  const back = /^(\d{1,9})([smhd])$/.exec(text);
  const unit = { s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 };
  const ms = back ? now - Number(back[1]) * unit[back[2] as keyof typeof unit] : Date.parse(text);
  if (text === '' || Number.isNaN(ms)) {
    throw new EgressdError(
      'USAGE',
      `--since must be an RFC 3339 time (for example 2026-01-01T00:00:00Z) or a time back from now (90s, 30m, 24h, 7d), not "${String(value)}"`,
    );
  }
  return new Date(ms).toISOString();
}

export function describeSuggestion(id: string, s: SuggestionView): string[] {
  const from = s.since === null ? '' : ` since ${s.since}`;
  const head = `${id}: suggested ${s.policy.mode} from ${s.observed} observation${s.observed === 1 ? '' : 's'}${from}`;
  const width = Math.max(0, ...s.rules.map((r) => formatCliRule(r.rule).length));
  const lines = s.rules.map(({ rule, observations }) => {
    const count = observations.reduce((n, o) => n + o.count, 0);
    const last = observations[0]?.last_seen ?? 'never'; // most recently seen first
    const names = rule.host.startsWith('*.') ? `${observations.length} names, ` : '';
    return `  ${formatCliRule(rule).padEnd(width)}  ${names}seen ${count} time${count === 1 ? '' : 's'}, last ${last}`;
  });
  const empty =
    s.rules.length === 0
      ? [`  (no rules: ${s.policy.mode}, dns ${s.policy.dns ?? 'default'}; it refuses everything)`]
      : [];
  const apply = `apply it with: egressd policy suggest ${id}${s.since === null ? '' : ` --since ${s.since}`} --apply`;
  return [head, ...lines, ...empty, ...(s.note === null ? [] : [`note: ${s.note}`]), apply];
}

/** Fails (exit 1) when the policy a change stored is not in force, saying why. */
function notInForce(id: string, p: PolicyView): void {
  const e = p.enforcement;
  if (e.state === 'enforced' || e.state === 'dns_ports_exhausted') return;
  throw new EgressdError(
    'NOT_ENFORCED',
    e.state === 'pending'
      ? `${id}: stored as version ${p.version}, but no agent reported on it in time: is the agent of the computer's node running (egressd computers list shows the node)?`
      : `${id}: stored as version ${p.version}, not in force: ${describeState(e)}`,
  );
}

/** egressd events ID [--follow]: the computer's deny events, oldest of the page first; --follow keeps printing. */
export async function eventsCommand(ctx: CommandContext, args: string[], flags: Record<string, unknown>) {
  const [id] = args;
  if (!id) throw new EgressdError('USAGE', 'usage: egressd events ID [--follow] [--json]');
  const api = client(ctx);
  const show = (e: Record<string, unknown>) => {
    if (ctx.json) return ctx.out(JSON.stringify(e));
    // In audit the refusal was let through: "would deny".
    const denied = e['audit'] === true ? 'would deny' : 'denied';
    const where = e['address']
      ? `${e['hostname'] ? `${e['hostname']} ` : ''}${e['address']}:${e['port']}/${e['protocol']}`
      : `socket ${e['protocol']}`;
    if (e['reason'] === 'revoked') return ctx.out(`${e['at']} ${id} closed ${where} (revoked)`);
    if (e['pid'] === null) {
      // The DNS proxy's refusals: the name asked, no process known.
      ctx.out(`${e['at']} ${id} ${denied} DNS ${e['hostname']} (${e['protocol']}, ${e['reason']})`);
      return;
    }
    // name_mismatch: the name the first bytes tried ("" when they named none).
    const why =
      e['reason'] === 'name_mismatch'
        ? `name_mismatch: ${e['name'] ? `named ${e['name']}` : 'no name'}`
        : e['reason'];
    ctx.out(`${e['at']} ${id} ${e['comm']}[${e['pid']}] ${denied} ${where} (${why})`);
  };
  let last = '';
  const page = async () => {
    const events = (
      await api.networkPolicy.events(id, { limit: 1000, ...(last ? { since: last } : {}) })
    ).reverse();
    for (const e of events) {
      if (last && String(e['at']) <= last) continue;
      show(e);
      last = String(e['at']);
    }
  };
  await page();
  if (flags['follow'] !== true) return;
  for (;;) {
    await new Promise((r) => setTimeout(r, 1000));
    await page();
  }
}

export async function computersCommand(ctx: CommandContext, args: string[], flags: Record<string, unknown>) {
  const [action, id] = args;
  const api = client(ctx);
  if (action === 'list') {
    const rows: ComputerListItemView[] = [];
    for await (const c of api.computers.all(
      typeof flags['node'] === 'string' ? { node: flags['node'] } : {},
    )) {
      rows.push(c);
    }
    // Flat rows for scripts: the policy's mode, version and state beside the computer.
    const flat = rows.map(({ policy, ...c }) => ({
      ...c,
      mode: policy.mode,
      version: policy.version,
      enforced_version: policy.enforcement.enforced_version,
      state: policy.enforcement.state,
      reason: policy.enforcement.reason,
    }));
    return print(ctx, flat, () =>
      flat.length === 0
        ? ['no computers']
        : [
            'ID                       NODE         MODE          VERSION  STATE               CGROUP',
            ...flat.flatMap((r) => [
              `${r.id.padEnd(24)} ${r.node.padEnd(12)} ${r.mode.padEnd(13)} ${String(r.version).padEnd(8)} ${r.state.padEnd(19)} ${r.cgroup}`,
              ...(r.reason ? [`  ${r.reason}`] : []),
            ]),
          ],
    );
  }
  if (action === 'add' && id) {
    if (typeof flags['cgroup'] !== 'string')
      throw new EgressdError('USAGE', 'computers add needs --cgroup PATH (relative to the cgroup2 mount)');
    // --dns-upstream is also the agent's flag (a list): here, one resolver for this computer.
    const upstreams = flags['dns-upstream'];
    if (Array.isArray(upstreams) && upstreams.length > 1)
      throw new EgressdError('USAGE', 'computers add takes one --dns-upstream ADDR[:PORT]');
    const upstream = Array.isArray(upstreams) ? upstreams[0] : upstreams;
    const c = await api.computers.put(id, {
      cgroup: cgroupArgument(flags['cgroup']),
      ...(typeof flags['node'] === 'string' ? { node: flags['node'] } : {}),
      ...(typeof flags['tenant'] === 'string' ? { tenant: flags['tenant'] } : {}),
      ...(typeof upstream === 'string' ? { dns_upstream: upstream } : {}),
    });
    print(ctx, c, () => [
      `${c.id}: cgroup ${c.cgroup} on node ${c.node}${c.dns_upstream ? `, DNS to ${c.dns_upstream}` : ''}`,
    ]);
    // The agent reports at once on a computer it can attach; say so when it cannot (the command still
    // succeeded: a computer may be registered before its sandbox runtime makes the cgroup).
    const state = await firstReport(api, id);
    if (state && state.state !== 'enforced') {
      ctx.warn(`egressd: note: ${id} is registered, but not enforced yet: ${describeState(state)}`);
    } else if (!state) {
      ctx.warn(
        `egressd: note: no agent of node ${c.node} reported on ${id} within 2 s: is one running (egressd agent --node ${c.node})?`,
      );
    }
    return;
  }
  if (action === 'remove' && id) {
    await api.computers.delete(id);
    return print(ctx, { id, removed: true }, () => [`${id}: removed (and detached)`]);
  }
  throw new EgressdError(
    'USAGE',
    'usage: egressd computers list [--node N] | add ID --cgroup PATH [--node N] [--tenant T] [--dns-upstream ADDR[:PORT]] | remove ID',
  );
}

/** The agent's first report on a computer's current version, or undefined when none came within `ms`. */
async function firstReport(
  api: Client,
  id: string,
  ms = 2000,
): Promise<PolicyView['enforcement'] | undefined> {
  const deadline = Date.now() + ms;
  for (;;) {
    const e = (await api.networkPolicy.get(id)).enforcement;
    if (e.state !== 'pending') return e;
    if (Date.now() > deadline) return undefined;
    await new Promise((r) => setTimeout(r, 100));
  }
}

/**
 * A --cgroup argument as the API takes it: relative to the cgroup2 mount.
 * An absolute path under this host's cgroup2 mount is made relative here
 * (the API cannot know the mount of the computer's host); one elsewhere in
 * the file system is refused; any other (`/egressd/x`, as /proc/PID/cgroup
 * shows it, or relative) goes as it is.
 */
export function cgroupArgument(text: string, mount: () => string | undefined = localCgroupMount): string {
  if (!text.startsWith('/')) return text;
  const m = mount();
  if (m === undefined) return text;
  const clean = path.posix.normalize(text).replace(/\/+$/, '');
  if (clean === m) {
    throw new EgressdError('USAGE', `--cgroup ${text} is the cgroup2 mount itself: name a cgroup below it`);
  }
  if (clean.startsWith(`${m}/`)) return clean.slice(m.length + 1);
  if (existsSync(clean) && /^\/(sys|proc|dev|run)\//.test(clean)) {
    throw new EgressdError(
      'USAGE',
      `--cgroup ${text} is not under this host's cgroup2 mount (${m}): give a cgroup v2 path, relative to ${m} (for example egressd/sandbox-1)`,
    );
  }
  return text;
}

function localCgroupMount(): string | undefined {
  try {
    return findCgroup2Mount();
  } catch {
    return undefined;
  }
}

/** One line: what failed and what to do. */
export function describeError(err: unknown): string {
  if (err instanceof ApiClientError) return `${err.message} (HTTP ${err.status}, ${err.code})`;
  if (err instanceof ApiUnreachableError) {
    const advice =
      err.code === 'EPERM'
        ? 'the connection was refused locally: this shell may run inside a computer whose policy refuses it; run egressd outside the sandbox'
        : err.code === 'ECONNREFUSED'
          ? 'nothing listens there: is egressd running, and is --api / EGRESSD_API right?'
          : 'is egressd running, and is --api / EGRESSD_API right?';
    return `${err.message}: ${advice}`;
  }
  if (err instanceof Error) return err.message.split('\n')[0] ?? err.message;
  return String(err);
}
