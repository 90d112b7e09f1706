import test from 'ava';
import { EnforcedVersions, regressionReason } from '../../daemon/agent/versions.js';

test('a version older than the one in force is refused, once first; equal and later ones pass', (t) => {
  const v = new EnforcedVersions();
  t.false(v.knows('c1'));
  t.is(v.check('c1', 3), undefined, 'nothing known: anything may be applied');
  v.enforced('c1', 10);
  t.true(v.knows('c1'));
  t.is(v.check('c1', 10), undefined);
  t.is(v.check('c1', 11), undefined);
  t.deepEqual(v.check('c1', 7), { kept: 10, asked: 7, first: true });
  t.deepEqual(v.check('c1', 7), { kept: 10, asked: 7, first: false }, 'logged once per version');
  t.deepEqual(v.check('c1', 9), { kept: 10, asked: 9, first: true });
  t.is(v.check('c2', 1), undefined, 'per computer');
});

test('the highest version stays (a seed of 0 or an older apply changes nothing); forget starts afresh', (t) => {
  const v = new EnforcedVersions();
  v.enforced('c', 0);
  t.true(v.knows('c'));
  t.is(v.check('c', 0), undefined);
  v.enforced('c', 12);
  v.enforced('c', 5);
  t.like(v.check('c', 11), { kept: 12, first: true });
  v.forget('c');
  t.false(v.knows('c'));
  t.is(v.check('c', 1), undefined, 'a computer registered again under the id');
  v.enforced('c', 20);
  t.like(v.check('c', 11), { kept: 20, first: true }, 'refusals of the removed computer are forgotten too');
});

test('the reason names the node, both versions and what to do', (t) => {
  const reason = regressionReason('node-a', { kept: 10, asked: 7 });
  t.regex(reason, /node node-a keeps version 10 .* refuses version 7/);
  t.regex(reason, /PUT the policy you want again .* above 10/);
});

test('reset (another store accepted): every version is forgotten, what the kernel holds counts as 0', (t) => {
  const v = new EnforcedVersions();
  v.enforced('a', 57);
  v.enforced('b', 40);
  t.like(v.check('a', 3), { kept: 57, first: true });
  v.reset(['a']);
  t.true(v.knows('a'), 'in the kernel: known, as version 0 (not seeded from the kernel again)');
  t.is(v.check('a', 3), undefined, "the new store's version 3 is applied");
  t.false(v.knows('b'));
  v.enforced('a', 3);
  t.like(v.check('a', 2), { kept: 3, first: true }, 'from then on versions never go back again');
});
