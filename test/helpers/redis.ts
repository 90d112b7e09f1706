/**
 * A real redis-server for tests: no persistence, in a temporary directory,
 * listening on a unix socket in that directory (an address no other process
 * can take while the server is down) or, with `{ tcp: true }`, on
 * 127.0.0.1 at a free port. `stop()` kills it (by its own pid) and
 * `restart()` starts it again at the same address; `freeze()` stops it with
 * SIGSTOP (connections stay open, nothing is answered) until `thaw()`
 * (SIGCONT; call it in a `finally`). `persistence: false`: restart() brings
 * an empty server (nothing survives). With `replicaOf` it is a replica of
 * that (TCP) server, returned once its link to the primary is up. Register
 * `cleanup` with `test.after.always` so it is always ended and its
 * directory removed.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { once } from 'node:events';
import { rmSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { createServer, Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export interface TestRedis {
  /** `unix:///tmp/.../redis.sock` or `redis://127.0.0.1:<port>`. */
  url: string;
  stop(): Promise<void>;
  restart(): Promise<void>;
  /** SIGSTOP: the server keeps its connections and whatever it was sent, and answers nothing. */
  freeze(): void;
  /** SIGCONT: a frozen server runs again (and runs what it was sent meanwhile). */
  thaw(): void;
  cleanup(): Promise<void>;
}

export const REDIS_SERVER = '/usr/bin/redis-server';

/** A TCP port on 127.0.0.1 that was free a moment ago. */
export async function freePort(): Promise<number> {
  const server = createServer();
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const address = server.address();
  const port = typeof address === 'object' && address ? address.port : 0;
  server.close();
  await once(server, 'close');
  return port;
}

export type Address = { path: string } | { port: number };

/** Sends `command` (inline) to the server at the address: the first group of `pattern` in its reply, or undefined if none answers. */
export async function ask(address: Address, command: string, pattern: RegExp): Promise<string | undefined> {
  return new Promise((resolve) => {
    const socket = new Socket();
    let reply = '';
    const done = (value: string | undefined) => {
      socket.destroy();
      resolve(value);
    };
    socket.setTimeout(1000, () => done(undefined));
    socket.once('error', () => done(undefined));
    socket.on('data', (chunk) => {
      reply += chunk.toString();
      const m = pattern.exec(reply);
      if (m) done(m[1]);
    });
    socket.once('connect', () => socket.write(`${command}\r\n`));
    if ('path' in address) socket.connect(address.path);
    else socket.connect(address.port, '127.0.0.1');
  });
}

/** The pid of the server at the address (INFO server), or undefined if none answers. */
async function serverPid(address: Address): Promise<number | undefined> {
  const pid = await ask(address, 'INFO server', /process_id:(\d+)/);
  return pid === undefined ? undefined : Number(pid);
}

export interface TestRedisOptions {
  /** Listen on 127.0.0.1 at a free port instead of a unix socket. */
  tcp?: boolean;
  /**
   * When the append-only file is fsynced: 'always' (no acknowledged write is
   * ever lost, what the tests want) or 'everysec' (Redis's usual production
   * setting, for benchmarks).
   * @default 'always'
   */
  appendfsync?: 'always' | 'everysec';
  /** Start as a replica of this server (started with `tcp: true`); implies `tcp`. */
  replicaOf?: TestRedis;
  /**
   * false: no append-only file, so that restart() brings an empty Redis at the
   * same address (a Redis that came back without its data). @default true
   */
  persistence?: boolean;
  /** More redis-server arguments (e.g. ['--cluster-enabled', 'yes']). */
  args?: string[];
}

export async function startRedis(options: TestRedisOptions = {}): Promise<TestRedis> {
  const dir = await mkdtemp(join(tmpdir(), 'egressd-redis-'));
  const socketPath = join(dir, 'redis.sock');
  const tcp = options.tcp === true || options.replicaOf !== undefined;
  const primaryPort =
    options.replicaOf === undefined
      ? undefined
      : /^redis:\/\/127\.0\.0\.1:(\d+)$/.exec(options.replicaOf.url)?.[1];
  if (options.replicaOf !== undefined && primaryPort === undefined) {
    throw new Error(
      `a replica needs a primary on TCP (startRedis({ tcp: true })), not ${options.replicaOf.url}`,
    );
  }
  const port = tcp ? await freePort() : 0;
  const address = tcp ? { port } : { path: socketPath };
  let child: ChildProcess | undefined;
  // Safety net for a test process that exits without cleanup(): end the server (by its pid) and remove the directory.
  const onExit = () => {
    if (child?.pid !== undefined && child.exitCode === null && child.signalCode === null) {
      try {
        process.kill(child.pid, 'SIGKILL');
      } catch {
        // already gone
      }
    }
    rmSync(dir, { recursive: true, force: true });
  };
  process.on('exit', onExit);

  const start = async () => {
    const listen = tcp
      ? ['--port', String(port), '--bind', '127.0.0.1']
      : ['--port', '0', '--unixsocket', socketPath, '--unixsocketperm', '700'];
    const proc = spawn(
      REDIS_SERVER,
      [
        ...listen,
        '--save',
        '',
        // Data survives stop() (SIGKILL) and restart(), as with a real outage of a persistent Redis
        // (unless persistence is false: then restart() brings an empty one).
        '--appendonly',
        options.persistence === false ? 'no' : 'yes',
        '--appendfsync',
        options.appendfsync ?? 'always',
        '--dir',
        dir,
        '--daemonize',
        'no',
        '--loglevel',
        'warning',
        ...(primaryPort === undefined ? [] : ['--replicaof', '127.0.0.1', primaryPort]),
        ...(options.args ?? []),
      ],
      { stdio: ['ignore', 'ignore', 'pipe'] },
    );
    child = proc;
    let exited = false;
    proc.once('exit', () => {
      exited = true;
    });
    // Bounded: up to 10 s for this redis-server (its own pid) to answer.
    for (let i = 0; i < 200; i++) {
      if (exited) throw new Error(`redis-server (${JSON.stringify(address)}) exited at start`);
      if ((await serverPid(address)) === proc.pid) break;
      await new Promise((r) => setTimeout(r, 50));
    }
    if ((await serverPid(address)) !== proc.pid) {
      throw new Error(`redis-server did not answer at ${JSON.stringify(address)} within 10 s`);
    }
    if (primaryPort === undefined) return;
    // A replica: bounded, up to 10 s for its first sync with the primary.
    for (let i = 0; i < 200; i++) {
      if ((await ask(address, 'INFO replication', /master_link_status:(\w+)/)) === 'up') return;
      await new Promise((r) => setTimeout(r, 50));
    }
    throw new Error(`the replica at ${JSON.stringify(address)} did not sync with its primary within 10 s`);
  };

  const stop = async () => {
    const proc = child;
    child = undefined;
    if (!proc || proc.exitCode !== null || proc.signalCode !== null) return;
    const exited = once(proc, 'exit');
    if (proc.pid !== undefined) process.kill(proc.pid, 'SIGKILL');
    await exited;
  };

  try {
    await start();
  } catch (err) {
    await stop();
    await rm(dir, { recursive: true, force: true });
    process.off('exit', onExit);
    throw err;
  }
  return {
    url: tcp ? `redis://127.0.0.1:${port}` : `unix://${socketPath}`,
    stop,
    restart: async () => {
      await stop();
      await start();
    },
    freeze: () => {
      if (child?.pid === undefined) throw new Error('redis-server is not running');
      process.kill(child.pid, 'SIGSTOP');
    },
    thaw: () => {
      if (child?.pid !== undefined && child.exitCode === null && child.signalCode === null) {
        process.kill(child.pid, 'SIGCONT');
      }
    },
    cleanup: async () => {
      await stop();
      await rm(dir, { recursive: true, force: true });
      process.off('exit', onExit);
    },
  };
}
