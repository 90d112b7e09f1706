/** What the benchmarks share: options, the machine line, results files, BPF program statistics. */
import { execFile, execFileSync } from 'node:child_process';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { type ParseArgsConfig, parseArgs, promisify } from 'node:util';
import { GUARD_HOOKS, HOOKS, type HookName } from '../daemon/kernel/loader.js';
import { CONNECT_LOOP_PATH, REPO_ROOT, type World } from '../test/helpers/world.js';

/** One option of a benchmark: its kind, default and meaning (for --help). */
export type OptionSpec =
  | { type: 'number'; default: number; help: string }
  /** Comma-separated numbers. */
  | { type: 'numbers'; default: number[]; help: string }
  | { type: 'string'; default: string; choices?: string[]; help: string }
  | { type: 'flag'; help: string };

type OptionValue<S extends OptionSpec> = S extends { type: 'number' }
  ? number
  : S extends { type: 'numbers' }
    ? number[]
    : S extends { type: 'string' }
      ? string
      : boolean;

function helpText(command: string, about: string, spec: Record<string, OptionSpec>): string {
  const rows = Object.entries(spec).map(([name, s]) => {
    const value = { number: ' N', numbers: ' N,N,...', string: ' S', flag: '' }[s.type];
    const shown = s.type === 'string' && s.choices ? ` ${s.choices.join('|')}` : value;
    const fallback = s.type === 'flag' ? '' : ` (default ${String(s.default)})`;
    return [`--${name}${shown}`, `${s.help}${fallback}`];
  });
  rows.push(['--help', 'this text']);
  const width = Math.max(...rows.map(([left]) => left!.length)) + 2;
  return [
    `usage: ${command} [options]`,
    '',
    about,
    '',
    ...rows.map(([l, r]) => `  ${l!.padEnd(width)}${r}`),
  ].join('\n');
}

/**
 * A benchmark's options from process.argv (node:util parseArgs: `--name V`
 * or `--name=V`), each its default unless given. --help prints them and
 * exits; an unknown option or a value that is not what it takes exits 2.
 */
export function benchOptions<T extends Record<string, OptionSpec>>(
  command: string,
  about: string,
  spec: T,
  args = process.argv.slice(2),
): { [K in keyof T]: OptionValue<T[K]> } {
  const fail = (message: string): never => {
    console.error(`${message}\n\n${helpText(command, about, spec)}`);
    process.exit(2);
  };
  const config: ParseArgsConfig['options'] = { help: { type: 'boolean' } };
  for (const [name, s] of Object.entries(spec))
    config[name] = { type: s.type === 'flag' ? 'boolean' : 'string' };
  let values: Record<string, string | boolean | (string | boolean)[] | undefined> = {};
  try {
    values = parseArgs({ args, options: config, strict: true, allowPositionals: false }).values;
  } catch (err) {
    fail((err as Error).message);
  }
  if (values['help']) {
    console.log(helpText(command, about, spec));
    process.exit(0);
  }
  const number = (name: string, text: string) => {
    const n = Number(text);
    return text.trim() !== '' && Number.isFinite(n) ? n : fail(`--${name} takes a number, not "${text}"`);
  };
  const out: Record<string, unknown> = {};
  for (const [name, s] of Object.entries(spec)) {
    const given = values[name];
    if (s.type === 'flag') out[name] = given === true;
    else if (typeof given !== 'string') out[name] = s.default;
    else if (s.type === 'number') out[name] = number(name, given);
    else if (s.type === 'numbers') out[name] = given.split(',').map((part) => number(name, part));
    else if (s.choices && !s.choices.includes(given)) fail(`--${name} is one of ${s.choices.join(', ')}`);
    else out[name] = given;
  }
  return out as { [K in keyof T]: OptionValue<T[K]> };
}

/** Runs `main`; interrupted, it exits through the exit hooks, which remove the world and end egressd and redis-server. */
export async function runBenchmark(main: () => Promise<void>): Promise<void> {
  process.once('SIGINT', () => process.exit(130));
  process.once('SIGTERM', () => process.exit(143));
  await main();
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

/** Turns kernel.bpf_stats_enabled on (for progStats); the function returned sets it back. */
export function enableBpfStats(): () => void {
  const file = '/proc/sys/kernel/bpf_stats_enabled';
  const was = readFileSync(file, 'utf8').trim();
  writeFileSync(file, '1');
  return () => writeFileSync(file, was);
}

/** run_cnt and run_time_ns of the program on `hook`, or of the guard's (kernel.bpf_stats_enabled must be 1). */
export function progStats(world: World, hook: HookName, guard = false): { runs: number; ns: number } {
  const table: readonly { name: string; pin: string }[] = guard ? GUARD_HOOKS : HOOKS;
  const pin = table.find((h) => h.name === hook)?.pin;
  if (!pin) throw new Error(`no ${guard ? 'guard ' : ''}program on ${hook}`);
  return pinnedProgStats(world, pin);
}

/** run_cnt and run_time_ns of the program pinned as <pinDir>/progs/<pin>. */
export function pinnedProgStats(world: World, pin: string): { runs: number; ns: number } {
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
