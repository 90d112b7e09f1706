/**
 * A real upstream DNS server for tests: Debian's dnsmasq on 127.0.0.1 (UDP
 * and TCP) serving the records given, nothing else (no upstream of its own,
 * no /etc/hosts). Ended by its own PID in stop(). With `netns` (a
 * /run/netns/ path) it runs in that network namespace, on its 127.0.0.1.
 * With `logQueries`, every query it receives is in queries() (dnsmasq's
 * log-queries, on its stderr).
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { createSocket } from 'node:dgram';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';

export interface Dnsmasq {
  host: string;
  port: number;
  /** With `logQueries`: every query received so far, as "TYPE name" (e.g. "A allowed.test", "type=65 x.test"). */
  queries(): string[];
  stop(): Promise<void>;
}

export interface DnsmasqOptions {
  /** Log every query (dnsmasq's log-queries) for queries(). @default false */
  logQueries?: boolean;
  /** A /run/netns/ path: run in that network namespace, on its 127.0.0.1. */
  netns?: string;
}

async function freeUdpPort(): Promise<number> {
  const s = createSocket('udp4');
  await new Promise<void>((r) => s.bind(0, '127.0.0.1', r));
  const port = s.address().port;
  s.close();
  return port;
}

/**
 * `lines` are dnsmasq options such as "host-record=a.test,192.0.2.1,300" or "cname=b.test,a.test".
 * The port is free for UDP when chosen; another process may hold it for TCP, or take it before
 * dnsmasq binds: then another port, a few times.
 */
export async function startDnsmasq(lines: string[], options: DnsmasqOptions = {}): Promise<Dnsmasq> {
  for (let attempt = 1; ; attempt++) {
    try {
      return await startOnce(lines, options);
    } catch (err) {
      if (attempt >= 5 || !String((err as Error).message).includes('Address already in use')) throw err;
    }
  }
}

async function startOnce(lines: string[], options: DnsmasqOptions): Promise<Dnsmasq> {
  const dir = mkdtempSync(path.join(tmpdir(), 'egressd-dnsmasq-'));
  const port = await freeUdpPort();
  const conf = path.join(dir, 'dnsmasq.conf');
  writeFileSync(
    conf,
    [
      'no-resolv',
      'no-hosts',
      'bind-interfaces',
      'listen-address=127.0.0.1',
      `port=${port}`,
      'no-negcache',
      ...(options.logQueries ? ['log-queries'] : []),
      ...lines,
      '',
    ].join('\n'),
  );
  const argv = [
    'dnsmasq',
    `--conf-file=${conf}`,
    '--keep-in-foreground',
    '--user=root',
    '--pid-file',
    '--log-facility=-',
  ];
  // nsenter execs dnsmasq in its own process: the PID is dnsmasq's.
  if (options.netns) argv.unshift('nsenter', `--net=${options.netns}`, '--');
  const child: ChildProcess = spawn(argv[0] ?? 'dnsmasq', argv.slice(1), {
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let stderr = '';
  child.stderr?.on('data', (d) => {
    stderr += d;
  });
  // If the test or benchmark dies before stop(), its dnsmasq goes with it.
  const onExit = () => {
    if (child.exitCode === null && child.pid !== undefined) process.kill(child.pid, 'SIGKILL');
    rmSync(dir, { recursive: true, force: true });
  };
  process.on('exit', onExit);
  const stop = async () => {
    process.off('exit', onExit);
    if (child.exitCode === null && child.signalCode === null && child.pid !== undefined) {
      const exited = new Promise((r) => child.once('exit', r));
      process.kill(child.pid, 'SIGTERM');
      await exited;
    }
    rmSync(dir, { recursive: true, force: true });
  };
  // "dnsmasq: query[A] allowed.test from 127.0.0.1"
  const queries = () => [...stderr.matchAll(/ query\[([^\]]+)\] (\S+) from /g)].map((m) => `${m[1]} ${m[2]}`);
  for (let i = 0; i < 100; i++) {
    if (stderr.includes('started')) return { host: '127.0.0.1', port, queries, stop };
    if (child.exitCode !== null) break;
    await new Promise((r) => setTimeout(r, 50));
  }
  await stop();
  throw new Error(`dnsmasq did not start: ${stderr}`);
}
