import test from 'ava';
import { checkFdBudget, fdsNeeded, parseOpenFilesLimit } from '../../api/fd-budget.js';

const limits = (soft: string, hard: string) =>
  [
    'Limit                     Soft Limit           Hard Limit           Units     ',
    'Max processes             95338                95338                processes ',
    `Max open files            ${soft.padEnd(21)}${hard.padEnd(21)}files     `,
    'Max locked memory         8388608              8388608              bytes     ',
  ].join('\n');

test('the soft open-files limit is read from /proc/<pid>/limits', (t) => {
  t.is(parseOpenFilesLimit(limits('1024', '524288')), 1024);
  t.is(parseOpenFilesLimit(limits('unlimited', 'unlimited')), Number.POSITIVE_INFINITY);
  t.is(parseOpenFilesLimit('nothing here'), undefined);
});

test('the budget is 2 × the stream limit + 1024; below it the message says what to change', (t) => {
  t.is(fdsNeeded(2000), 5024);
  const low = checkFdBudget(2000, () => limits('1024', '1024'));
  t.false(low.ok);
  t.is(low.limit, 1024);
  t.is(low.needed, 5024);
  t.regex(low.message, /open-files limit \(RLIMIT_NOFILE\) is 1024, below the 5024/);
  t.regex(low.message, /LimitNOFILE=/);
  t.regex(low.message, /EGRESSD_SSE_MAX/);
  t.true(checkFdBudget(2000, () => limits('65536', '65536')).ok);
  // Unreadable (not Linux, no /proc): nothing to warn about.
  const unknown = checkFdBudget(2000, () => {
    throw new Error('ENOENT');
  });
  t.true(unknown.ok);
  t.is(unknown.limit, undefined);
});

test('this process has a limit to check', (t) => {
  const budget = checkFdBudget(1);
  t.true(typeof budget.limit === 'number' && budget.limit > 0);
});
