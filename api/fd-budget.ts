/**
 * The API's file-descriptor budget. Every open event stream holds a socket,
 * so the process's open-files limit (RLIMIT_NOFILE) must cover the stream
 * limit with room to spare: 2 × EGRESSD_SSE_MAX (each stream, and as many
 * ordinary connections and reconnecting clients again) + 1024 (Redis, the
 * listening socket, files, and in `egressd all` the agent's BPF objects,
 * cgroups and DNS sockets). When a process runs out, every accept() fails and
 * every other client is refused, so the budget is checked at start.
 *
 * Node raises its soft limit to the hard one when it starts, so the limit
 * read here is the one that counts.
 */
import { readFileSync } from 'node:fs';

/** Descriptors that the process needs besides its event streams. */
export const FD_MARGIN = 1024;

/** Open files that `sseMax` event streams need. */
export function fdsNeeded(sseMax: number): number {
  return 2 * sseMax + FD_MARGIN;
}

/** The soft "Max open files" of a /proc/<pid>/limits text (Infinity for unlimited), if it has one. */
export function parseOpenFilesLimit(limits: string): number | undefined {
  const m = /^Max open files\s+(\S+)/m.exec(limits);
  if (!m) return undefined;
  if (m[1] === 'unlimited') return Number.POSITIVE_INFINITY;
  const n = Number(m[1]);
  return Number.isSafeInteger(n) ? n : undefined;
}

export interface FdBudget {
  /** The soft open-files limit, undefined when it could not be read. */
  limit: number | undefined;
  needed: number;
  ok: boolean;
  /** What to change when not ok. */
  message: string;
}

/** Checks the process's open-files limit against what `sseMax` event streams need. */
export function checkFdBudget(
  sseMax: number,
  readLimits: () => string = () => readFileSync('/proc/self/limits', 'utf8'),
): FdBudget {
  const needed = fdsNeeded(sseMax);
  let limit: number | undefined;
  try {
    limit = parseOpenFilesLimit(readLimits());
  } catch {
    limit = undefined;
  }
  const ok = limit === undefined || limit >= needed;
  const message = ok
    ? `open-files limit ${limit ?? 'unknown'} covers ${sseMax} event streams`
    : `the open-files limit (RLIMIT_NOFILE) is ${limit}, below the ${needed} that EGRESSD_SSE_MAX=${sseMax} event streams need (2 × ${sseMax} + ${FD_MARGIN}): when it runs out every request is refused. Raise it (systemd: LimitNOFILE= in the unit, as daemon/systemd/*.service set; a shell: ulimit -n) or lower EGRESSD_SSE_MAX`;
  return { limit, needed, ok, message };
}
