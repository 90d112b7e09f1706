/**
 * connect() and sendto() cost under egressd, against no program at all and
 * against the same policy in nftables, measured by a C loop
 * (bench/connect-loop.c) in the test world's namespace:
 *
 *   tcp, udp             connect+close / unconnected sendto to 192.0.2.1:80
 *   tcp-vary, udp-vary   the destination's last byte cycles over
 *                        203.0.113.1–254: the lower half allowed by CIDR rules
 *                        (a /25, and for 1,000+ rules its own /32 as well),
 *                        the upper half by learned hostname addresses only, so
 *                        successive lookups end on different trie leaves and
 *                        hash entries, and half of them miss the trie first
 *
 * Variants: no program; egressd allowlists of 10, 1,000 and 100,000 CIDR
 * rules plus `*.learned.bench` with 1,000 learned addresses (the 100,000 a
 * second time below a guarded sandbox root, as the agent runs computers: the
 * guard program's time counts in the hook's); nftables with
 * the same 100,000 rules and 1,000 addresses (an output chain matching
 * `socket cgroupv2`, interval sets and a timeout set; its base chain exists
 * only while its variant runs, so the other variants never pass through
 * it). Each round runs every variant once, in rotated order; figures are min
 * and median over rounds, as ratios to the no-program baseline of the same
 * run, plus the mean run time of the egressd hook itself from the kernel's
 * BPF statistics (min and median over rounds; robust to the noise of a
 * shared machine) and the ratio it
 * makes on its own: 1 + hook time / fastest no-program call. Before timing,
 * every variant must refuse 192.0.2.2 (so a benchmark of a policy that is not
 * in force fails). Also: the time to apply 10,000- and 100,000-rule policies,
 * and nftables' load of the same 100,000 rules.
 *
 *   sudo node dist/bench/connect.js [--rounds N] [--tcp-iterations N] [--udp-iterations N]
 */

import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { Enforcer } from '../daemon/kernel/enforcer.js';
import type { HookName } from '../daemon/kernel/loader.js';
import type { Policy, Rule } from '../policy/types.js';
import { createWorld, type World } from '../test/helpers/world.js';
import { benchOptions, connectLoop, enableBpfStats, machine, progStats, writeResults } from './common.js';

const OPTIONS = benchOptions(
  'sudo node dist/bench/connect.js',
  'connect() and sendto() cost under egressd, against no program and against nftables.',
  {
    rounds: { type: 'number', default: 7, help: 'rounds of every variant, in rotated order' },
    'tcp-iterations': { type: 'number', default: 20_000, help: 'connect+close calls per TCP measurement' },
    'udp-iterations': { type: 'number', default: 200_000, help: 'sendto calls per UDP measurement' },
  },
);
const ROUNDS = OPTIONS.rounds;
const TCP_ITERATIONS = OPTIONS['tcp-iterations'];
const UDP_ITERATIONS = OPTIONS['udp-iterations'];
const SIZES = [10, 1_000, 100_000];
const LEARNED = 1_000;
const FIXED = '192.0.2.1';
const VARIED = '203.0.113.1';
const REFUSED = '192.0.2.2';
const LEARNED_PATTERN = '*.learned.bench';
const NFT_TABLE = 'egressd_bench';
/** Where nft resolves `socket cgroupv2` paths (it prefixes this one). */
const NFT_CGROUP_BASE = '/sys/fs/cgroup';

/**
 * `n` distinct, non-overlapping CIDR rules (nftables' interval sets refuse
 * overlaps): the fixed destination, 203.0.113.0/25 for the lower half of the
 * varied ones (each also under its own /32 from 1,000 rules on), then rules
 * spread over 10.0.0.0/8 (one per /24, lengths 24–32, tcp/443) and
 * 2001:db8:100::/40 (/64s, any protocol).
 */
function cidrRules(n: number): Rule[] {
  const rules: Rule[] = [
    { host: FIXED, protocol: 'any' },
    { host: '203.0.113.0/25', protocol: 'any' },
  ];
  if (n >= 1_000) {
    for (let b = 1; b < 127; b++) rules.push({ host: `203.0.113.${b}/32`, protocol: 'tcp', port: 443 });
  }
  for (let i = 0, v4 = 0, v6 = 0; rules.length < n; i++) {
    if (i % 2) {
      const h = (v6++ * 2654435761) & 0xffffff; // a bijection on 24 bits: distinct /64s, spread out
      rules.push({
        host: `2001:db8:1${(h >>> 16).toString(16).padStart(2, '0')}:${(h & 0xffff).toString(16)}::/64`,
        protocol: 'any',
      });
    } else {
      const h = (v4 * 40503) & 0xffff; // a bijection on 16 bits: one rule per /24 of 10.0.0.0/8
      const len = 24 + (v4 % 9);
      const low = (v4 * 7) & 0xff & (0xff << (32 - len)) & 0xff;
      v4++;
      rules.push({ host: `10.${h >>> 8}.${h & 255}.${low}/${len}`, protocol: 'tcp', port: 443 });
    }
  }
  return rules;
}

function allowlist(n: number): Policy {
  return { mode: 'allowlist', rules: [...cidrRules(n), { host: LEARNED_PATTERN, protocol: 'any' }] };
}

/** The learned addresses: 203.0.113.128–254 (the upper half of the varied destinations), the rest in 198.18.0.0/15. */
function learnedAddresses(): number[][] {
  const out: number[][] = [];
  for (let b = 128; b < 255; b++) out.push([203, 0, 113, b]);
  for (let i = 0; out.length < LEARNED; i++) out.push([198, 18 + (i >> 16), (i >> 8) & 255, i & 255]);
  return out;
}

function learn(enforcer: Enforcer, id: string): void {
  learnedAddresses().forEach((bytes, i) => {
    if (!enforcer.learn(id, [`h${i}.learned.bench`], [bytes], 3600)) {
      throw new Error(`${id}: the policy did not take learned address ${bytes.join('.')}`);
    }
  });
}

/** The same allowlist as an nftables table: any-protocol prefixes, prefix . protocol . port, learned addresses. */
function nftTable(rules: Rule[]): string {
  const any4: string[] = [];
  const any6: string[] = [];
  const ports4: string[] = [];
  const ports6: string[] = [];
  for (const r of rules) {
    const v6 = r.host.includes(':');
    if (r.protocol === 'any') (v6 ? any6 : any4).push(r.host);
    else (v6 ? ports6 : ports4).push(`${r.host} . ${r.protocol} . ${r.port ?? '0-65535'}`);
  }
  const learned = learnedAddresses().map((b) => `${b.join('.')} timeout 1h`);
  const set = (name: string, type: string, flags: string, elements: string[]) =>
    elements.length
      ? `  set ${name} { type ${type}; flags ${flags}; elements = { ${elements.join(', ')} } }\n`
      : `  set ${name} { type ${type}; flags ${flags}; }\n`;
  return (
    `table inet ${NFT_TABLE} {\n` +
    set('any4', 'ipv4_addr', 'interval', any4) +
    set('any6', 'ipv6_addr', 'interval', any6) +
    set('ports4', 'ipv4_addr . inet_proto . inet_service', 'interval', ports4) +
    set('ports6', 'ipv6_addr . inet_proto . inet_service', 'interval', ports6) +
    set('learned4', 'ipv4_addr', 'timeout', learned) +
    '  chain computer {\n' +
    '    ip daddr @any4 accept\n' +
    '    ip6 daddr @any6 accept\n' +
    '    ip daddr . meta l4proto . th dport @ports4 accept\n' +
    '    ip6 daddr . meta l4proto . th dport @ports6 accept\n' +
    '    ip daddr @learned4 accept\n' +
    '    reject with icmpx admin-prohibited\n' +
    '  }\n' +
    '}\n'
  );
}

/** Debian's nft by its path: under `npm run`, node_modules/.bin (an unrelated `nft`) comes first in PATH. */
const NFT = '/usr/sbin/nft';

/** nft in the world's network namespace; nsenter, not `ip netns exec`, which would hide /sys/fs/cgroup. */
function nft(world: World, script: string): void {
  if (!existsSync(NFT)) throw new Error(`${NFT} is missing: install nftables (scripts/setup.sh does)`);
  execFileSync('nsenter', [`--net=${world.netnsPath}`, NFT, '-f', '-'], { input: script, stdio: 'pipe' });
}

/** The base chain sending the cgroup's packets to the policy; added only while the nftables variant runs. */
function nftHook(world: World, cgroupPath: string, on: boolean): void {
  if (!on) {
    nft(world, `delete chain inet ${NFT_TABLE} output\n`);
    return;
  }
  const relative = path.relative(NFT_CGROUP_BASE, cgroupPath);
  const level = path.relative(world.cgroupMount, cgroupPath).split('/').length;
  nft(
    world,
    `add chain inet ${NFT_TABLE} output { type filter hook output priority 0; policy accept; }\n` +
      `add rule inet ${NFT_TABLE} output socket cgroupv2 level ${level} "${relative}" jump computer\n`,
  );
}

interface Variant {
  name: string;
  cgroup: string;
  nft?: boolean;
  /** Below a guarded sandbox root: the guard program runs too, and its time counts in the hook's. */
  guarded?: boolean;
  /** The policy is in audit: what it would refuse goes through. */
  audit?: boolean;
}

interface Sample {
  variant: string;
  mode: Mode;
  nsPerOp: number;
  /** Mean run time of the egressd hook itself (kernel.bpf_stats_enabled), ns; NaN without one. */
  hookNs: number;
}

type Mode = 'tcp' | 'udp' | 'tcp-vary' | 'udp-vary';
const MODES: { mode: Mode; op: string; hook: HookName }[] = [
  { mode: 'tcp', op: 'tcp connect+close, fixed', hook: 'connect4' },
  { mode: 'tcp-vary', op: 'tcp connect+close, varied', hook: 'connect4' },
  { mode: 'udp', op: 'udp sendto, fixed', hook: 'sendmsg4' },
  { mode: 'udp-vary', op: 'udp sendto, varied', hook: 'sendmsg4' },
];

async function loop(world: World, cgroup: string, mode: Mode, iterations: number): Promise<number> {
  const { stdout, result } = await connectLoop(
    world,
    cgroup,
    mode,
    mode.endsWith('-vary') ? VARIED : FIXED,
    iterations,
  );
  if (result.completed !== iterations) {
    throw new Error(
      `${mode} loop in ${cgroup}: only ${result.completed} of ${iterations} completed: ${stdout}`,
    );
  }
  return result.ns_per_op;
}

/** A benchmark of a policy that is not in force proves nothing: each variant must refuse REFUSED. */
async function checkRefuses(world: World, v: Variant): Promise<void> {
  const { stdout, result } = await connectLoop(world, v.cgroup, 'udp', REFUSED, 10);
  if (result.completed !== 0) throw new Error(`${v.name} let udp to ${REFUSED} through: ${stdout}`);
}

function stats(values: number[]): { min: number; median: number } {
  const sorted = [...values].sort((a, b) => a - b);
  return { min: sorted[0] ?? Number.NaN, median: sorted[Math.floor(sorted.length / 2)] ?? Number.NaN };
}

/** Applies `times` distinct variants of `policy` (one more rule each: no compile cache, no shared entries). */
function timeApply(enforcer: Enforcer, id: string, policy: Policy, times: number): number[] {
  const variants = Array.from({ length: times }, (_, i) => ({
    ...policy,
    rules: [...policy.rules, { host: `198.51.100.${i + 1}`, protocol: 'tcp' as const }],
  }));
  const ms: number[] = [];
  for (const [i, variant] of variants.entries()) {
    const start = process.hrtime.bigint();
    enforcer.apply(id, variant, BigInt(i + 10));
    ms.push(Number(process.hrtime.bigint() - start) / 1e6);
  }
  return ms;
}

async function main(): Promise<void> {
  const world = await createWorld();
  const restoreStats = enableBpfStats();
  const enforcer = Enforcer.open({ pinDir: world.pinDir, cgroupRoot: world.cgroupMount });
  try {
    const variants: Variant[] = [{ name: 'no program', cgroup: world.makeCgroup('none').path }];
    for (const n of SIZES) {
      const id = `allow-${n}`;
      const cg = world.makeCgroup(id);
      enforcer.attach(id, cg.relative, allowlist(n), 1n);
      learn(enforcer, id);
      variants.push({ name: `egressd ${n.toLocaleString('en')} rules`, cgroup: cg.path });
    }
    // The same 100,000-rule policy below a sandbox root, as the agent runs computers: the guard runs too.
    enforcer.guard.attachRoots([world.cgroupRelative('guarded')]);
    const guardedCg = world.makeCgroup('guarded/allow-100000');
    enforcer.attach('allow-100000-guarded', guardedCg.relative, allowlist(100_000), 1n);
    learn(enforcer, 'allow-100000-guarded');
    variants.push({ name: 'egressd 100,000 rules, guarded root', cgroup: guardedCg.path, guarded: true });
    // The same policy in audit, and not observed (an agent with --observe off writes the storage value).
    const auditCg = world.makeCgroup('allow-100000-audit');
    enforcer.attach('allow-100000-audit', auditCg.relative, { ...allowlist(100_000), audit: true }, 1n);
    learn(enforcer, 'allow-100000-audit');
    variants.push({ name: 'egressd 100,000 rules, audit', cgroup: auditCg.path, audit: true });
    const unobserving = Enforcer.open({
      pinDir: world.pinDir,
      cgroupRoot: world.cgroupMount,
      observe: 'off',
    });
    const quietCg = world.makeCgroup('allow-100000-unobserved');
    try {
      unobserving.attach('allow-100000-unobserved', quietCg.relative, allowlist(100_000), 1n);
      learn(unobserving, 'allow-100000-unobserved');
    } finally {
      unobserving.close();
    }
    variants.push({ name: 'egressd 100,000 rules, not observed', cgroup: quietCg.path });
    await enforcer.sweep();
    const nftStart = process.hrtime.bigint();
    nft(world, nftTable(cidrRules(100_000)));
    const nftLoadMs = Number(process.hrtime.bigint() - nftStart) / 1e6;
    variants.push({ name: 'nftables 100,000 rules', cgroup: world.makeCgroup('nft').path, nft: true });

    for (const v of variants.slice(1)) {
      if (v.audit) continue; // lets REFUSED through by design (with an event)
      if (v.nft) nftHook(world, v.cgroup, true);
      try {
        await checkRefuses(world, v);
      } finally {
        if (v.nft) nftHook(world, v.cgroup, false);
      }
    }

    const samples: Sample[] = [];
    for (let round = 0; round < ROUNDS; round++) {
      const order = variants.map((_, i) => variants[(i + round) % variants.length]!);
      for (const v of order) {
        if (v.nft) nftHook(world, v.cgroup, true);
        try {
          for (const { mode, hook } of MODES) {
            const before = progStats(world, hook);
            const guardBefore = progStats(world, hook, true);
            const nsPerOp = await loop(
              world,
              v.cgroup,
              mode,
              mode.startsWith('tcp') ? TCP_ITERATIONS : UDP_ITERATIONS,
            );
            const after = progStats(world, hook);
            const guardAfter = progStats(world, hook, true);
            const runs = after.runs - before.runs;
            // Per call: the computer's program, plus the guard's where it ran (once per call).
            const guardNs = v.guarded ? guardAfter.ns - guardBefore.ns : 0;
            samples.push({
              variant: v.name,
              mode,
              nsPerOp,
              hookNs: runs > 0 ? (after.ns - before.ns + guardNs) / runs : Number.NaN,
            });
          }
        } finally {
          if (v.nft) nftHook(world, v.cgroup, false);
        }
      }
    }

    const rows = [];
    for (const { mode, op } of MODES) {
      const base = stats(
        samples.filter((s) => s.mode === mode && s.variant === 'no program').map((s) => s.nsPerOp),
      );
      for (const v of variants) {
        const mine = samples.filter((x) => x.mode === mode && x.variant === v.name);
        const s = stats(mine.map((x) => x.nsPerOp));
        const hook = stats(mine.map((x) => x.hookNs));
        rows.push({
          op,
          variant: v.name,
          min_ns: Math.round(s.min),
          median_ns: Math.round(s.median),
          ratio_min: +(s.min / base.min).toFixed(3),
          ratio_median: +(s.median / base.median).toFixed(3),
          hook_ns_min: Number.isNaN(hook.min) ? '-' : Math.round(hook.min),
          hook_ns_median: Number.isNaN(hook.median) ? '-' : Math.round(hook.median),
          // The hook's own cost on top of the fastest no-program call: steadier than the end-to-end
          // ratios on a shared machine, whose noise is larger than the hook.
          ratio_hook: Number.isNaN(hook.median) ? '-' : +(1 + hook.median / base.min).toFixed(3),
        });
      }
    }

    const applyCg = world.makeCgroup('apply');
    enforcer.attach('apply', applyCg.relative, { mode: 'isolated', rules: [] }, 1n);
    const applies = [];
    for (const n of [10_000, 100_000]) {
      const ms = timeApply(enforcer, 'apply', allowlist(n), n === 10_000 ? 20 : 5);
      await enforcer.sweep();
      const s = stats(ms);
      applies.push({
        what: `egressd apply, ${n.toLocaleString('en')} rules`,
        min_ms: +s.min.toFixed(1),
        median_ms: +s.median.toFixed(1),
        max_ms: +Math.max(...ms).toFixed(1),
      });
    }
    applies.push({
      what: 'nft -f, the same 100,000 rules + 1,000 addresses',
      min_ms: +nftLoadMs.toFixed(1),
      median_ms: +nftLoadMs.toFixed(1),
      max_ms: +nftLoadMs.toFixed(1),
    });

    const host = machine();
    console.log(`connect() cost, ${ROUNDS} rounds, rotated order; machine: ${host}`);
    console.log(`every variant but "no program" also has ${LEARNED.toLocaleString('en')} learned addresses`);
    console.table(rows);
    console.log('policy apply (compile + map writes + switch), ms');
    console.table(applies);
    writeResults('connect', {
      machine: host,
      rounds: ROUNDS,
      tcpIterations: TCP_ITERATIONS,
      udpIterations: UDP_ITERATIONS,
      learned: LEARNED,
      rows,
      applies,
    });
  } finally {
    restoreStats();
    enforcer.close();
    await world.destroy();
  }
}

await main();
