#!/usr/bin/env node
/**
 * The one `egressd` command. The only module that reads process.env: it
 * resolves the configuration once and hands it down.
 */
import { parseArgs } from 'node:util';
import { EgressdError } from '../policy/errors.js';
import { isSupervised, tellSupervisor } from './agent-process.js';
import { computersCommand, describeError, eventsCommand, policyCommand } from './commands.js';
import { CONFIG_FLAGS, resolveEgressdConfig } from './config.js';
import { runCommand } from './run.js';
import type { ServeMode } from './serve.js';

const USAGE = `usage: egressd [all|agent|api] [options]      run egressd (default: all, Redis, agent and API on one host)
       egressd policy get|set|reset|learned ID [--mode MODE] [--rule host[:port][/proto]]... [--dns listed|all|none] [--file F] [--json]
       egressd computers list [--node N] | add ID --cgroup PATH [--node N] [--tenant T] [--dns-upstream ADDR[:PORT]] | remove ID [--json]
       egressd run --computer ID [--create] [--mode MODE --rule R...] [--user U] [--group G] [--allow-root-escape] -- CMD [ARGS...]
       egressd events ID [--follow] [--json]
       --debug: stack traces with errors (client commands print one line otherwise)

run (needs root, and unshare and setpriv from util-linux): CMD runs in the computer's cgroup, in a cgroup
  namespace rooted there, as the user who ran sudo (SUDO_UID, SUDO_GID and that user's groups), else as
  nobody; --user NAME|UID and --group NAME|GID choose. It has no capabilities and no_new_privs, so it cannot
  leave the computer. --user root needs --allow-root-escape and prints a warning: root (CAP_SYS_ADMIN) can
  move itself out of any cgroup, and so out of the computer's policy. CMD's exit status is run's. CMD's
  environment is run's without EGRESSD_API_KEY and EGRESSD_ADMIN_KEY; HOME, USER, LOGNAME are its user's.

options (flag, environment variable, default):
  --listen        EGRESSD_LISTEN          127.0.0.1:8080
  --redis         REDIS_URL               (empty: a private redis-server under the state directory)
  --state-dir     EGRESSD_STATE_DIR       /var/lib/egressd
  --bpffs-dir     EGRESSD_BPFFS_DIR       /sys/fs/bpf/egressd
  --node          EGRESSD_NODE            the host name
  --internal-cidr EGRESSD_INTERNAL_CIDRS  none (repeat the flag; comma-separated in the variable)
  --log-level     EGRESSD_LOG_LEVEL       info
  --log-format    EGRESSD_LOG_FORMAT      auto (pretty: readable lines, local times; json: one JSON object a line; auto: pretty on a terminal)
  --api           EGRESSD_API             http://127.0.0.1:8080 (client commands)
  --dns-upstream  EGRESSD_DNS_UPSTREAM    first nameserver of /etc/resolv.conf (host[:port], repeatable)
  --dns-proxy-address EGRESSD_DNS_PROXY_ADDRESSES  none (this host's address that sandboxes with their own netns reach)
  --dns-ports     EGRESSD_DNS_PORTS       42000-51999 (per-computer proxy ports)
  --dns-ttl-min   EGRESSD_DNS_TTL_MIN     5 (seconds; learned addresses live for the clamped TTL)
  --dns-ttl-max   EGRESSD_DNS_TTL_MAX     3600
  --metrics-listen EGRESSD_METRICS_LISTEN 127.0.0.1:9464 (egressd agent, no key: keep it private; in all, the API's /metrics, admin key)

policy set --dns: what the DNS proxy resolves for the computer. listed: only names the hostname rules
  cover (the default in allowlist mode with hostname rules; others get NXDOMAIN, never forwarded);
  all: every name (the default in denylist and isolated mode); none: nothing (the default in allowlist
  mode with address rules only). --block-dns, from before --dns, is --dns none.
  EGRESSD_ADMIN_KEY: the admin bearer key (default: generated into <state-dir>/admin.key)
  EGRESSD_API_KEY:   the key client commands use (default: <state-dir>/admin.key)`;

/** `egressd agent` started by `egressd all`: its start-up error goes to the parent. */
let supervisedAgent = false;
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
      user: { type: 'string' },
      group: { type: 'string' },
      'allow-root-escape': { type: 'boolean' },
      follow: { type: 'boolean' },
      debug: { type: 'boolean' },
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
      // IPC channel was started by `egressd all` (cli/agent-process.ts).
      supervisedAgent = command === 'agent' && isSupervised();
      await (await import('./serve.js')).serve(command as ServeMode, config, env, supervisedAgent);
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
    // The agent of `egressd all` hands its error to the parent, which fails with it (one line, not two).
    const code = err instanceof EgressdError ? err.code : 'AGENT_START_FAILED';
    if (!(supervisedAgent && (await tellSupervisor({ type: 'failed', code, message })))) {
      console.error(`egressd: ${message}`);
    }
    if (debug && err instanceof Error && err.stack) console.error(err.stack);
    process.exit(usage ? 2 : 1);
  },
);
