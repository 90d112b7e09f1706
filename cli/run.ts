/**
 * `egressd run`: a command confined to a computer (see confine.ts for how it
 * cannot leave it), on a computer that exists or one made for the run.
 */
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, rmdirSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { Client } from '../api/client.js';
import { findCgroup2Mount } from '../daemon/kernel/system.js';
import { EgressdError } from '../policy/errors.js';
import type { Mode } from '../policy/types.js';
import { type CommandContext, client, describeState } from './commands.js';
import { checkConfineTools, confinedArgv, confinedEnv, resolveRunAs, systemAccounts } from './confine.js';
import { parseCliRule } from './rules.js';

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
      // A shell's convention: killed by signal N, status 128 + N.
      child.once('exit', (c, signal) => resolve(c ?? (signal ? 128 + os.constants.signals[signal] : 1)));
    });
    process.off('SIGINT', forward);
    process.off('SIGTERM', forward);
    return code;
  } finally {
    await cleanup();
  }
}
