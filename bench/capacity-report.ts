/**
 * bench/capacity.ts's tables and its capacity statement: the PUT rate one
 * Sentinel-managed Redis sustained (with a replica, against the baseline
 * without WAIT), what limited it, the Redis CPU a change costs and the rate
 * at which its one command thread would saturate (where Redis Cluster
 * starts to matter), hosts and their follow lag, memory per computer.
 */
import { cpus } from 'node:os';
import { machine } from './common.js';
import { round } from './egressd.js';
import { STUB_LABEL } from './stub-enforcer.js';

interface Step {
  min_replicas: number;
  workers: number;
  target_per_s: number;
  achieved_per_s: number;
  p50_ms: number;
  p99_ms: number;
  errors: number;
  sustained: boolean;
  redis_primary_pct: number;
  api_pct: number;
  machine_busy_cores: number;
  redis_cpu_us_per_put: number;
}

interface Lag {
  hosts: number;
  computers: number;
  put_rate: number;
  lag_p50_ms: number;
  lag_p99_ms: number;
  send_to_ack_p50_ms: number;
  send_to_ack_p99_ms: number;
  agent_metric_p50_ms: number;
  agent_metric_p99_ms: number;
  redis_connections_per_host: number;
  idle_redis_primary_pct: number;
  redis_cpu_us_per_put: number;
}

interface Memory {
  bytes_per_computer: number;
  bytes_per_computer_without_stream: number;
}

export interface ReportInput {
  options: {
    step: number;
    computers: number;
    rules: number;
    'p99-bound': number;
    'lag-rate': number;
    'lag-seconds': number;
    workers: number[];
  };
  shared: string;
  /** The idle primary's CPU seconds a second. */
  idlePrimary: number;
  maxclients: number;
  steps: Step[];
  lag: Lag[];
  memory: Memory;
}

/** What limited the first step that was not sustained. */
function limit(s: Step | undefined): string {
  if (!s) return 'nothing: every step was sustained (offer higher --rates)';
  const where = `at ${s.target_per_s}/s (answered ${s.achieved_per_s}/s, p99 ${s.p99_ms} ms, ${s.errors} errors): primary ${s.redis_primary_pct}%, API ${s.api_pct}% of a core, machine busy ${s.machine_busy_cores} of ${cpus().length} cores`;
  if (s.redis_primary_pct >= 85) return `Redis's command thread, ${where}`;
  if (s.api_pct >= 85 * s.workers) return `the API process${s.workers > 1 ? 'es' : ''}, ${where}`;
  if (s.machine_busy_cores >= 0.9 * cpus().length)
    return `the shared cores (every process on the machine counted), ${where}`;
  return `latency, no process saturated, ${where}`;
}

export function report(input: ReportInput) {
  const { options: O, steps, lag, memory } = input;
  console.log(
    `\ncapacity of one Sentinel-managed Redis (primary + 1 replica + 3 Sentinels, appendfsync everysec); ${machine()}`,
  );
  console.log(`NOTE: ${input.shared}; CPU figures are % of one core.`);
  console.log(
    `\n1. PUT /computers/{id}/network-policy?wait=0 (202 once stored, and with min_replicas 1 once the replica has it; no agent), open loop, ${O.step} s a step, ${O.computers} computers, ${O.rules} rules. Sustained: rate met (95%), p99 ≤ ${O['p99-bound']} ms from the scheduled send, no errors. redis_cpu_us_per_put: the primary's CPU net of its idle ${round(100 * input.idlePrimary, 1)}%; redis_commands_per_put counts the commands inside the Lua script too. The highest sustained step counts even above a step that missed (noise).`,
  );
  console.table(steps);
  const best = (mr: number, wk?: number) =>
    steps
      .filter((s) => s.min_replicas === mr && s.sustained && (wk === undefined || s.workers === wk))
      .sort((a, b) => b.target_per_s - a.target_per_s)[0];
  const sustained = O.workers.map((wk) => ({
    workers: wk,
    sustained_min_replicas_1: best(1, wk)?.target_per_s ?? 0,
    sustained_min_replicas_0: best(0, wk)?.target_per_s ?? 0,
    ratio: round((best(1, wk)?.target_per_s ?? 0) / Math.max(1, best(0, wk)?.target_per_s ?? 0), 2),
  }));
  console.table(sustained);
  console.log(
    `\n2. follow lag at ${O['lag-rate']} PUT/s for ${O['lag-seconds']} s over every host's computers, API min_replicas 1. Agents: the real Agent class, each host its own node and Redis connections, with a ${STUB_LABEL.toUpperCase()} (no BPF; all hosts in one process). lag: PUT answer → acknowledgement stored (negative: the agent acknowledged before the API's answer left); send_to_ack: the PUT's scheduled send → acknowledgement stored; agent_metric: the agents' egressd_enforcement_lag_seconds (change record written → enforced), bucket-interpolated.`,
  );
  console.table(lag);
  console.log(
    '\n3. Redis memory of the computers with a policy (used_memory delta; the node change stream included, capped at 10,000 records a node)',
  );
  console.table([memory]);

  const top = best(1);
  const wk = top?.workers ?? O.workers[0];
  const firstFail = steps.find(
    (s) =>
      s.min_replicas === 1 && !s.sustained && s.workers === wk && s.target_per_s > (top?.target_per_s ?? 0),
  );
  // Redis's CPU a PUT falls as the rate rises (fixed costs of each wake-up shared by more commands):
  // the cost at the busiest min_replicas 1 step whose rate was met is the one to project from, plus
  // what following agents add at the lag runs' rate (their cost over the same PUTs without agents).
  const mr1 = steps.filter((s) => s.min_replicas === 1);
  const busiest = mr1
    .filter((s) => s.achieved_per_s >= 0.9 * s.target_per_s)
    .sort((a, b) => b.target_per_s - a.target_per_s)[0];
  const apiOnly = (busiest ?? mr1[0])?.redis_cpu_us_per_put ?? Number.NaN;
  const sameRate = mr1.find((s) => s.target_per_s === O['lag-rate'])?.redis_cpu_us_per_put ?? apiOnly;
  const agentsAdd = Math.max(0, Math.max(0, ...lag.map((l) => l.redis_cpu_us_per_put)) - sameRate);
  const perPut = round(apiOnly + agentsAdd, 1);
  const saturate = perPut > 0 ? Math.floor(1e6 / perPut) : Number.NaN;
  const many = lag.at(-1);
  const perGiB = Math.floor(2 ** 30 / Math.max(1, memory.bytes_per_computer_without_stream));
  const lagText = lag
    .map(
      (l) =>
        `${l.hosts} hosts (${l.computers} computers) at ${l.put_rate}/s: answer → acknowledged p50 ${l.lag_p50_ms} / p99 ${l.lag_p99_ms} ms, send → acknowledged p50 ${l.send_to_ack_p50_ms} / p99 ${l.send_to_ack_p99_ms} ms, the agents' own lag p50 ${l.agent_metric_p50_ms} / p99 ${l.agent_metric_p99_ms} ms`,
    )
    .join('; ');
  const statement = [
    `Machine: ${input.shared}. The figures are this machine's, not a server's.`,
    `Changes: one Sentinel-managed Redis with one replica and --redis-min-replicas 1 sustained ${top?.target_per_s ?? 0} PUT/s (p99 ${top?.p99_ms ?? '-'} ms, ${top?.workers ?? '-'} API worker(s)); the baseline without WAIT (min_replicas 0) ${Math.max(0, ...sustained.map((s) => s.sustained_min_replicas_0))} PUT/s in the same run. The limit: ${limit(firstFail)}.`,
    `Redis Cluster: a change costs the primary about ${apiOnly} µs of CPU for the API's script and WAIT at ${busiest?.target_per_s ?? '-'}/s (more at lower rates: ${mr1[0]?.redis_cpu_us_per_put ?? '-'} µs at ${mr1[0]?.target_per_s ?? '-'}/s), and agents following and acknowledging it add about ${round(agentsAdd, 1)} µs (at ${O['lag-rate']}/s): ${perPut} µs in all, so its one command thread would saturate near ${saturate.toLocaleString('en')} changes/s, ${top ? `${round(saturate / top.target_per_s, 1)}× the rate sustained here` : 'while no step with min_replicas 1 met the bound in this run'}: ${saturate > (top?.target_per_s ?? 0) ? 'below that one primary suffices and Cluster (or nodes split over several Sentinel groups) buys nothing; API replicas run out first' : 'Redis is already the limit'}.`,
    `Hosts: ${lagText} (${STUB_LABEL}). Each host holds ${many?.redis_connections_per_host ?? '-'} Redis connections (maxclients ${input.maxclients}: about ${Math.floor(input.maxclients / Math.max(1, many?.redis_connections_per_host ?? 1)).toLocaleString('en')} hosts, fewer the API's connections); ${many?.hosts ?? 0} idle hosts cost the primary ${many?.idle_redis_primary_pct ?? '-'}% of a core in all.`,
    `Computers: ${memory.bytes_per_computer_without_stream} bytes of Redis memory each with a ${O.rules}-rule policy (${memory.bytes_per_computer} with its share of the change stream): about ${perGiB.toLocaleString('en')} computers per GiB.`,
  ];
  console.log('\ncapacity statement');
  for (const s of statement) console.log(`- ${s}`);
  return { note: input.shared, options: O, steps, sustained, lag, memory, statement };
}
