/** What the benchmarks share: options, the machine line, results files, BPF program statistics. */
import { execFile, execFileSync } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { GUARD_HOOKS, HOOKS, type HookName } from '../daemon/kernel/loader.js';
import { CONNECT_LOOP_PATH, REPO_ROOT, type World } from '../test/helpers/world.js';

/** A numeric `--name N` option. */
export function arg(name: string, fallback: number): number {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? Number(process.argv[i + 1]) : fallback;
}

/** Which machine the figures came from, for the table and the JSON. */
export function machine(): string {
  return `${os.cpus()[0]?.model ?? 'cpu'} × ${os.cpus().length}, Linux ${os.release()}`;
}

/** Writes bench/results/<name>.json. */
export function writeResults(name: string, data: object): void {
  const out = path.join(REPO_ROOT, 'bench/results');
  mkdirSync(out, { recursive: true });
  writeFileSync(path.join(out, `${name}.json`), `${JSON.stringify(data, null, 2)}\n`);
}

/** run_cnt and run_time_ns of the program on `hook`, or of the guard's (kernel.bpf_stats_enabled must be 1). */
export function progStats(world: World, hook: HookName, guard = false): { runs: number; ns: number } {
  const table: readonly { name: string; pin: string }[] = guard ? GUARD_HOOKS : HOOKS;
  const pin = table.find((h) => h.name === hook)?.pin;
  if (!pin) throw new Error(`no ${guard ? 'guard ' : ''}program on ${hook}`);
  const info = JSON.parse(
    execFileSync('bpftool', [
      '-j',
      'prog',
      'show',
      'pinned',
      path.join(world.pinDir, 'progs', pin),
    ]).toString(),
  ) as { run_cnt?: number; run_time_ns?: number };
  return { runs: info.run_cnt ?? 0, ns: info.run_time_ns ?? 0 };
}

/** The JSON line of bench/connect-loop.c. */
export interface LoopResult {
  ns_per_op: number;
  completed: number;
  errors: Record<string, number>;
}

/** One run of bench/connect-loop.c from `cgroup` in the world's namespace, to ADDR:80. */
export async function connectLoop(
  world: World,
  cgroup: string,
  mode: string,
  addr: string,
  iterations: number,
): Promise<{ stdout: string; result: LoopResult }> {
  const { stdout } = await promisify(execFile)(CONNECT_LOOP_PATH, [
    '--cgroup',
    cgroup,
    '--netns',
    world.netnsPath,
    mode,
    addr,
    '80',
    String(iterations),
  ]);
  return { stdout, result: JSON.parse(stdout) as LoopResult };
}
