/**
 * Real Redis Sentinels for tests: `startSentinels(primary)` starts `count`
 * (3) `redis-server <conf> --sentinel` processes on 127.0.0.1, each with a
 * configuration file of its own in a temporary directory (Sentinels rewrite
 * it), monitoring `primary` as the master group `name` (quorum 2, down after
 * 1 s, failover timeout 5 s). It returns once each Sentinel knows the
 * others and the replicas (so a failover can be agreed on and has a replica
 * to promote). `url` is egressd's redis+sentinel:// form for them.
 * `cleanup()` (register it with `test.after.always`) ends the Sentinels it
 * started, by their pids, and removes the directory.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { once } from 'node:events';
import { rmSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ask, freePort, REDIS_SERVER, type TestRedis } from './redis.js';

export interface TestSentinels {
  /** redis+sentinel://127.0.0.1:P1,127.0.0.1:P2,127.0.0.1:P3/<name> */
  url: string;
  ports: number[];
  /** The port of the primary the first Sentinel that answers names (SENTINEL get-master-addr-by-name). */
  primaryPort(): Promise<number | undefined>;
  cleanup(): Promise<void>;
}

export interface TestSentinelOptions {
  /** @default 3 */
  count?: number;
  /** @default 'egressd' */
  name?: string;
  /** Replicas each Sentinel must have found before startSentinels returns. @default 1 */
  replicas?: number;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

export async function startSentinels(
  primary: TestRedis,
  options: TestSentinelOptions = {},
): Promise<TestSentinels> {
  const { count = 3, name = 'egressd', replicas = 1 } = options;
  const primaryPort = /^redis:\/\/127\.0\.0\.1:(\d+)$/.exec(primary.url)?.[1];
  if (primaryPort === undefined) throw new Error(`Sentinels need a primary on TCP, not ${primary.url}`);
  const dir = await mkdtemp(join(tmpdir(), 'egressd-sentinel-'));
  const children: ChildProcess[] = [];
  const kill = () => {
    for (const c of children) {
      if (c.pid !== undefined && c.exitCode === null && c.signalCode === null) {
        try {
          process.kill(c.pid, 'SIGKILL');
        } catch {
          // already gone
        }
      }
    }
  };
  // Safety net for a test process that exits without cleanup().
  const onExit = () => {
    kill();
    rmSync(dir, { recursive: true, force: true });
  };
  process.on('exit', onExit);
  const cleanup = async () => {
    const exits = children
      .filter((c) => c.exitCode === null && c.signalCode === null)
      .map((c) => once(c, 'exit'));
    kill();
    await Promise.all(exits);
    await rm(dir, { recursive: true, force: true });
    process.off('exit', onExit);
  };

  const ports: number[] = [];
  try {
    for (let i = 0; i < count; i++) {
      const port = await freePort();
      const conf = join(dir, `sentinel-${port}.conf`);
      await writeFile(
        conf,
        `port ${port}\nbind 127.0.0.1\ndir ${dir}\n` +
          `sentinel monitor ${name} 127.0.0.1 ${primaryPort} 2\n` +
          `sentinel down-after-milliseconds ${name} 1000\n` +
          `sentinel failover-timeout ${name} 5000\n`,
      );
      const child = spawn(REDIS_SERVER, [conf, '--sentinel', '--loglevel', 'warning'], {
        stdio: ['ignore', 'ignore', 'ignore'],
      });
      children.push(child);
      ports.push(port);
    }
    // Bounded: up to 20 s for every Sentinel to know the other Sentinels and the replicas.
    const field = (f: string) => new RegExp(`${f}\\r\\n\\$\\d+\\r\\n(\\d+)\\r\\n`);
    for (const port of ports) {
      for (let i = 0; ; i++) {
        const others = await ask({ port }, `SENTINEL MASTER ${name}`, field('num-other-sentinels'));
        const found = await ask({ port }, `SENTINEL MASTER ${name}`, field('num-slaves'));
        if (Number(others) >= count - 1 && Number(found) >= replicas) break;
        if (i >= 200) {
          throw new Error(
            `Sentinel ${port} knows ${others ?? 'no'} other Sentinels and ${found ?? 'no'} replicas after 20 s`,
          );
        }
        await sleep(100);
      }
    }
  } catch (err) {
    await cleanup();
    throw err;
  }
  return {
    url: `redis+sentinel://${ports.map((p) => `127.0.0.1:${p}`).join(',')}/${name}`,
    ports,
    primaryPort: async () => {
      for (const port of ports) {
        const p = await ask({ port }, `SENTINEL GET-MASTER-ADDR-BY-NAME ${name}`, /\$\d+\r\n(\d+)\r\n$/);
        if (p !== undefined) return Number(p);
      }
      return undefined;
    },
    cleanup,
  };
}
