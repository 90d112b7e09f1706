/**
 * The node's word on itself in Redis (store/nodes.ts), so that operators see
 * which kernel each node runs and which kernel-dependent features are on,
 * off by choice, or unsupported there and why (GET /api/v1/nodes, and the
 * counts in /readyz): a feature that the kernel lacks is never claimed; and
 * which store the agent follows, or that it lost it (store-identity.ts). Said
 * at start and every NODE_STATUS_INTERVAL_MS; a Redis outage only delays it.
 */
import { readFileSync } from 'node:fs';
import { release } from 'node:os';
import type { Logger } from 'pino';
import {
  type FeatureState,
  NODE_STATUS_INTERVAL_MS,
  type NodeStoreState,
  type Store,
} from '../../store/store.js';
import type { Enforcer } from '../kernel/enforcer.js';

const VERSION = (
  JSON.parse(readFileSync(new URL('../../../package.json', import.meta.url), 'utf8')) as { version: string }
).version;

/** The kernel-dependent features of this node, as the enforcer found them. */
export function nodeFeatures(enforcer: Enforcer): Record<string, FeatureState> {
  return {
    revocation:
      enforcer.revocation === 'unsupported'
        ? { state: 'unsupported', problem: enforcer.revocationProblem ?? '' }
        : { state: enforcer.revocation },
    // Part of the hooks' object: a kernel without it refuses the whole object, and egressd does not start.
    name_check: { state: 'on' },
  };
}

export class NodeStatusPublisher {
  private timer: NodeJS.Timeout | undefined;
  private readonly startedAt = Date.now();

  constructor(
    private readonly store: Store,
    private readonly node: string,
    private readonly enforcer: Enforcer,
    private readonly log: Logger,
    /** Which store the agent follows, or that it is lost (Agent.storeState). */
    private readonly storeState: () => NodeStoreState | undefined = () => undefined,
  ) {}

  start(): void {
    void this.publish();
    this.timer ??= setInterval(() => void this.publish(), NODE_STATUS_INTERVAL_MS).unref();
  }

  stop(): void {
    clearInterval(this.timer);
    this.timer = undefined;
  }

  /** Says it now (the store became lost or followed again), not only every NODE_STATUS_INTERVAL_MS. */
  async publish(): Promise<void> {
    const store = this.storeState();
    try {
      await this.store.putNodeStatus({
        node: this.node,
        kernel: release(),
        version: VERSION,
        startedAt: this.startedAt,
        seenAt: Date.now(),
        features: nodeFeatures(this.enforcer),
        ...(store ? { store } : {}),
      });
    } catch (err) {
      this.log.debug({ err: (err as Error).message }, 'node status not written (Redis unavailable)');
    }
  }
}
