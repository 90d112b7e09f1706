/**
 * Live revocation (bpf/revoke.bpf.c): once a computer's new policy is
 * written, closes every connected socket of the computer (its cgroup and the
 * cgroups below) whose peer that policy refuses, judged by the connect
 * hooks' own verdict code in TCP and UDP socket iterators, closed by the
 * kernel's bpf_sock_destroy() from the iterator (Linux 6.5+; `kfunc`), or,
 * where the kernel lacks it, by netlink SOCK_DESTROY from here (`netlink`:
 * CONFIG_INET_DIAG_DESTROY, in Debian 12's 6.1), one request a socket.
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
import { type ComputerValue, encodeCgroupKey, encodeComputer, MAPS, REVOKE_MAPS } from './abi.js';
import * as bpf from './libbpf.js';
import { decodeRevoked, type RevokedRecord } from './records.js';
import { type DestroyTarget, decodeNetlinkAck, encodeSockDestroy } from './uapi.js';

const BUILD = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../../build');
/** The iterators that close sockets themselves, and those that only judge them (netlink closes). */
const OBJECTS = {
  kfunc: path.join(BUILD, 'revoke.bpf.o'),
  netlink: path.join(BUILD, 'revoke-netlink.bpf.o'),
};
const ENOENT = 2;
const EOPNOTSUPP = 95;

/** A namespace's iterators, and its netlink socket when netlink closes the sockets. */
interface Walk {
  iters: number[];
  diag?: number;
}

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

  private seq = 0;

  private constructor(
    private readonly obj: bpf.BpfObject,
    private readonly links: { tcp: number; udp: number },
    private readonly revoking: number,
    /** This process's network namespace: an open fd to come back to, and its inode. */
    private readonly home: { fd: number; ino: number },
    /** How sockets are closed: by the iterators (bpf_sock_destroy), or by netlink SOCK_DESTROY. */
    readonly mechanism: 'kfunc' | 'netlink',
  ) {}

  /** open(), or why this kernel cannot revoke. */
  static tryOpen(maps: Record<string, number>, netlinkOnly = false): { revoker?: Revoker; problem?: string } {
    try {
      return { revoker: Revoker.open(maps, netlinkOnly) };
    } catch (err) {
      if (!(err instanceof EgressdError && err.code === 'REVOCATION_UNSUPPORTED')) throw err;
      return { problem: err.message };
    }
  }

  /**
   * Loads the iterators with egress.bpf.o's maps (`maps`, by name): those
   * that close sockets themselves, else (or with `netlinkOnly`) those that
   * judge only, where netlink SOCK_DESTROY works. Throws EgressdError
   * REVOCATION_UNSUPPORTED, saying why, where neither can.
   */
  static open(maps: Record<string, number>, netlinkOnly = false): Revoker {
    let kfuncProblem = 'not tried';
    if (!netlinkOnly) {
      try {
        return Revoker.load(maps, 'kfunc');
      } catch (err) {
        kfuncProblem = (err as Error).message;
      }
    }
    try {
      const diag = bpf.openSockDiag();
      try {
        // A socket that does not exist: ENOENT where SOCK_DESTROY works, EOPNOTSUPP where it does not.
        const lo = [127, 0, 0, 1];
        const probe: DestroyTarget = {
          family: 4,
          protocol: 6,
          localAddress: lo,
          localPort: 1,
          peerAddress: lo,
          peerPort: 1,
          cookie: 0n,
        };
        const errno = Revoker.destroy(diag, 0, probe);
        if (errno === EOPNOTSUPP)
          throw new Error('netlink SOCK_DESTROY: EOPNOTSUPP (no CONFIG_INET_DIAG_DESTROY)');
      } finally {
        closeSync(diag);
      }
      return Revoker.load(maps, 'netlink');
    } catch (err) {
      throw new EgressdError(
        'REVOCATION_UNSUPPORTED',
        `this kernel cannot close a computer's connections when its policy tightens: no bpf_sock_destroy ` +
          `(${kfuncProblem}; Linux 6.5+), and no netlink SOCK_DESTROY (${(err as Error).message})`,
        { cause: err },
      );
    }
  }

  private static load(maps: Record<string, number>, mechanism: 'kfunc' | 'netlink'): Revoker {
    const objectPath = OBJECTS[mechanism];
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
      const iterLinks = { tcp: links[0] ?? -1, udp: links[1] ?? -1 };
      const revoking = bpf.mapFd(obj, REVOKE_MAPS.revoking);
      return new Revoker(
        obj,
        iterLinks,
        revoking,
        { fd: home, ino: statSync('/proc/self/ns/net').ino },
        mechanism,
      );
    } catch (err) {
      for (const fd of links) bpf.closeFd(fd);
      bpf.closeObject(obj);
      throw err;
    }
  }

  /** netlink SOCK_DESTROY of one socket: 0, or the errno (ENOENT: gone already). */
  private static destroy(diag: number, seq: number, t: DestroyTarget): number {
    const answer = bpf.netlinkRequest(diag, encodeSockDestroy(seq, t));
    return decodeNetlinkAck(answer) ?? EOPNOTSUPP;
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
    const walks: Walk[] = [];
    try {
      walks.push(this.walkHere());
      for (const nsPath of this.namespaces(targets)) {
        const walk = this.walkIn(nsPath);
        if (walk) walks.push(walk);
      }
      // Every iterator at once, on the thread pool: most of a pass is the kernel walking hash buckets.
      const outputs = await Promise.all(walks.map((w) => Promise.all(w.iters.map(readAll))));
      walks.forEach((walk, i) => {
        for (const r of (outputs[i] ?? []).flatMap(decodeRevoked)) {
          if (walk.diag !== undefined) {
            const socket = { ...r.socket, protocol: r.protocol, peerPort: r.port };
            const errno = Revoker.destroy(walk.diag, ++this.seq, socket);
            if (errno === ENOENT) continue; // closed meanwhile, by itself
            r.error = errno === 0 ? 0 : -errno;
          }
          out.get(byCgroup.get(r.cgroupId) ?? '')?.push(r);
        }
      });
      return out;
    } finally {
      for (const w of walks)
        for (const fd of [...w.iters, ...(w.diag === undefined ? [] : [w.diag])]) closeSync(fd);
      for (const t of targets) bpf.mapDelete(this.revoking, encodeCgroupKey(t.value.cgroupId));
    }
  }

  /** A TCP and a UDP iterator of the calling thread's namespace (and a netlink socket there, for netlink). */
  private walkHere(): Walk {
    const fds: number[] = [];
    try {
      for (const link of [this.links.tcp, this.links.udp]) fds.push(bpf.iterCreate(link));
      return this.mechanism === 'netlink' ? { iters: fds, diag: bpf.openSockDiag() } : { iters: fds };
    } catch (err) {
      for (const fd of fds) closeSync(fd);
      throw err;
    }
  }

  /** walkHere() of the namespace at `nsPath`, entered for the moment it takes. */
  private walkIn(nsPath: string): Walk | undefined {
    let ns: number;
    try {
      ns = openSync(nsPath, 'r');
    } catch {
      return undefined; // the task is gone, and its namespace with it unless another task holds it
    }
    try {
      bpf.enterNetns(ns);
      try {
        return this.walkHere();
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
