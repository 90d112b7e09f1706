/**
 * `egressd all` runs its agent in a child process, `egressd agent` with an
 * IPC channel to the parent, so that API load never delays enforcement: the
 * agent has an event loop, and CPU scheduling, of its own.
 *
 * The parent (AgentProcess) starts the child with the same configuration,
 * handed over as environment variables with REDIS_URL set to the store the
 * parent uses (the embedded Redis), and NOTIFY_SOCKET and the keys left out;
 * the child's stdout and stderr are the parent's own, so its log lines never
 * pass through the API's event loop. The parent waits until the child has
 * done its first resync; if the child dies later it is started again with
 * backoff (the pins enforce meanwhile); stop() ends it with SIGTERM. The
 * child serves its metrics on an ephemeral loopback port, which the API's
 * /metrics appends (metricsText()).
 *
 * Messages, child → parent:
 *   { type: 'ready', metrics: 'http://127.0.0.1:PORT/metrics' }  after the first resync
 *   { type: 'failed', code, message }                           it could not start; it exits next
 * The child stops when the channel closes, so it never outlives its parent
 * (not even one killed with SIGKILL); it ignores SIGINT, which a terminal's
 * Ctrl-C sends to both: the parent stops it in order.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import type { Logger } from 'pino';
import { EgressdError } from '../policy/errors.js';
import { configEnvironment, type EgressdConfig } from './config.js';

export type AgentMessage =
  | { type: 'ready'; metrics: string }
  | { type: 'failed'; code: string; message: string };

const CLI = fileURLToPath(new URL('./main.js', import.meta.url));
const STOP_TIMEOUT_MS = 10_000;
const METRICS_TIMEOUT_MS = 2000;
/** Variables the agent must not inherit: systemd would take its notifications for the unit's, and it needs no key. */
const WITHHELD = ['NOTIFY_SOCKET', 'EGRESSD_ADMIN_KEY', 'EGRESSD_API_KEY'];

export interface AgentProcessOptions {
  config: EgressdConfig;
  /** The Redis the agent follows (the embedded one's unix:// URL, or the configured one). */
  redisUrl: string;
  /** egressd's environment; the child inherits it, the configuration set over it. */
  env: Record<string, string | undefined>;
  log: Logger;
}

export class AgentProcess {
  private child: ChildProcess | undefined;
  private metricsUrl: string | undefined;
  private restarts = 0;
  private restartTimer: NodeJS.Timeout | undefined;
  private stopping = false;
  private readonly log: Logger;

  private constructor(private readonly opts: AgentProcessOptions) {
    this.log = opts.log.child({ component: 'agent-process' });
  }

  /** Starts the agent process; resolves after its first resync, rejects with its own error if it cannot start. */
  static async start(opts: AgentProcessOptions): Promise<AgentProcess> {
    const agent = new AgentProcess(opts);
    await agent.spawn();
    return agent;
  }

  private childEnv(): NodeJS.ProcessEnv {
    const env: NodeJS.ProcessEnv = { ...this.opts.env };
    for (const name of WITHHELD) delete env[name];
    return { ...env, ...configEnvironment({ ...this.opts.config, redisUrl: this.opts.redisUrl }) };
  }

  private spawn(): Promise<void> {
    // egressd's own Node options (--max-old-space-size, --cpu-prof, ...) apply to it too, as with fork().
    const child = spawn(process.execPath, [...process.execArgv, CLI, 'agent'], {
      env: this.childEnv(),
      stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
    });
    this.child = child;
    return new Promise<void>((resolve, reject) => {
      let ready = false;
      let failure: { code: string; message: string } | undefined;
      child.on('message', (m: AgentMessage) => {
        if (m.type === 'failed') failure = m;
        if (m.type !== 'ready' || ready) return;
        ready = true;
        this.metricsUrl = m.metrics;
        this.restarts = 0;
        this.log.info({ pid: child.pid }, 'agent process ready');
        resolve();
      });
      // A spawn failure (no node binary) ends in 'exit' too, or in 'error' alone.
      child.once('error', (err) => {
        if (!ready)
          reject(new EgressdError('AGENT_START_FAILED', `cannot start the agent process: ${err.message}`));
      });
      child.once('exit', (code, signal) => {
        if (this.child === child) this.metricsUrl = undefined;
        if (!ready) {
          reject(
            new EgressdError(
              failure?.code ?? 'AGENT_START_FAILED',
              failure?.message ??
                `the agent process exited (${signal ?? `code ${code}`}) before its first resync; see its log above`,
            ),
          );
          return;
        }
        if (this.stopping || this.child !== child) return;
        this.restartLater(
          { code, signal },
          'agent process exited; restarting it (pinned policies keep enforcing)',
        );
      });
    });
  }

  private restartLater(detail: object, msg: string): void {
    const delay = Math.min(100 * 2 ** this.restarts, 5000);
    this.restarts++;
    this.log.error({ ...detail, restartInMs: delay }, msg);
    this.restartTimer = setTimeout(() => {
      if (this.stopping) return;
      this.spawn().catch((err: Error) => {
        if (!this.stopping) this.restartLater({ err: err.message }, 'agent process did not start again');
      });
    }, delay);
  }

  /** The agent's Prometheus text, '' while it is not running or does not answer in 2 s. */
  async metricsText(): Promise<string> {
    const url = this.metricsUrl;
    if (!url) return '';
    try {
      const r = await fetch(url, { signal: AbortSignal.timeout(METRICS_TIMEOUT_MS) });
      if (r.ok) return await r.text();
      this.log.warn({ status: r.status }, 'agent metrics not available');
    } catch (err) {
      this.log.warn({ err: (err as Error).message }, 'agent metrics not available');
    }
    return '';
  }

  /** Ends the agent process (SIGTERM, SIGKILL after 10 s) and does not start it again. */
  async stop(): Promise<void> {
    this.stopping = true;
    clearTimeout(this.restartTimer);
    const child = this.child;
    if (!child || child.exitCode !== null || child.signalCode !== null) return;
    const exited = new Promise((r) => child.once('exit', r));
    child.kill('SIGTERM');
    const timer = setTimeout(() => child.kill('SIGKILL'), STOP_TIMEOUT_MS);
    await exited;
    clearTimeout(timer);
  }
}

/**
 * The child's side: sends a message to `egressd all` when this process has
 * an IPC channel to it. Resolves false when there is none (or it is closed).
 */
export function tellSupervisor(message: AgentMessage): Promise<boolean> {
  const send = process.send?.bind(process);
  if (!send || !process.connected) return Promise.resolve(false);
  return new Promise((resolve) => {
    send(message, undefined, {}, (err: Error | null) => resolve(err === null));
  });
}

/** Whether this process was started by `egressd all` as its agent (it has an IPC channel). */
export function isSupervised(): boolean {
  return typeof process.send === 'function';
}

/**
 * Resolves when the supervised agent (or API worker, api-server.ts) should
 * stop: SIGTERM (from the parent, or anyone), or the channel to the parent
 * closed. SIGINT is ignored: the parent stops it in order.
 */
export function supervisorStop(
  log: Logger,
  message = 'agent process stopping: pinned programs stay attached and keep enforcing',
): Promise<void> {
  return new Promise<void>((resolve) => {
    const stop = (why: string) => {
      log.info({ why }, message);
      resolve();
    };
    process.on('SIGINT', () => {});
    process.once('SIGTERM', () => stop('SIGTERM'));
    process.once('disconnect', () => stop('its parent process ended'));
    if (!process.connected) stop('its parent process ended');
  });
}
