/**
 * Which cgroups the agent may attach to, whatever the store says: only
 * cgroups strictly under one of its sandbox roots, and never the cgroup of
 * egressd itself or of its Redis, nor an ancestor of them (a policy there
 * would lock the agent, the API or Redis out). Paths are relative to the
 * cgroup2 mount, without leading or trailing '/'. Pure: no I/O.
 */
import { readFileSync } from 'node:fs';
import { EgressdError } from '../../policy/errors.js';

/** `child` lies strictly below `parent` ('' is the mount's root). */
export function isBelow(child: string, parent: string): boolean {
  return parent === '' ? child !== '' : child.startsWith(`${parent}/`);
}

export function normaliseCgroup(text: string): string {
  return text.replace(/^\/+/, '').replace(/\/+$/, '');
}

/**
 * Why the agent must not attach to `cgroup`, or undefined when it may.
 * `protectedCgroups` are the cgroups of egressd's own processes and of Redis.
 */
export function placementProblem(
  cgroup: string,
  roots: readonly string[],
  protectedCgroups: readonly string[],
): string | undefined {
  const c = normaliseCgroup(cgroup);
  if (roots.length > 0 && !roots.some((r) => isBelow(c, normaliseCgroup(r)))) {
    return `cgroup "${c}" is outside this agent's sandbox roots (${roots.join(', ')}): register the computer below one of them`;
  }
  for (const p of protectedCgroups) {
    const own = normaliseCgroup(p);
    if (own === c || isBelow(own, c)) {
      return `cgroup "${c}" holds egressd or its Redis (in "${own}"): a policy there would lock them out`;
    }
  }
  return undefined;
}

/** The cgroup v2 path of a process, relative to the mount ('' for the root), from /proc/PID/cgroup. */
export function cgroupOfProcess(pid: number | 'self' = 'self'): string | undefined {
  try {
    const line = readFileSync(`/proc/${pid}/cgroup`, 'utf8')
      .split('\n')
      .find((l) => l.startsWith('0::'));
    return line === undefined ? undefined : normaliseCgroup(line.slice(3).replace(/ \(deleted\)$/, ''));
  } catch {
    return undefined;
  }
}

/** Throws when egressd's own cgroup or its Redis's (`protectedCgroups`) is a sandbox root or below one. */
export function refuseProtectedInRoots(protectedCgroups: string[], roots: string[]): void {
  for (const p of protectedCgroups) {
    const root = roots.find((r) => p === r || isBelow(p, r));
    if (root !== undefined) {
      throw new EgressdError(
        'AGENT_IN_SANDBOX_ROOT',
        `egressd or its Redis runs in cgroup "${p}", inside the sandbox root "${root}", where the guard refuses every connection: run them outside it, or choose another --cgroup-root`,
      );
    }
  }
}
