/**
 * The agent: makes the kernel enforce what Redis says for this node.
 *
 * - At start, and after every Redis outage, a full resync: every computer of
 *   the node is attached (or adopted) with its policy, pinned computers that
 *   Redis no longer has are detached, and the enforced version of each is
 *   acknowledged. Then it follows the node's change stream from the
 *   snapshot's position, so no change between the two is missed.
 * - While Redis is unreachable it keeps enforcing what is pinned and retries
 *   with backoff; it never detaches because Redis is silent.
 * - A computer whose cgroup does not exist yet is attached when it appears;
 *   one whose cgroup disappears (the sandbox ended) is detached and its pins
 *   removed (inotify). A cgroup removed and made again at the path is
 *   attached afresh (the watcher compares cgroup ids), and a periodic check
 *   compares every attachment's cgroup id with the path's: what it repairs
 *   it logs. Under a sandbox root the guard refuses the new cgroup's calls
 *   until then (see guard.ts).
 * - Whatever the store says, it attaches only below its sandbox roots and
 *   never to its own cgroup, Redis's, or an ancestor of them
 *   (`cgroup_forbidden`); a computer that gets no DNS proxy port is enforced
 *   with DNS refused (`dns_ports_exhausted`). Each computer's state goes to
 *   Redis with its version, so the API says why a policy is not enforced.
 * - Versions never go back: an older one is refused (`version_regressed`, versions.ts).
 * - A store that comes back empty or replaced is followed only once an operator
 *   accepts it (`store_lost`, store-identity.ts); a Redis Cluster node ends the agent.
 */
import path from 'node:path';
import type { Logger } from 'pino';
import { EgressdError } from '../../policy/errors.js';
import type { Policy } from '../../policy/types.js';
import { RedisClusterError, StoreUnavailableError } from '../../store/errors.js';
import { measureMapMemory } from '../metrics.js';
import { type CgroupChange, CgroupWatcher, cgroupIdAt } from './cgroup-watch.js';
import { dnsSettings } from './dns-settings.js';
import { LearnedPublisher } from './learned-publisher.js';
import type { AgentOptions, AgentStatus, ComputerReport } from './options.js';
import { normaliseCgroup, placementProblem, refuseProtectedInRoots } from './placement.js';
import { computerReports, Reports } from './reports.js';
import { Revocations } from './revocations.js';
import { StoreFollower } from './store-identity.js';
import { VersionGate } from './versions.js';

interface Desired {
  cgroup: string;
  policy: Policy;
  version: number;
  /** The computer's own resolver (`dns_upstream`, stored form "addr:port" / "[v6]:port"); null: the proxy's default. */
  dnsUpstream: string | null;
}

export class Agent {
  status: AgentStatus = 'starting';
  private readonly desired = new Map<string, Desired>();
  /** What was reported (or is to report) per computer, and its acknowledgement. */
  private readonly reports: Reports;
  private readonly revocations: Revocations;
  private readonly versions: VersionGate;
  private readonly follower: StoreFollower;
  private readonly failures = new Map<string, string>();
  private readonly reconciling = new Map<string, Promise<void>>();
  private readonly learnedOut: LearnedPublisher;
  private expiry: NodeJS.Timeout | undefined;
  private verifying: NodeJS.Timeout | undefined;
  private readonly roots: string[];
  private readonly protectedCgroups: string[];
  private readonly watcher: CgroupWatcher;
  private streamId = '0-0';
  private seq = 0;
  private running: Promise<void> | undefined;
  private stopping = false;
  private wake: (() => void) | undefined;
  private readonly log: Logger;
  private firstSync: { promise: Promise<void>; resolve: () => void };

  constructor(private readonly opts: AgentOptions) {
    this.log = opts.log.child({ component: 'agent', node: opts.node });
    this.learnedOut = new LearnedPublisher(opts.store);
    this.reports = new Reports(opts.store, opts.node, this.log);
    this.revocations = new Revocations(opts.enforcer, this.reports, this.log, opts.onRevoked);
    this.versions = new VersionGate(opts, this.reports, this.log);
    this.follower = new StoreFollower({ ...opts, log: this.log, checkMs: opts.storeCheckMs ?? 5000 });
    this.watcher = new CgroupWatcher(opts.cgroupRoot, (id, change) => this.onCgroupChange(id, change));
    this.roots = (opts.roots ?? []).map(normaliseCgroup);
    this.protectedCgroups = (opts.protectedCgroups ?? []).map(normaliseCgroup);
    refuseProtectedInRoots(this.protectedCgroups, this.roots);
    let resolve = () => {};
    const promise = new Promise<void>((r) => {
      resolve = r;
    });
    this.firstSync = { promise, resolve };
  }

  /** What the proxy learned for a computer: published to Redis within a second (for the API and deny events). */
  learned(id: string, name: string, addresses: number[][], ttlSeconds: number): void {
    this.learnedOut.add(id, name, addresses, ttlSeconds);
  }

  /** Starts following; resolves after the first full resync (enforcement of pins never stops meanwhile). */
  async start(): Promise<void> {
    if (this.roots.length > 0) this.opts.enforcer.guard.attachRoots(this.roots);
    measureMapMemory(this.opts.metrics, this.opts.enforcer);
    this.expiry ??= setInterval(() => this.opts.enforcer.expireLearned(), 10_000).unref();
    this.verifying ??= setInterval(() => this.verify(), this.opts.verifyIntervalMs ?? 5000).unref();
    this.running ??= this.loop();
    await Promise.race([this.firstSync.promise, this.running]);
  }

  async stop(): Promise<void> {
    this.stopping = true;
    clearInterval(this.expiry);
    clearInterval(this.verifying);
    this.learnedOut.close();
    this.wake?.();
    this.watcher.close();
    // A blocked XREAD ends when the store is closed after this; do not wait for it.
    await Promise.race([this.running, new Promise((r) => setTimeout(r, 200))]);
    this.setStatus('stopped');
  }

  /** Which store the agent follows, or that it is lost (for the node status). */
  storeState() {
    return this.follower.state();
  }

  private setStatus(status: AgentStatus): void {
    const connected = status === 'following' || status === 'syncing' || status === 'store_lost';
    this.opts.metrics?.redisConnected.set(connected ? 1 : 0);
    if (this.status === status) return;
    this.log.info({ from: this.status, to: status }, 'agent status');
    this.status = status;
  }

  private async loop(): Promise<void> {
    let backoff = 100;
    let needResync = true;
    while (!this.stopping) {
      try {
        if (needResync) {
          const status = this.opts.store.redis.status;
          if (status === 'wait' || status === 'end')
            await this.opts.store.guard(() => this.opts.store.connect());
          // Still connecting (the store connects as it is made): wait for it rather than fail the
          // resync and warn that Redis is unreachable when it is merely not connected yet.
          else if (status !== 'ready') await this.opts.store.connected(2000);
          await this.opts.store.refuseCluster();
          if (this.status !== 'store_lost') this.setStatus('syncing');
          const followed = await this.resync();
          this.firstSync.resolve();
          if (!followed) {
            // Keeps what it enforces; checks again (a reconnect checks at once).
            this.setStatus('store_lost');
            await this.sleep(this.opts.storeCheckMs ?? 5000);
            continue;
          }
          needResync = false;
        }
        this.setStatus('following');
        await this.settle();
        const changes = await this.opts.store.readChanges(this.opts.node, this.streamId, {
          count: 500,
          blockMs: this.opts.blockMs ?? 5000,
        });
        const ids = new Set<string>();
        const written = new Map<string, number>();
        for (const change of changes) {
          written.set(change.computerId, Date.parse(change.at));
          if (change.seq !== this.seq + 1) {
            // Records between were trimmed (MAXLEN) before we read them.
            this.log.warn({ expected: this.seq + 1, got: change.seq }, 'missed change records: resyncing');
            needResync = true;
            break;
          }
          ids.add(change.computerId);
          this.streamId = change.streamId;
          this.seq = change.seq;
        }
        // Together: their Redis reads share round trips (auto-pipelining). All settle before a
        // failure leads to a resync, so that no refresh from before it lands after it.
        const refreshed = await Promise.allSettled(
          [...ids].map(async (id) => {
            await this.refresh(id);
            const at = written.get(id);
            if (at !== undefined && !Number.isNaN(at)) {
              this.opts.metrics?.enforcementLagSeconds.observe(Math.max(0, Date.now() - at) / 1000);
            }
          }),
        );
        for (const r of refreshed) if (r.status === 'rejected') throw r.reason;
        if (await this.follower.changed()) needResync = true;
        backoff = 100;
      } catch (err) {
        if (this.stopping) break;
        if (err instanceof RedisClusterError) throw err;
        if (!(err instanceof StoreUnavailableError)) {
          this.log.error({ err }, 'agent loop failed; resyncing');
        } else {
          this.setStatus('disconnected');
          this.log.warn({ retryInMs: backoff }, 'Redis unreachable: enforcing what is pinned, retrying');
        }
        needResync = true;
        await this.sleep(backoff);
        backoff = Math.min(backoff * 2, this.opts.maxBackoffMs ?? 5000);
      }
    }
  }

  private sleep(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const timer = setTimeout(resolve, ms);
      this.wake = () => {
        clearTimeout(timer);
        resolve();
      };
    });
  }

  /**
   * Brings every computer of the node, and nothing else, to what Redis holds; false (nothing
   * changed) when the store is lost.
   */
  private async resync(): Promise<boolean> {
    const started = Date.now();
    const check = await this.follower.check();
    this.reports.hold(check === 'lost');
    if (check === 'lost') return false;
    if (check === 'adopted') {
      // Versions start again in the accepted store: the lost one's reports and versions go.
      this.versions.reset(this.opts.enforcer.pinnedIds());
      this.reports.clear();
    }
    this.reports.rewriteAll();
    const snapshot = await this.opts.store.listComputersOfNode(this.opts.node);
    const seen = new Set<string>();
    for (const c of snapshot.computers) {
      seen.add(c.id);
      this.desired.set(c.id, {
        cgroup: c.cgroup,
        policy: c.policy,
        version: c.version,
        dnsUpstream: c.dnsUpstream,
      });
      await this.reconcile(c.id);
    }
    for (const id of [...this.desired.keys()]) if (!seen.has(id)) this.forget(id);
    for (const id of this.opts.enforcer.pinnedIds()) if (!seen.has(id)) this.forget(id);
    const pruned = this.opts.enforcer.pruneGoverned();
    if (pruned > 0) this.log.info({ pruned }, 'guard: dropped cgroups that went away while no agent ran');
    this.streamId = snapshot.streamId;
    this.seq = snapshot.seq;
    await this.settle();
    this.log.info({ computers: snapshot.computers.length, ms: Date.now() - started }, 'resynced');
    return true;
  }

  /** Re-reads one computer from Redis and enforces it (or forgets it when it is gone or moved away). */
  private async refresh(id: string): Promise<void> {
    // Both in one round trip (auto-pipelining); the policy is ignored when the computer is not ours.
    const [computer, policy] = await Promise.all([
      this.opts.store.getComputer(id),
      this.opts.store.getPolicy(id),
    ]);
    if (!computer || computer.node !== this.opts.node) {
      this.forget(id);
      return;
    }
    this.desired.set(id, {
      cgroup: computer.cgroup,
      // The stored record: its rules are parsed only if the enforcer must compile them.
      policy: policy ?? { mode: 'unrestricted', rules: [] },
      version: policy?.version ?? 0,
      dnsUpstream: computer.dnsUpstream,
    });
    await this.reconcile(id);
  }

  /** Makes the kernel hold the desired state of `id`; records what to acknowledge. */
  private reconcile(id: string): Promise<void> {
    // One reconcile at a time per computer; later calls see the latest desired state.
    const run = (this.reconciling.get(id) ?? Promise.resolve()).then(() => this.reconcileNow(id));
    this.reconciling.set(id, run);
    return run.finally(() => {
      if (this.reconciling.get(id) === run) this.reconciling.delete(id);
    });
  }

  private async reconcileNow(id: string): Promise<void> {
    const want = this.desired.get(id);
    if (!want || (await this.versions.refuses(id, want.version))) return;
    const forbidden = placementProblem(want.cgroup, this.roots, this.protectedCgroups);
    if (forbidden !== undefined) {
      this.watcher.untrack(id);
      this.opts.enforcer.detach(id);
      this.opts.proxy?.release(id);
      this.failures.delete(id);
      this.reports.set(id, { version: want.version, state: 'cgroup_forbidden', reason: forbidden });
      return;
    }
    const full = this.dir(want.cgroup);
    this.watcher.track(id, full);
    try {
      const dns = await dnsSettings(this.opts, id, want.policy, want.dnsUpstream);
      if (this.desired.get(id) !== want) return; // changed meanwhile: the next reconcile applies it
      // After a restart the kernel still has the learned addresses but not their names: Redis has them.
      const names = this.opts.enforcer.awaitsLearnedNames(id, want.cgroup)
        ? await this.opts.store.getLearned(id).catch(() => undefined)
        : undefined;
      if (this.desired.get(id) !== want) return;
      const started = process.hrtime.bigint();
      let { changed } = this.opts.enforcer.attach(
        id,
        want.cgroup,
        want.policy,
        BigInt(want.version),
        dns.settings,
        names,
      );
      // Another store was accepted: an equal version number there is not the same policy.
      if (this.versions.restamp(id) && !changed) {
        this.opts.enforcer.apply(id, want.policy, BigInt(want.version), dns.settings);
        changed = true;
      }
      this.opts.metrics?.applySeconds.observe(Number(process.hrtime.bigint() - started) / 1e9);
      this.failures.delete(id);
      this.versions.enforced(id, want.version);
      const report = {
        version: want.version,
        state: dns.exhausted ? ('dns_ports_exhausted' as const) : ('enforced' as const),
        ...(dns.exhausted ? { reason: dns.exhausted } : {}),
      };
      // Reported once the revocation pass has closed what the new policy refuses (settle()).
      if (changed) this.revocations.add(id, want.cgroup, report);
      else this.reports.set(id, report);
    } catch (err) {
      if (err instanceof EgressdError && err.code === 'CGROUP_MISSING') {
        // Attached as soon as the cgroup appears (CgroupWatcher). A stale attachment goes.
        this.opts.enforcer.detach(id);
        this.failures.delete(id);
        this.reports.set(id, this.missing(want.version, full));
        return;
      }
      this.reports.delete(id);
      const message = err instanceof Error ? err.message : String(err);
      this.failures.set(id, message);
      this.log.error(
        { computer: id, err: message },
        'could not enforce the policy; the previous one stays in force',
      );
    }
  }

  /**
   * The periodic check: every computer's attachment against the cgroup that
   * is at its path now. A mismatch (a cgroup replaced between two inotify
   * checks, an event lost) is repaired and logged. The state and map gauges
   * are updated on the way.
   */
  verify(): number {
    this.reports.countStates(this.opts.metrics);
    measureMapMemory(this.opts.metrics, this.opts.enforcer);
    let repaired = 0;
    for (const [id, want] of this.desired) {
      const reported = this.reports.get(id);
      const refused = reported?.state === 'cgroup_forbidden' || reported?.state === 'version_regressed';
      if (refused || this.failures.has(id) || this.reconciling.has(id)) continue;
      const attached = this.opts.enforcer.attachedCgroupId(id);
      const now = cgroupIdAt(this.dir(want.cgroup));
      if (attached === now) continue;
      if (attached === undefined && now === 0n && reported?.state === 'cgroup_missing') continue;
      repaired++;
      this.log.warn(
        { computer: id, cgroup: want.cgroup, attached: String(attached ?? 0n), atPath: String(now) },
        'attachment does not match the cgroup at its path: repairing',
      );
      this.opts.metrics?.attachmentRepairs.inc();
      void this.reconcile(id).then(() => this.settle().catch(() => {}));
    }
    return repaired;
  }

  /** The directory of a computer's cgroup. */
  private dir(cgroup: string): string {
    return path.join(this.opts.cgroupRoot, path.posix.normalize(`/${cgroup}`));
  }

  /** The report of a computer whose cgroup is missing: the path looked for, on which node, and what to do. */
  private missing(version: number, full: string) {
    const reason = `cgroup ${full} does not exist on node ${this.opts.node}: it is attached as soon as it is made (mkdir ${full}); if the path is wrong, register the computer again with the right one`;
    return { version, state: 'cgroup_missing' as const, reason };
  }

  /** Revokes what the policies just put in force refuse (one pass), then writes the acknowledgements. */
  private async settle(): Promise<void> {
    await this.revocations.run();
    await this.reports.flush();
  }

  /** Detaches a computer that Redis no longer has on this node. */
  private forget(id: string): void {
    this.desired.delete(id);
    this.revocations.drop(id);
    this.versions.forget(id);
    this.reports.delete(id);
    this.failures.delete(id);
    this.watcher.untrack(id);
    this.opts.enforcer.detach(id);
    this.opts.proxy?.release(id);
    this.log.info({ computer: id }, 'detached');
  }

  private onCgroupChange(id: string, change: CgroupChange): void {
    const want = this.desired.get(id);
    if (change === 'gone') {
      this.log.info({ computer: id }, 'cgroup gone: detaching until it is back');
      this.opts.enforcer.detach(id);
      if (want) this.reports.set(id, this.missing(want.version, this.dir(want.cgroup)));
    } else {
      // A replaced cgroup is another cgroup: attach() sees the new id and starts over.
      this.log.info({ computer: id, change }, `cgroup ${change}: attaching`);
      void this.reconcile(id).then(() => this.settle().catch(() => {}));
    }
    void this.settle().catch(() => {});
  }

  /** Desired vs. enforced version per computer. */
  report(): ComputerReport[] {
    return computerReports(this.desired, this.reports, this.failures);
  }
}
