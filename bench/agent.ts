/**
 * Agent benchmarks, with real components (redis-server, the API, BPF,
 * cgroups) on this host:
 *  1. PUT → 200 (enforced) latency of a 100-rule policy, p50/p99, against
 *     PUT ?wait=0 (stored, not waited for) measured in the same run.
 *  2. Cold resync: N computers × 100 rules registered in Redis, then a fresh
 *     agent with no pins starts; time to the end of its first full resync,
 *     its RSS, and the kernel memory of the maps.
 *
 *   sudo node dist/bench/agent.js [--puts 300] [--computers 10000]
 */

import { execFileSync } from 'node:child_process';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { pino } from 'pino';
import { createApp } from '../api/src/app.js';
import { resolveConfig } from '../api/src/config.js';
import { Store } from '../api/src/store/store.js';
import { Agent } from '../daemon/src/agent/agent.js';
import { Enforcer } from '../daemon/src/enforcer.js';
import type { Rule } from '../daemon/src/policy/types.js';
import { startRedis } from '../test/helpers/redis.js';
import { createWorld } from '../test/helpers/world.js';
import { arg, machine, writeResults } from './common.js';

const PUTS = arg('puts', 300);
const COMPUTERS = arg('computers', 10_000);
const KEY = 'bench-admin-key-0123456789';
const log = pino({ level: 'silent' });

function rules(seed: number): Rule[] {
  return Array.from({ length: 100 }, (_, i) => ({
    host: `10.${seed & 255}.${i}.0/24`,
    protocol: i % 2 ? 'tcp' : 'any',
    ...(i % 3 ? { port: 443 } : {}),
  }));
}

function percentile(values: number[], p: number): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.floor((sorted.length * p) / 100))] ?? Number.NaN;
}

function mapMemoryBytes(pinDir: string): number {
  let total = 0;
  for (const name of [
    'computers',
    'rules_v4',
    'rules_v6',
    'rule_ports',
    'internal_v4',
    'internal_v6',
    'config',
  ]) {
    const info = JSON.parse(
      execFileSync('bpftool', ['-j', 'map', 'show', 'pinned', `${pinDir}/maps/${name}`]).toString(),
    );
    total += Number(info.bytes_memlock ?? 0);
  }
  return total;
}

async function main(): Promise<void> {
  const world = await createWorld();
  const redis = await startRedis();
  const config = resolveConfig({ adminKey: KEY, redisUrl: redis.url, defaultNode: 'bench' }, {});
  const apiStore = new Store({ url: redis.url });
  await apiStore.connect();
  const server = createServer(createApp({ store: apiStore, config }).callback()).listen(0, '127.0.0.1');
  await new Promise((r) => server.once('listening', r));
  const base = `http://127.0.0.1:${(server.address() as AddressInfo).port}/api/v1`;
  const headers = { authorization: `Bearer ${KEY}`, 'content-type': 'application/json' };
  let enforcer = Enforcer.open({ pinDir: world.pinDir, cgroupRoot: world.cgroupMount });
  let agentStore = new Store({ url: redis.url });
  await agentStore.connect();
  let agent = new Agent({ store: agentStore, enforcer, node: 'bench', cgroupRoot: world.cgroupMount, log });
  await agent.start();
  try {
    // 1. PUT → 200 latency.
    const cg = world.makeCgroup('put-latency');
    await fetch(`${base}/computers/lat`, {
      method: 'PUT',
      headers,
      body: JSON.stringify({ cgroup: cg.relative }),
    });
    const time = async (query: string, i: number) => {
      const body = JSON.stringify({ mode: 'allowlist', rules: rules(i) });
      const start = process.hrtime.bigint();
      const r = await fetch(`${base}/computers/lat/network-policy${query}`, { method: 'PUT', headers, body });
      await r.arrayBuffer();
      const ms = Number(process.hrtime.bigint() - start) / 1e6;
      const expected = query ? 202 : 200;
      if (r.status !== expected && !(query && r.status === 200)) throw new Error(`PUT answered ${r.status}`);
      return ms;
    };
    const enforced: number[] = [];
    const stored: number[] = [];
    for (let i = 0; i < PUTS; i++) {
      // Alternate the order, so neither variant always runs on a warmer process.
      if (i % 2) {
        enforced.push(await time('', i));
        stored.push(await time('?wait=0', i + 100_000));
      } else {
        stored.push(await time('?wait=0', i + 100_000));
        enforced.push(await time('', i));
      }
    }
    const latency = {
      puts: PUTS,
      enforced_p50_ms: +percentile(enforced, 50).toFixed(2),
      enforced_p99_ms: +percentile(enforced, 99).toFixed(2),
      stored_p50_ms: +percentile(stored, 50).toFixed(2),
      stored_p99_ms: +percentile(stored, 99).toFixed(2),
    };

    // 2. Cold resync of many computers.
    await agent.stop();
    await agentStore.close();
    enforcer.close();
    const prepStart = Date.now();
    for (let i = 0; i < COMPUTERS; i++) {
      const c = world.makeCgroup(`many/c${i}`);
      await apiStore.putComputer(`c${i}`, { cgroup: c.relative, node: 'bench' });
      await apiStore.putPolicy(`c${i}`, { mode: 'allowlist', rules: rules(i) });
    }
    const prepMs = Date.now() - prepStart;
    const coldPins = `${world.pinDir}/cold`;
    enforcer = Enforcer.open({ pinDir: coldPins, cgroupRoot: world.cgroupMount });
    agentStore = new Store({ url: redis.url });
    await agentStore.connect();
    agent = new Agent({ store: agentStore, enforcer, node: 'bench', cgroupRoot: world.cgroupMount, log });
    const rssBefore = process.memoryUsage().rss;
    const start = Date.now();
    await agent.start();
    const resyncMs = Date.now() - start;
    const enforcedCount = agent.report().filter((c) => c.state === 'enforced').length;
    const resync = {
      computers: COMPUTERS,
      rules_each: 100,
      enforced: enforcedCount,
      resync_s: +(resyncMs / 1000).toFixed(2),
      rss_mib: +(process.memoryUsage().rss / 2 ** 20).toFixed(0),
      rss_growth_mib: +((process.memoryUsage().rss - rssBefore) / 2 ** 20).toFixed(0),
      map_memory_mib: +(mapMemoryBytes(coldPins) / 2 ** 20).toFixed(1),
      setup_s: +(prepMs / 1000).toFixed(1),
    };
    // Detach everything before the world goes (its cgroups are removed with the world).
    for (const c of enforcer.list()) enforcer.detach(c.id);
    await enforcer.sweep();

    const host = machine();
    console.log(`agent benchmarks; machine: ${host}`);
    console.log('PUT of a 100-rule policy, ms: answered when enforced (200) vs stored only (?wait=0, 202)');
    console.table([latency]);
    console.log('cold resync');
    console.table([resync]);
    writeResults('agent', { machine: host, latency, resync });
  } finally {
    await agent.stop();
    await agentStore.close();
    enforcer.close();
    server.closeAllConnections();
    server.close();
    await apiStore.close();
    await redis.cleanup();
    await world.destroy();
  }
}

await main();
