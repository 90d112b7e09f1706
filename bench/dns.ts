/**
 * DNS proxy cost: dnsperf (Debian) asking dnsmasq directly, against the
 * same queries from a governed computer (allowlist of *.bench.test, so every
 * answer is learned into the kernel map before it is released) whose DNS the
 * hooks redirect to the proxy. Everything on loopback in the host namespace.
 * Rounds rotate the order; latency from dnsperf -v at a fixed rate,
 * throughput at 500 outstanding queries. The proxy runs in this process: one
 * core.
 *
 *   sudo node dist/bench/dns.js [--rounds 3] [--seconds 5]
 */

import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { pino } from 'pino';
import { DnsProxy } from '../daemon/src/dns/proxy.js';
import { Enforcer } from '../daemon/src/enforcer.js';
import { startDnsmasq } from '../test/helpers/dnsmasq.js';
import { createWorld, type World } from '../test/helpers/world.js';
import { arg, machine, writeResults } from './common.js';

const ROUNDS = arg('rounds', 3);
const SECONDS = arg('seconds', 5);
const NAMES = 1000;
const PORTS: [number, number] = [43000, 43999];

async function dnsperf(
  world: World,
  cgroup: string,
  server: string,
  port: number,
  args: string[],
): Promise<string> {
  return (await world.run('dnsperf', ['-s', server, '-p', String(port), ...args], { cgroup, netns: false }))
    .out;
}

function percentile(values: number[], p: number): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.floor((sorted.length * p) / 100))] ?? Number.NaN;
}

async function main(): Promise<void> {
  const world = await createWorld();
  const dnsmasq = await startDnsmasq(
    Array.from({ length: NAMES }, (_, i) => `host-record=n${i}.bench.test,203.0.113.${i % 250},300`),
  );
  const queries = path.join(mkdtempSync(path.join(os.tmpdir(), 'egressd-dnsperf-')), 'queries.txt');
  writeFileSync(queries, Array.from({ length: NAMES }, (_, i) => `n${i}.bench.test A`).join('\n'));
  const enforcer = Enforcer.open({ pinDir: world.pinDir, cgroupRoot: world.cgroupMount });
  enforcer.setDnsConfig(PORTS);
  const proxy = new DnsProxy({
    enforcer,
    upstreams: [{ host: dnsmasq.host, port: dnsmasq.port }],
    listen: ['127.0.0.1', '::1'],
    portRange: PORTS,
    ttlFloor: 5,
    ttlCeiling: 3600,
    timeoutMs: 3000,
    log: pino({ level: 'silent' }),
  });
  try {
    const plain = world.makeCgroup('direct');
    const governed = world.makeCgroup('governed');
    const port = await proxy.ensure('governed');
    enforcer.attach(
      'governed',
      governed.relative,
      { mode: 'allowlist', rules: [{ host: '*.bench.test', protocol: 'tcp' }] },
      1n,
      {
        port,
      },
    );
    const variants = [
      { name: 'direct to dnsmasq', cgroup: plain.path, server: dnsmasq.host, port: dnsmasq.port },
      { name: 'through the proxy', cgroup: governed.path, server: '127.0.0.53', port: 53 },
    ];
    const results = new Map<string, { lat: number[]; qps: number[] }>(
      variants.map((v) => [v.name, { lat: [], qps: [] }]),
    );
    for (let round = 0; round < ROUNDS; round++) {
      for (const v of round % 2 ? [...variants].reverse() : variants) {
        const r = results.get(v.name)!;
        const verbose = await dnsperf(world, v.cgroup, v.server, v.port, [
          '-d',
          queries,
          '-l',
          String(SECONDS),
          '-Q',
          '2000',
          '-v',
        ]);
        for (const m of verbose.matchAll(/^> NOERROR \S+ A ([0-9.]+)$/gm)) r.lat.push(Number(m[1]) * 1000);
        const load = await dnsperf(world, v.cgroup, v.server, v.port, [
          '-d',
          queries,
          '-l',
          String(SECONDS),
          '-q',
          '500',
        ]);
        const qps = /Queries per second:\s+([0-9.]+)/.exec(load);
        if (!qps) throw new Error(`dnsperf gave no figures for ${v.name}: ${load.slice(-400)}`);
        r.qps.push(Number(qps[1]));
      }
    }
    const rows = variants.map((v) => {
      const r = results.get(v.name)!;
      return {
        variant: v.name,
        queries_timed: r.lat.length,
        p50_ms: +percentile(r.lat, 50).toFixed(3),
        p99_ms: +percentile(r.lat, 99).toFixed(3),
        qps_max: Math.round(Math.max(...r.qps)),
        qps_median: Math.round(percentile(r.qps, 50)),
      };
    });
    const [direct, proxied] = rows as [(typeof rows)[0], (typeof rows)[0]];
    const added = {
      added_p50_ms: +(proxied.p50_ms - direct.p50_ms).toFixed(3),
      added_p99_ms: +(proxied.p99_ms - direct.p99_ms).toFixed(3),
      qps_ratio: +(proxied.qps_max / direct.qps_max).toFixed(2),
      learned_writes: proxy.stats.learned,
      fail_closed: proxy.stats.failClosed,
    };
    const host = machine();
    console.log(`DNS proxy vs direct, ${ROUNDS} rounds of ${SECONDS} s; machine: ${host}`);
    console.table(rows);
    console.table([added]);
    writeResults('dns', { machine: host, rows, added });
  } finally {
    await proxy.close();
    enforcer.close();
    await dnsmasq.stop();
    await world.destroy();
    rmSync(path.dirname(queries), { recursive: true, force: true });
  }
}

await main();
