#!/usr/bin/env node
/**
 * The one `egressd` command. The only module that reads process.env: it
 * resolves the configuration once and hands it down.
 */
import cluster from 'node:cluster';
import { parseArgs } from 'node:util';
import { EgressdError } from '../policy/errors.js';
import { isSupervised, tellSupervisor } from './agent-process.js';
import { computersCommand, describeError, eventsCommand, policyCommand } from './commands.js';
import { CONFIG_FLAGS, optionsHelp, resolveEgressdConfig } from './config.js';
import { runCommand } from './run.js';
import type { ServeMode } from './serve.js';
import { storeCommand } from './store-command.js';

const USAGE = `usage: egressd [all|agent|api] [options]      run egressd (default: all, Redis, agent and API on one host)
       egressd policy get|set|reset|learned ID [--mode MODE] [--rule host[:port][/proto][,bind_name=false]]... [--dns listed|all|none] [--audit] [--file F] [--json]
       egressd policy suggest ID [--since TIME] [--apply] [--json]
       egressd computers list [--node N] | add ID --cgroup PATH [--node N] [--tenant T] [--dns-upstream ADDR[:PORT]] | remove ID [--json]
       egressd run --computer ID [--create] [--mode MODE --rule R...] [--user U] [--group G] [--allow-root-escape] -- CMD [ARGS...]
       egressd events ID [--follow] [--json]
       egressd store status | accept [--lost STORE_ID]... [--json]
       --debug: stack traces with errors (client commands print one line otherwise)

run (needs root, and unshare and setpriv from util-linux): CMD runs in the computer's cgroup, in a cgroup
  namespace rooted there, as the user who ran sudo (SUDO_UID, SUDO_GID and that user's groups), else as
  nobody; --user NAME|UID and --group NAME|GID choose. It has no capabilities and no_new_privs, so it cannot
  leave the computer. --user root needs --allow-root-escape and prints a warning: root (CAP_SYS_ADMIN) can
  move itself out of any cgroup, and so out of the computer's policy. CMD's exit status is run's. CMD's
  environment is run's without EGRESSD_API_KEY and EGRESSD_ADMIN_KEY; HOME, USER, LOGNAME are its user's.

policy set --dns: what the DNS proxy resolves for the computer. listed: only names the hostname rules
  cover (the default in allowlist mode with hostname rules; others get NXDOMAIN, never forwarded);
  all: every name (the default in denylist and isolated mode); none: nothing (the default in allowlist
  mode with address rules only). --block-dns, from before --dns, is --dns none.

policy set --rule HOST,bind_name=false: a hostname or wildcard rule that is not name-bound. By default an
  address that a computer may reach only through a hostname rule serves only the names it was learned for
  (the TLS server_name or HTTP Host of a connection's first bytes must be one of them; UDP to its port 443,
  QUIC, is refused unless a rule naming it says /udp); bind_name=false judges it by address alone, for
  addresses known to serve only trusted names. Not for address rules (the API refuses it there).

policy set --audit: audit mode. The policy is judged exactly as in enforcement, but what it would refuse
  is let through and reported (egressd events ID). Without --audit, a set turns audit off (a set replaces
  the whole policy).

store: a Redis that came back empty (or another one) is not followed: each agent keeps what it enforces
  and reports its store lost (store status). PUT every computer and policy again from the control plane,
  then store accept: the agents follow this store (versions start again; computers it lacks are detached).
  --lost: accept only these lost store ids (default: every one the nodes report now).

policy suggest: the suggested allowlist (observe, then enforce): what the computer was seen connecting to,
  one rule a line (host:port/protocol, how often, when last seen): a hostname rule where its DNS named the
  address, an address rule otherwise; more than 3 names below one parent domain on one port and protocol
  become *.parent (never *.com). --since TIME: only what was seen since then (RFC 3339, or back from now:
  30m, 24h, 7d). --apply: PUTs it as policy set does (audit off: it enforces) and waits for the agent;
  nothing observed suggests isolated with --dns none (refuses everything). --json: the API's answer.

${optionsHelp()}`;

/** `egressd agent` started by `egressd all`, or an API worker: its start-up error goes to the parent. */
let supervised = false;
/** --debug: errors with their stack. */
const debug = process.argv.includes('--debug');

async function main(argv: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args: argv,
    allowPositionals: true,
    strict: true,
    options: {
      ...CONFIG_FLAGS,
      json: { type: 'boolean' },
      help: { type: 'boolean', short: 'h' },
      mode: { type: 'string' },
      rule: { type: 'string', multiple: true },
      file: { type: 'string' },
      cgroup: { type: 'string' },
      tenant: { type: 'string' },
      computer: { type: 'string' },
      create: { type: 'boolean' },
      dns: { type: 'string' },
      'block-dns': { type: 'boolean' },
      audit: { type: 'boolean' },
      user: { type: 'string' },
      group: { type: 'string' },
      'allow-root-escape': { type: 'boolean' },
      follow: { type: 'boolean' },
      since: { type: 'string' },
      apply: { type: 'boolean' },
      debug: { type: 'boolean' },
      lost: { type: 'string', multiple: true },
    },
  });
  if (values.help) {
    console.log(USAGE);
    return 0;
  }
  const env = process.env;
  const config = resolveEgressdConfig(values, env);
  const [command = 'all', ...rest] = positionals;
  const ctx = {
    config,
    env,
    json: values.json === true,
    out: (line: string) => console.log(line),
    warn: (line: string) => console.error(line),
  };
  switch (command) {
    case 'all':
    case 'agent':
    case 'api':
      // Loaded only here: the client commands need neither libbpf nor Koa. An agent with an
      // IPC channel was started by `egressd all` (cli/agent-process.ts); an API worker by the
      // API's serving path (cli/api-server.ts).
      supervised = (command === 'agent' && isSupervised()) || (command === 'api' && cluster.isWorker);
      await (await import('./serve.js')).serve(command as ServeMode, config, env, supervised);
      return 0;
    case 'policy':
      await policyCommand(ctx, rest, values);
      return 0;
    case 'computers':
      await computersCommand(ctx, rest, values);
      return 0;
    case 'run':
      return runCommand(ctx, rest, values);
    case 'events':
      await eventsCommand(ctx, rest, values);
      return 0;
    case 'store':
      await storeCommand(ctx, rest, values);
      return 0;
    default:
      throw new EgressdError('USAGE', `unknown command "${command}"\n${USAGE}`);
  }
}

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  async (err: unknown) => {
    // A usage message spans lines; every other error is one line (its stack only with --debug).
    const usage =
      (err instanceof EgressdError && err.code === 'USAGE') ||
      (err instanceof TypeError && /^(Unknown option|Option '.*' argument)/.test(err.message));
    const message = usage && err instanceof Error ? err.message : describeError(err);
    // The agent of `egressd all` (or an API worker) hands its error to the parent, which fails with it
    // (one line, not two).
    const code = err instanceof EgressdError ? err.code : 'AGENT_START_FAILED';
    if (!(supervised && (await tellSupervisor({ type: 'failed', code, message })))) {
      console.error(`egressd: ${message}`);
    }
    if (debug && err instanceof Error && err.stack) console.error(err.stack);
    process.exit(usage ? 2 : 1);
  },
);
