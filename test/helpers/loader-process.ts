/**
 * A separate loader process for adoption tests: opens (or adopts) the pins,
 * runs the actions given as JSON in argv[2], prints one JSON line of
 * results, and exits without detaching anything.
 *
 *   node dist/test/helpers/loader-process.js '{"pinDir":..., "cgroupRoot":..., "actions":[...]}'
 */
import { Enforcer } from '../../daemon/kernel/enforcer.js';
import type { Policy } from '../../policy/types.js';

export type LoaderAction =
  | { op: 'attach'; id: string; cgroup: string; policy: Policy; version: number }
  | { op: 'apply'; id: string; policy: Policy; version: number }
  | { op: 'list' };

export interface LoaderRequest {
  pinDir: string;
  cgroupRoot: string;
  actions: LoaderAction[];
}

const request = JSON.parse(process.argv[2] ?? '{}') as LoaderRequest;
const enforcer = Enforcer.open({ pinDir: request.pinDir, cgroupRoot: request.cgroupRoot });
const results: unknown[] = [];
for (const action of request.actions) {
  if (action.op === 'attach') {
    results.push(enforcer.attach(action.id, action.cgroup, action.policy, BigInt(action.version)));
  } else if (action.op === 'apply') {
    enforcer.apply(action.id, action.policy, BigInt(action.version));
    results.push(null);
  } else {
    results.push(enforcer.list());
  }
}
await enforcer.sweep();
enforcer.close();
process.stdout.write(
  `${JSON.stringify({ adopted: enforcer.adopted, results }, (_, v) => (typeof v === 'bigint' ? v.toString() : v))}\n`,
);
