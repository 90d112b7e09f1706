/**
 * The embedded default store: a private redis-server (Debian's package) on a
 * unix socket under the state directory, with append-only persistence, so
 * policies survive restarts of egressd and of the host. Supervised: if it
 * dies it is started again with backoff, while the agent keeps enforcing
 * what is pinned.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { createConnection } from 'node:net';
import path from 'node:path';
import type { Logger } from 'pino';
import { EgressdError } from '../policy/errors.js';

const REDIS_SERVER = '/usr/bin/redis-server';
const START_TIMEOUT_MS = 10_000;

export class EmbeddedRedis {
  private child: ChildProcess | undefined;
  private stopping = false;
  private restarts = 0;

  private constructor(
    private readonly dir: string,
    private readonly log: Logger,
  ) {}

  get socketPath(): string {
    return path.join(this.dir, 'redis.sock');
  }

  get url(): string {
    return `unix://${this.socketPath}`;
  }

  static async start(stateDir: string, log: Logger): Promise<EmbeddedRedis> {
    if (!existsSync(REDIS_SERVER)) {
      throw new EgressdError(
        'NO_REDIS_SERVER',
        `${REDIS_SERVER} is missing: install Debian's redis-server (scripts/setup.sh does), or point egressd at a Redis with --redis / REDIS_URL`,
      );
    }
    const dir = path.join(stateDir, 'redis');
    mkdirSync(dir, { recursive: true, mode: 0o700 });
    const redis = new EmbeddedRedis(dir, log.child({ component: 'redis' }));
    await redis.spawn();
    return redis;
  }

  private writeConfig(): string {
    const file = path.join(this.dir, 'redis.conf');
    writeFileSync(
      file,
      [
        '# Written by egressd at every start; edits are overwritten.',
        'port 0',
        `unixsocket ${this.socketPath}`,
        'unixsocketperm 600',
        `dir ${this.dir}`,
        'appendonly yes',
        'appendfsync everysec',
        'save ""',
        'daemonize no',
        'loglevel warning',
        'logfile ""',
        '',
      ].join('\n'),
      { mode: 0o600 },
    );
    return file;
  }

  private async spawn(): Promise<void> {
    const child = spawn(REDIS_SERVER, [this.writeConfig()], { stdio: ['ignore', 'pipe', 'pipe'] });
    this.child = child;
    const lines = (chunk: Buffer) => {
      for (const line of chunk.toString().split('\n'))
        if (line.trim()) this.log.info({ redis: line.trim() }, 'redis-server');
    };
    child.stdout?.on('data', lines);
    child.stderr?.on('data', lines);
    child.once('exit', (code, signal) => {
      if (this.stopping || this.child !== child) return;
      const delay = Math.min(100 * 2 ** this.restarts, 5000);
      this.restarts++;
      this.log.error(
        { code, signal, restartInMs: delay },
        'redis-server exited; restarting (enforcement continues)',
      );
      setTimeout(() => {
        if (!this.stopping)
          this.spawn().catch((err) => this.log.error({ err }, 'redis-server restart failed'));
      }, delay);
    });
    const deadline = Date.now() + START_TIMEOUT_MS;
    while (!(await this.answers())) {
      if (child.exitCode !== null || child.signalCode !== null) {
        throw new EgressdError(
          'REDIS_START_FAILED',
          `redis-server exited at start (code ${child.exitCode}); see the log above`,
        );
      }
      if (Date.now() > deadline)
        throw new EgressdError('REDIS_START_FAILED', `redis-server did not open ${this.socketPath} in time`);
      await new Promise((r) => setTimeout(r, 50));
    }
    this.restarts = 0;
    this.log.info({ socket: this.socketPath, pid: child.pid }, 'embedded redis-server ready');
  }

  private answers(): Promise<boolean> {
    return new Promise((resolve) => {
      const socket = createConnection(this.socketPath);
      socket.once('connect', () => socket.write('PING\r\n'));
      socket.once('data', (d) => {
        socket.destroy();
        resolve(d.toString().startsWith('+PONG'));
      });
      socket.once('error', () => resolve(false));
    });
  }

  /**
   * egressd is stopping: an exit from now on is expected (a terminal's Ctrl-C
   * reaches redis-server too), neither restarted nor logged as an error.
   */
  expectExit(): void {
    this.stopping = true;
  }

  /** Stops redis-server (it writes its append-only file on SIGTERM). */
  async stop(): Promise<void> {
    this.stopping = true;
    const child = this.child;
    if (!child || child.exitCode !== null || child.signalCode !== null) return;
    const exited = new Promise((r) => child.once('exit', r));
    child.kill('SIGTERM');
    const timer = setTimeout(() => child.kill('SIGKILL'), 10_000);
    await exited;
    clearTimeout(timer);
  }
}
