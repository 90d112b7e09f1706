/**
 * The live-revocation tests' sockets (test/helpers/holder.ts, run as a
 * process of its own): echo servers, and processes that hold connections
 * open in a computer's cgroup and try each one on demand.
 */
import type { ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { release } from 'node:os';
import { createInterface } from 'node:readline';
import { gunzipSync } from 'node:zlib';
import { REPO_ROOT, type World } from './world.js';

const HOLDER = `${REPO_ROOT}dist/test/helpers/holder.js`;
/** The port of the world's echo server (TCP and UDP, every world address). */
export const ECHO_PORT = 7000;

/**
 * Whether this kernel can close sockets for egressd (bpf_sock_destroy, Linux
 * 6.5+). The tests assert what it does either way: on an older kernel, that
 * egressd says revocation is unsupported and closes nothing.
 */
const KERNEL_REVOKES = (() => {
  const [major = 0, minor = 0] = release().split('.').map(Number);
  return major > 6 || (major === 6 && minor >= 5);
})();

/** The running kernel's build options (/proc/config.gz, else /boot/config-<release>); '' when neither is there. */
function kernelConfig(): string {
  try {
    return gunzipSync(readFileSync('/proc/config.gz')).toString();
  } catch {
    try {
      return readFileSync(`/boot/config-${release()}`, 'utf8');
    } catch {
      return '';
    }
  }
}

/** Whether netlink SOCK_DESTROY works on this kernel (CONFIG_INET_DIAG_DESTROY). */
export const KERNEL_DESTROYS_BY_NETLINK = /^CONFIG_INET_DIAG_DESTROY=y$/m.test(kernelConfig());

/** How egressd should revoke here (the kfunc first), or undefined: it should say "unsupported". */
export const REVOCATION = KERNEL_REVOKES ? 'kfunc' : KERNEL_DESTROYS_BY_NETLINK ? 'netlink' : undefined;

/** One JSON line at a time from a holder process. */
function lines(child: ChildProcess, timeoutMs = 10_000): () => Promise<Record<string, unknown>> {
  const queue: string[] = [];
  const waiting: ((line: string) => void)[] = [];
  createInterface({ input: child.stdout! }).on('line', (line) => {
    const w = waiting.shift();
    if (w) w(line);
    else queue.push(line);
  });
  return async () => {
    const line =
      queue.shift() ??
      (await new Promise<string>((resolve, reject) => {
        const timer = setTimeout(
          () => reject(new Error(`no line from the holder within ${timeoutMs} ms`)),
          timeoutMs,
        );
        waiting.push((l) => {
          clearTimeout(timer);
          resolve(l);
        });
      }));
    return JSON.parse(line) as Record<string, unknown>;
  };
}

/** Runs the holder with its file-descriptor limit raised to the hard limit (thousands of sockets). */
function holderArgs(...args: string[]): [string, string[]] {
  return ['sh', ['-c', 'ulimit -n "$(ulimit -Hn)" && exec "$0" "$@"', 'node', HOLDER, ...args]];
}

/** Starts an echo server in the world namespace (`netns` true) or the host's; the world stops it. */
export async function echoServer(world: World, netns: boolean, port = ECHO_PORT): Promise<void> {
  const child = world.spawn(...holderArgs('echo', String(port)), {
    netns,
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  const ready = await lines(child)();
  if (ready['ready'] !== true) throw new Error(`echo server: ${JSON.stringify(ready)}`);
}

/**
 * `count` TCP connections to `target` (ADDR:PORT) held by one process of
 * world cgroup `cgroup`, in the world namespace, until the returned stop().
 */
export async function holdMany(
  world: World,
  cgroup: string,
  count: number,
  target: string,
): Promise<{ stop(): Promise<void> }> {
  const child = world.spawn(...holderArgs('many', String(count), target), {
    cgroup,
    stdio: ['pipe', 'pipe', 'inherit'],
  });
  // Connects pace themselves (SYN backlog, ports in TIME_WAIT from an earlier run): 1 ms each at most.
  const ready = await lines(child, 10_000 + count)();
  if (ready['open'] !== count) throw new Error(`holder of ${count} to ${target}: ${JSON.stringify(ready)}`);
  return {
    async stop() {
      const exited = new Promise((resolve) => child.once('exit', resolve));
      child.stdin?.end();
      const timer = setTimeout(() => child.kill('SIGKILL'), 10_000);
      await exited;
      clearTimeout(timer);
    },
  };
}

export interface Holder {
  /** One try on every socket: "ok" or what failed. */
  check(): Promise<string[]>;
}

/**
 * Opens `sockets` (see holder.ts) in a process of `cgroup` (a world cgroup
 * name; undefined: the test's own), in the world namespace or the host's.
 */
export async function holdSockets(
  world: World,
  cgroup: string | undefined,
  netns: boolean,
  ...sockets: string[]
): Promise<Holder> {
  const child = world.spawn('node', [HOLDER, 'hold', ...sockets], {
    netns,
    ...(cgroup === undefined ? {} : { cgroup }),
    stdio: ['pipe', 'pipe', 'inherit'],
  });
  const next = lines(child);
  const ready = await next();
  if (ready['ready'] !== true) throw new Error(`holder ${sockets.join(' ')}: ${JSON.stringify(ready)}`);
  return {
    async check() {
      child.stdin!.write('check\n');
      return (await next())['results'] as string[];
    },
  };
}
