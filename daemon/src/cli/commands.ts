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
  Client,
  type ComputerView,
  type PolicyView,
  type RuleInput,
} from '../../../api/src/client.js';
import type { EgressdConfig } from '../config.js';
import { EgressdError } from '../errors.js';
import { DNS_MODES, type DnsMode, MODES, type Mode } from '../policy/types.js';
import { findCgroup2Mount } from '../system.js';
import { parseCliRule } from './rules.js';

export interface CommandContext {
  config: EgressdConfig;
  env: Record<string, string | undefined>;
  json: boolean;
  out: (line: string) => void;
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

function describePolicy(p: PolicyView): string[] {
  const e = p.enforcement;
  return [
    `computer:    ${p.computer_id}`,
    `mode:        ${p.mode}`,
    `dns:         ${p.dns}`,
    `version:     ${p.version} (enforced: ${e.enforced_version ?? 'none'}, ${e.state})`,
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
    return print(ctx, p, () => [`${id}: reset to unrestricted (${p.enforcement.state})`]);
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
  if (p.enforcement.state !== 'enforced') {
    throw new EgressdError(
      'PENDING',
      `${id}: stored as version ${p.version} but the agent has not confirmed it yet`,
    );
  }
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
    const rows: (ComputerView & {
      mode: string;
      version: number;
      enforced_version: number | null;
      state: string;
    })[] = [];
    for await (const c of api.computers.all(
      typeof flags['node'] === 'string' ? { node: flags['node'] } : {},
    )) {
      const p = await api.networkPolicy.get(c.id);
      rows.push({
        ...c,
        mode: p.mode,
        version: p.version,
        enforced_version: p.enforcement.enforced_version,
        state: p.enforcement.state,
      });
    }
    return print(ctx, rows, () =>
      rows.length === 0
        ? ['no computers']
        : [
            'ID                       NODE         MODE          VERSION  ENFORCED  CGROUP',
            ...rows.map(
              (r) =>
                `${r.id.padEnd(24)} ${r.node.padEnd(12)} ${r.mode.padEnd(13)} ${String(r.version).padEnd(8)} ${String(r.enforced_version ?? '-').padEnd(9)} ${r.cgroup}`,
            ),
          ],
    );
  }
  if (action === 'add' && id) {
    if (typeof flags['cgroup'] !== 'string')
      throw new EgressdError('USAGE', 'computers add needs --cgroup PATH (relative to the cgroup2 mount)');
    const c = await api.computers.put(id, {
      cgroup: flags['cgroup'],
      ...(typeof flags['node'] === 'string' ? { node: flags['node'] } : {}),
      ...(typeof flags['tenant'] === 'string' ? { tenant: flags['tenant'] } : {}),
    });
    return print(ctx, c, () => [`${c.id}: cgroup ${c.cgroup} on node ${c.node}`]);
  }
  if (action === 'remove' && id) {
    await api.computers.delete(id);
    return print(ctx, { id, removed: true }, () => [`${id}: removed (and detached)`]);
  }
  throw new EgressdError(
    'USAGE',
    'usage: egressd computers list [--node N] | add ID --cgroup PATH [--node N] [--tenant T] | remove ID',
  );
}

/**
 * egressd run --computer ID [--create] [--mode M --rule R...] -- CMD [ARGS...]
 * Runs CMD in the computer's cgroup. With --create, makes a transient cgroup
 * and registers the computer (and its policy, if given), and removes both
 * when CMD exits. CMD never starts before the policy is confirmed enforced.
 */
export async function runCommand(
  ctx: CommandContext,
  command: string[],
  flags: Record<string, unknown>,
): Promise<number> {
  const id = flags['computer'];
  if (typeof id !== 'string' || command.length === 0) {
    throw new EgressdError(
      'USAGE',
      'usage: egressd run --computer ID [--create] [--mode MODE --rule R...] -- CMD [ARGS...]',
    );
  }
  const api = client(ctx);
  const mount = findCgroup2Mount();
  let cgroupDir: string;
  const create = flags['create'] === true;
  if (create) {
    // Below the first sandbox root, where the agent attaches (and guards).
    const relative = `${ctx.config.cgroupRoots[0]}/run/${id}`;
    cgroupDir = path.join(mount, relative);
    mkdirSync(cgroupDir, { recursive: true });
    await api.computers.put(id, { cgroup: relative, node: ctx.config.node });
  } else {
    const c = await api.computers.get(id);
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
          'PENDING',
          `${id}: the agent did not confirm the policy in time; not running the command`,
        );
      }
    }
    const procs = path.join(cgroupDir, 'cgroup.procs');
    // The child moves itself into the cgroup before exec: CMD never runs outside it.
    const child = spawn('/bin/sh', ['-c', 'echo 0 > "$0" && exec "$@"', procs, ...command], {
      stdio: 'inherit',
    });
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

export function describeError(err: unknown): string {
  if (err instanceof ApiClientError) return `${err.message} (HTTP ${err.status}, ${err.code})`;
  if (err instanceof Error) return err.message;
  return String(err);
}
