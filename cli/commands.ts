/**
 * The client commands: they talk to the REST API with the typed client.
 * Readable output by default, --json for scripts; errors say what to do and
 * exit non-zero.
 */
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, rmdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import {
  ApiClientError,
  ApiUnreachableError,
  Client,
  type ComputerListItemView,
  type PolicyView,
  type RuleInput,
} from '../api/client.js';
import { findCgroup2Mount } from '../daemon/system.js';
import { EgressdError } from '../policy/errors.js';
import { DNS_MODES, type DnsMode, MODES, type Mode } from '../policy/types.js';
import type { EgressdConfig } from './config.js';
import {
  type Accounts,
  checkConfineTools,
  confinedArgv,
  confinedEnv,
  resolveRunAs,
  systemAccounts,
} from './confine.js';
import { parseCliRule } from './rules.js';

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

/** EGRESSD_API_KEY, else the admin key file of the state directory (readable by root). */
function client(ctx: CommandContext): Client {
  let apiKey = ctx.env['EGRESSD_API_KEY'] ?? ctx.env['EGRESSD_ADMIN_KEY'] ?? '';
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

function describeRule(r: { host: string; port?: number; protocol: string }): string {
  const host = r.host.includes(':') && r.port !== undefined ? `[${r.host}]` : r.host;
  return `${host}${r.port !== undefined ? `:${r.port}` : ''}/${r.protocol}`;
}

/** "enforced", or "cgroup_missing: cgroup /sys/fs/cgroup/... does not exist ...". */
function describeState(e: PolicyView['enforcement']): string {
  return e.reason ? `${e.state}: ${e.reason}` : e.state;
}

function describePolicy(p: PolicyView): string[] {
  const e = p.enforcement;
  return [
    `computer:    ${p.computer_id}`,
    `mode:        ${p.mode}`,
    `dns:         ${p.dns}`,
    `version:     ${p.version} (in force: ${e.enforced_version ?? 'none'})`,
    `state:       ${describeState(e)}`,
    `rules:       ${p.rules.length === 0 ? '(none)' : describeRule(p.rules[0]!)}`,
    ...p.rules.slice(1).map((r) => `             ${describeRule(r)}`),
  ];
}

export async function policyCommand(ctx: CommandContext, args: string[], flags: Record<string, unknown>) {
  const [action, id] = args;
  if (!action || !id || !['get', 'set', 'reset', 'learned'].includes(action)) {
    throw new EgressdError(
      'USAGE',
      'usage: egressd policy get|set|reset|learned ID [--mode MODE] [--rule host[:port][/proto]]... [--dns listed|all|none] [--file policy.json]',
    );
  }
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
  let body: { mode: Mode; rules?: RuleInput[]; dns?: DnsMode; block_dns?: boolean };
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
    };
  }
  const p = await api.networkPolicy.update(id, body);
  print(ctx, p, () => describePolicy(p));
  notInForce(id, p);
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
    if (e['pid'] === null) {
      // The DNS proxy's refusals: the name asked, no process known.
      ctx.out(`${e['at']} ${id} denied DNS ${e['hostname']} (${e['protocol']}, ${e['reason']})`);
      return;
    }
    const where = e['address']
      ? `${e['hostname'] ? `${e['hostname']} ` : ''}${e['address']}:${e['port']}/${e['protocol']}`
      : `socket ${e['protocol']}`;
    ctx.out(`${e['at']} ${id} ${e['comm']}[${e['pid']}] denied ${where} (${e['reason']})`);
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

/**
 * The node `run --create` registers its computer on: --node (or
 * EGRESSD_NODE), else the API's default node (in `egressd all`, its agent's).
 */
export async function createNode(
  flags: Record<string, unknown>,
  env: Record<string, string | undefined>,
  api: Pick<Client, 'service'>,
  apiUrl: string,
): Promise<string> {
  if (typeof flags['node'] === 'string' && flags['node'] !== '') return flags['node'];
  if (env['EGRESSD_NODE']) return env['EGRESSD_NODE'];
  const node = (await api.service()).default_node;
  if (node === null) {
    throw new EgressdError(
      'NODE_REQUIRED',
      `the API at ${apiUrl} has no default node (egressd api without EGRESSD_DEFAULT_NODE): give the node of this host's agent with --node or EGRESSD_NODE`,
    );
  }
  return node;
}

const RUN_USAGE =
  'usage: egressd run --computer ID [--create] [--mode MODE --rule R...] [--user NAME|UID] [--group NAME|GID] ' +
  '[--allow-root-escape] -- CMD [ARGS...]';

/**
 * egressd run --computer ID [--create] [--mode M --rule R...] [--user U] [--group G] -- CMD [ARGS...]
 * Runs CMD in the computer's cgroup and a cgroup namespace rooted there, as
 * the sudo user or nobody (or --user/--group; root only with
 * --allow-root-escape), so that it cannot leave the computer: see confine.ts.
 * With --create, makes a transient cgroup and registers the computer (and
 * its policy, if given), and removes both when CMD exits. CMD never starts
 * before the policy is confirmed enforced. Needs root.
 */
export async function runCommand(
  ctx: CommandContext,
  command: string[],
  flags: Record<string, unknown>,
): Promise<number> {
  const id = flags['computer'];
  if (typeof id !== 'string' || command.length === 0) throw new EgressdError('USAGE', RUN_USAGE);
  // Checked before anything is made: nothing to clean up when they fail.
  const runAs = resolveRunAs(
    {
      user: typeof flags['user'] === 'string' ? flags['user'] : undefined,
      group: typeof flags['group'] === 'string' ? flags['group'] : undefined,
      allowRootEscape: flags['allow-root-escape'] === true,
    },
    ctx.env,
    ctx.accounts ?? systemAccounts,
  );
  if (process.getuid?.() !== 0) {
    throw new EgressdError(
      'NOT_ROOT',
      "egressd run needs root (sudo): it moves CMD into the computer's cgroup and a cgroup namespace " +
        'of its own, then drops to the user CMD runs as',
    );
  }
  checkConfineTools();
  const api = client(ctx);
  const mount = findCgroup2Mount();
  let cgroupDir: string;
  let node: string;
  const create = flags['create'] === true;
  if (create) {
    // Below the first sandbox root, where the agent attaches (and guards).
    const relative = `${ctx.config.cgroupRoots[0]}/run/${id}`;
    // On this host's agent's node: --node, else the API's default node.
    node = await createNode(flags, ctx.env, api, ctx.config.apiUrl);
    cgroupDir = path.join(mount, relative);
    mkdirSync(cgroupDir, { recursive: true });
    await api.computers.put(id, { cgroup: relative, node });
  } else {
    const c = await api.computers.get(id);
    node = c.node;
    cgroupDir = path.join(mount, c.cgroup);
    if (!existsSync(cgroupDir)) {
      throw new EgressdError(
        'CGROUP_MISSING',
        `computer ${id}'s cgroup ${cgroupDir} does not exist on this host`,
      );
    }
  }
  const cleanup = async () => {
    if (!create) return;
    await api.computers.delete(id).catch(() => {});
    try {
      writeFileSync(path.join(cgroupDir, 'cgroup.kill'), '1');
    } catch {}
    for (let i = 0; i < 100 && existsSync(cgroupDir); i++) {
      try {
        rmdirSync(cgroupDir);
      } catch {
        await new Promise((r) => setTimeout(r, 20));
      }
    }
    try {
      rmdirSync(path.dirname(cgroupDir)); // <root>/run/, when no other run uses it
    } catch {}
  };
  try {
    if (typeof flags['mode'] === 'string') {
      const rules = ((flags['rule'] as string[] | undefined) ?? []).map(parseCliRule);
      const p = await api.networkPolicy.update(id, {
        mode: flags['mode'] as Mode,
        ...(rules.length ? { rules } : {}),
      });
      if (p.enforcement.state !== 'enforced') {
        throw new EgressdError(
          'NOT_ENFORCED',
          p.enforcement.state === 'pending'
            ? `${id}: no agent of node ${node} confirmed the policy in time (is one running with --node ${node}?); not running the command`
            : `${id}: the agent of node ${node} did not enforce the policy (${describeState(p.enforcement)}); not running the command`,
        );
      }
    }
    if (runAs.uid === 0) {
      ctx.warn(
        `egressd run: warning: CMD runs as root (--allow-root-escape): it can move itself out of ` +
          `computer ${id}'s cgroup, and so out of its policy, by writing to any cgroup.procs`,
      );
    }
    // One process joins the cgroup, unshares its cgroup namespace and drops to runAs before it
    // execs CMD: CMD never runs outside the cgroup, nor as root unless asked (confine.ts).
    const [file, ...argv] = confinedArgv(path.join(cgroupDir, 'cgroup.procs'), runAs, command);
    const child = spawn(file!, argv, { stdio: 'inherit', env: confinedEnv(ctx.env, runAs) });
    const forward = (signal: NodeJS.Signals) => child.kill(signal);
    process.on('SIGINT', forward);
    process.on('SIGTERM', forward);
    const code: number = await new Promise((resolve) => {
      child.once('error', (err) => {
        ctx.out(`egressd run: ${err.message}`);
        resolve(127);
      });
      child.once('exit', (c, signal) => resolve(c ?? (signal ? 128 + (signalNumber(signal) ?? 0) : 1)));
    });
    process.off('SIGINT', forward);
    process.off('SIGTERM', forward);
    return code;
  } finally {
    await cleanup();
  }
}

function signalNumber(signal: NodeJS.Signals): number | undefined {
  return { SIGHUP: 1, SIGINT: 2, SIGQUIT: 3, SIGKILL: 9, SIGTERM: 15, SIGSEGV: 11, SIGABRT: 6, SIGPIPE: 13 }[
    signal as string
  ];
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
