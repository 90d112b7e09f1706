import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import test from 'ava';
import { pino } from 'pino';
import { judge, lostMessage, StoreFollower } from '../../daemon/agent/store-identity.js';
import { createAgentMetrics } from '../../daemon/metrics.js';
import type { Store, StoreIdentity } from '../../store/store.js';

const A = 'a'.repeat(32);
const B = 'b'.repeat(32);
const C = 'c'.repeat(32);
const id = (i: string, replaces: string[] = []): StoreIdentity => ({ id: i, createdAt: 1, replaces });

test('judge: the same store is followed; none remembered adopts or makes one', (t) => {
  t.deepEqual(judge(A, id(A)), { kind: 'same' });
  t.deepEqual(judge(undefined, id(A)), { kind: 'adopt', id: A, accepted: false });
  t.deepEqual(judge(undefined, undefined), { kind: 'make' });
});

test('judge: a store without identity or with another is lost, unless it replaces the remembered one', (t) => {
  t.deepEqual(judge(A, undefined), { kind: 'lost', found: '' });
  t.deepEqual(judge(A, id(B)), { kind: 'lost', found: B });
  t.deepEqual(judge(A, id(B, [C])), { kind: 'lost', found: B }, 'accepted for another lost store only');
  t.deepEqual(judge(A, id(B, [C, A])), { kind: 'adopt', id: B, accepted: true });
});

test('the lost message says what happened and what the operator must do', (t) => {
  t.regex(
    lostMessage('n1', A, ''),
    /node n1 .* holds no store identity.*keeps every policy.*egressd store accept/,
  );
  t.regex(lostMessage('n1', A, B), new RegExp(`another store \\(id ${B}\\)`));
});

/** A Store with only what the follower uses: an identity the test sets. */
function fakeStore() {
  const s = {
    identity: undefined as StoreIdentity | undefined,
    made: 0,
    storeIdentity: async () => s.identity,
    ensureStoreIdentity: async () => {
      s.made++;
      s.identity ??= id(C);
      return s.identity;
    },
  };
  return s;
}

function follower(
  store: ReturnType<typeof fakeStore>,
  file: string,
  lines: { msg: string; level: number }[],
) {
  const metrics = createAgentMetrics();
  const log = pino(
    { level: 'info' },
    { write: (line: string) => void lines.push(JSON.parse(line) as { msg: string; level: number }) },
  );
  let changes = 0;
  const f = new StoreFollower({
    store: store as unknown as Store,
    node: 'n1',
    metrics,
    storeIdFile: file,
    onStoreState: () => void changes++,
    log,
    checkMs: 0,
  });
  return { f, metrics, changes: () => changes };
}

test('the follower: makes and adopts the first store, remembers it in its file, is lost on an empty store until accepted', async (t) => {
  const dir = mkdtempSync(path.join(tmpdir(), 'egressd-unit-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const file = path.join(dir, 'state', 'agent-n1.store-id.json');
  const store = fakeStore();
  const lines: { msg: string; level: number }[] = [];
  const { f, metrics, changes } = follower(store, file, lines);
  t.is(f.state(), undefined);
  t.is(await f.check(), 'follow', 'a fresh install: no operator step');
  t.is(store.made, 1);
  t.deepEqual(f.state(), { state: 'following', id: C });
  t.is(JSON.parse(readFileSync(file, 'utf8')).store_id, C);
  t.false(await f.changed());

  // Redis comes back empty.
  store.identity = undefined;
  t.true(await f.changed());
  t.is(await f.check(), 'lost');
  t.is(await f.check(), 'lost');
  t.is(store.made, 1, 'an agent that followed a store never makes one');
  t.like(f.state(), { state: 'lost', id: C, found: '' });
  t.is((await metrics.storeLost.get()).values[0]?.value, 1);
  t.is(lines.filter((l) => l.level === 50).length, 1, 'logged once');
  t.is(changes(), 1);

  // The API made a new identity: another store, still lost (logged once more, for the new id).
  store.identity = id(B);
  t.is(await f.check(), 'lost');
  t.like(f.state(), { state: 'lost', id: C, found: B });
  t.is(lines.filter((l) => l.level === 50).length, 2);

  // A restarted agent remembers C from its file.
  const again = follower(store, file, []);
  t.is(await again.f.check(), 'lost');
  t.is((await again.metrics.storeLost.get()).values[0]?.value, 1);

  // The operator accepts B in place of C.
  store.identity = id(B, [C]);
  t.is(await f.check(), 'adopted', 'versions are to be reset');
  t.deepEqual(f.state(), { state: 'following', id: B });
  t.is((await metrics.storeLost.get()).values[0]?.value, 0);
  t.is(JSON.parse(readFileSync(file, 'utf8')).store_id, B);
  t.is(await f.check(), 'follow', 'then it is the same store');
  t.is(await again.f.check(), 'adopted', 'the restarted agent too');
});

test('the follower: an unreadable file is refused (fail closed), not taken for "never followed"', (t) => {
  const dir = mkdtempSync(path.join(tmpdir(), 'egressd-unit-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const file = path.join(dir, 'agent-n1.store-id.json');
  writeFileSync(file, 'garbage');
  t.throws(() => follower(fakeStore(), file, []), { message: /does not hold the id of the store/ });
});
