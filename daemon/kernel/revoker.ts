/**
 * Live revocation (bpf/revoke.bpf.c): once a computer's new policy is
 * written, closes every connected socket of the computer (its cgroup and the
 * cgroups below) whose peer that policy refuses, judged by the connect
 * hooks' own verdict code, with the kernel's bpf_sock_destroy() from TCP and
 * UDP socket iterators (Linux 6.5+).
 *
 * A socket iterator walks the network namespace it is created in: a pass
 * walks the agent's, then each other namespace that a task of the computers
 * is in (found from their cgroup.procs), entered for the moment it takes to
 * create the iterators. One pass serves any number of computers. The
 * iterators run (the kernel walks the sockets) together on libuv's thread
 * pool, so a pass over many sockets does not hold up the agent's event loop
 * (the DNS proxy shares it); passes run one at a time.
 */
import { closeSync, openSync, read, readdirSync, readFileSync, statSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { EgressdError } from '../../policy/errors.js';
import {
  type ComputerValue,
  decodeRevoked,
  encodeCgroupKey,
  encodeComputer,
  MAPS,
  REVOKE_MAPS,
  type RevokedRecord,
} from './abi.js';
import * as bpf from './libbpf.js';

export const DEFAULT_REVOKE_OBJECT_PATH = path.resolve(
  path.dirname(fileURLToPath(import.meta.url)),
  '../../../build/revoke.bpf.o',
);

/** A computer whose sockets a pass judges: its storage value as written (with its cgroup id), its cgroup's path. */
export interface RevokeTarget {
  id: string;
  value: ComputerValue;
  cgroupPath: string;
}

/** Processes and threads read per pass to find the computers' namespaces, at most (a bound on a pass's cost). */
const MAX_TASKS = 100_000;

export class Revoker {
  private closed = false;
  /** The pass running, if any: the next waits for it ("revoking" is one for all). */
  private running: Promise<unknown> = Promise.resolve();

  private constructor(
    private readonly obj: bpf.BpfObject,
    private readonly links: { tcp: number; udp: number },
    private readonly revoking: number,
    /** This process's network namespace: an open fd to come back to, and its inode. */
    private readonly home: { fd: number; ino: number },
  ) {}

  /** open(), or why this kernel cannot revoke. */
  static tryOpen(maps: Record<string, number>): { revoker?: Revoker; problem?: string } {
    try {
      return { revoker: Revoker.open(maps) };
    } catch (err) {
      if (!(err instanceof EgressdError && err.code === 'REVOCATION_UNSUPPORTED')) throw err;
      return { problem: err.message };
    }
  }

  /**
   * Loads the iterators with egress.bpf.o's maps (`maps`, by name). Throws
   * EgressdError REVOCATION_UNSUPPORTED, saying why, where the kernel cannot.
   */
  static open(maps: Record<string, number>, objectPath = DEFAULT_REVOKE_OBJECT_PATH): Revoker {
    let obj: bpf.BpfObject;
    try {
      obj = bpf.openObject(objectPath);
    } catch (err) {
      throw new EgressdError('NO_BPF_OBJECT', `BPF object ${objectPath} is missing: run npm run build`, {
        cause: err,
      });
    }
    const links: number[] = [];
    try {
      for (const name of Object.values(MAPS)) {
        const fd = maps[name];
        if (fd !== undefined) bpf.reuseMap(obj, name, fd);
      }
      bpf.loadObject(obj);
      for (const program of ['eg_revoke_tcp', 'eg_revoke_udp']) {
        links.push(bpf.linkCreate(bpf.programFd(obj, program), 0, bpf.ATTACH.traceIter));
      }
      const home = openSync('/proc/self/ns/net', 'r');
      return new Revoker(
        obj,
        { tcp: links[0] ?? -1, udp: links[1] ?? -1 },
        bpf.mapFd(obj, REVOKE_MAPS.revoking),
        { fd: home, ino: statSync('/proc/self/ns/net').ino },
      );
    } catch (err) {
      for (const fd of links) bpf.closeFd(fd);
      bpf.closeObject(obj);
      throw new EgressdError(
        'REVOCATION_UNSUPPORTED',
        `this kernel cannot close a computer's connections when its policy tightens (${(err as Error).message}): ` +
          'live revocation needs Linux 6.5 or newer (bpf_sock_destroy from TCP and UDP socket iterators)',
        { cause: err },
      );
    }
  }

  /**
   * Closes the sockets of `targets` whose peer their policy refuses; returns,
   * per target id, one record per socket closed (error 0) or that could not be.
   */
  revoke(targets: readonly RevokeTarget[]): Promise<Map<string, RevokedRecord[]>> {
    const pass = this.running.then(() => this.revokeNow(targets));
    this.running = pass.catch(() => {});
    return pass;
  }

  private async revokeNow(targets: readonly RevokeTarget[]): Promise<Map<string, RevokedRecord[]>> {
    if (this.closed) throw new Error('the revoker is closed');
    const out = new Map(targets.map((t) => [t.id, [] as RevokedRecord[]]));
    if (targets.length === 0) return out;
    const byCgroup = new Map(targets.map((t) => [t.value.cgroupId, t.id]));
    for (const t of targets)
      bpf.mapUpdate(this.revoking, encodeCgroupKey(t.value.cgroupId), encodeComputer(t.value));
    const iters: number[] = [];
    try {
      iters.push(...this.iterators());
      for (const nsPath of this.namespaces(targets)) iters.push(...this.iteratorsIn(nsPath));
      // Every iterator at once, on the thread pool: most of a pass is the kernel walking hash buckets.
      for (const output of await Promise.all(iters.map(readAll))) {
        for (const r of decodeRevoked(output)) out.get(byCgroup.get(r.cgroupId) ?? '')?.push(r);
      }
      return out;
    } finally {
      for (const fd of iters) closeSync(fd);
      for (const t of targets) bpf.mapDelete(this.revoking, encodeCgroupKey(t.value.cgroupId));
    }
  }

  /** A TCP and a UDP iterator of the calling thread's namespace. */
  private iterators(): number[] {
    const iters: number[] = [];
    try {
      for (const link of [this.links.tcp, this.links.udp]) iters.push(bpf.iterCreate(link));
      return iters;
    } catch (err) {
      for (const fd of iters) closeSync(fd);
      throw err;
    }
  }

  /** iterators() of the namespace at `nsPath`, entered for the moment it takes to create them. */
  private iteratorsIn(nsPath: string): number[] {
    let ns: number;
    try {
      ns = openSync(nsPath, 'r');
    } catch {
      return []; // the task is gone, and its namespace with it unless another task holds it
    }
    try {
      bpf.enterNetns(ns);
      try {
        return this.iterators();
      } finally {
        this.goHome();
      }
    } finally {
      closeSync(ns);
    }
  }

  private goHome(): void {
    try {
      bpf.enterNetns(this.home.fd);
    } catch (err) {
      // Sockets this thread makes next (Redis, the API) would land in a sandbox's namespace: stop.
      process.stderr.write(
        `egressd: cannot return to its own network namespace (${(err as Error).message})\n`,
      );
      process.exit(70);
    }
  }

  /**
   * Network namespaces other than this process's that a task of a target is
   * in, one path each to open (a task's, read when the pass starts).
   */
  private namespaces(targets: readonly RevokeTarget[]): string[] {
    const found = new Map<number, string>([[this.home.ino, '']]);
    let budget = MAX_TASKS;
    const visit = (dir: string) => {
      let procs: string;
      try {
        procs = readFileSync(path.join(dir, 'cgroup.procs'), 'utf8');
      } catch {
        return; // removed meanwhile
      }
      for (const pid of procs.split('\n')) {
        if (!pid || budget <= 0) continue;
        let tasks: string[];
        try {
          tasks = readdirSync(`/proc/${pid}/task`);
        } catch {
          continue; // exited
        }
        for (const tid of tasks) {
          if (--budget < 0) break;
          const nsPath = `/proc/${pid}/task/${tid}/ns/net`;
          try {
            const ino = statSync(nsPath).ino;
            if (!found.has(ino)) found.set(ino, nsPath);
          } catch {
            // exited
          }
        }
      }
      let children: string[];
      try {
        children = readdirSync(dir, { withFileTypes: true })
          .filter((d) => d.isDirectory())
          .map((d) => d.name);
      } catch {
        return;
      }
      for (const child of children) visit(path.join(dir, child));
    };
    for (const t of targets) visit(t.cgroupPath);
    found.delete(this.home.ino);
    return [...found.values()];
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    bpf.closeFd(this.links.tcp);
    bpf.closeFd(this.links.udp);
    closeSync(this.home.fd);
    bpf.closeObject(this.obj);
  }
}

const readAsync = promisify(read);

/** Runs an iterator to its end (on the thread pool): everything the programs wrote. */
async function readAll(fd: number): Promise<Buffer> {
  const chunks: Buffer[] = [];
  const buf = Buffer.alloc(64 * 1024);
  for (;;) {
    const { bytesRead } = await readAsync(fd, buf, 0, buf.length, null);
    if (bytesRead <= 0) break;
    chunks.push(Buffer.from(buf.subarray(0, bytesRead)));
  }
  return Buffer.concat(chunks);
}
