/**
 * The dashboard's pure parts (ui/model.ts): the list's filter and sort, the
 * rule diff of a suggestion, the edit form's body and where each API error
 * goes, the chart's per-second counts.
 */
import test from 'ava';
import type { ComputerItem } from '../../ui/api.js';
import {
  bodyOf,
  DenialCounts,
  diffRules,
  duration,
  eventTarget,
  fieldErrors,
  fieldOf,
  filterComputers,
  formOf,
  sortComputers,
  storeLostText,
} from '../../ui/model.js';

function computer(id: string, node: string, state = 'enforced', mode = 'allowlist'): ComputerItem {
  return {
    id,
    cgroup: `egressd/${id}`,
    node,
    tenant: id.includes('~') ? id.slice(0, id.indexOf('~')) : null,
    policy: {
      mode: mode as ComputerItem['policy']['mode'],
      block_dns: false,
      audit: false,
      version: id.length,
      enforcement: {
        state,
        reason: state === 'cgroup_missing' ? 'no cgroup /sys/fs/cgroup/x on node-b' : null,
        enforced_version: null,
        enforced_at: null,
        revocation: null,
        revoked: null,
      },
    },
  };
}

const items = [
  computer('b-box', 'node-a'),
  computer('acme~a', 'node-b', 'cgroup_missing'),
  computer('c', 'node-a', 'pending', 'isolated'),
];

test('filter: every word, any column, case-insensitive (the reason too)', (t) => {
  t.deepEqual(
    filterComputers(items, 'NODE-A').map((c) => c.id),
    ['b-box', 'c'],
  );
  t.deepEqual(
    filterComputers(items, 'node-b missing').map((c) => c.id),
    ['acme~a'],
  );
  t.deepEqual(
    filterComputers(items, 'sys/fs').map((c) => c.id),
    ['acme~a'],
  );
  t.is(filterComputers(items, '  ').length, 3);
});

test('sort: by a column either way, ties by id; denials capped above their count, unknown lowest', (t) => {
  t.deepEqual(
    sortComputers(items, { key: 'node', descending: false }).map((c) => c.id),
    ['b-box', 'c', 'acme~a'],
  );
  t.deepEqual(
    sortComputers(items, { key: 'version', descending: true }).map((c) => c.id),
    ['acme~a', 'b-box', 'c'],
  );
  const counted: ComputerItem[] = [
    { ...computer('c', 'node-a'), denials_1m: { count: 7, capped: false } },
    { ...computer('b-box', 'node-a'), denials_1m: { count: 0, capped: false } },
    computer('acme~a', 'node-b'),
    { ...computer('storm', 'node-b'), denials_1m: { count: 100, capped: true } },
    { ...computer('exact', 'node-b'), denials_1m: { count: 100, capped: false } },
  ];
  t.deepEqual(
    sortComputers(counted, { key: 'denials', descending: true }).map((c) => c.id),
    ['storm', 'exact', 'c', 'b-box', 'acme~a'],
  );
  t.deepEqual(
    sortComputers(counted, { key: 'denials', descending: false }).map((c) => c.id),
    ['acme~a', 'b-box', 'c', 'exact', 'storm'],
  );
});

test('diff of a suggestion against the policy: added, removed, kept (bind_name counts)', (t) => {
  const diff = diffRules(
    [
      { host: 'a.test', port: 443, protocol: 'tcp' },
      { host: 'b.test', protocol: 'any' },
      { host: 'c.test', port: 443, protocol: 'tcp', bind_name: false },
    ],
    [
      { host: 'a.test', port: 443, protocol: 'tcp' },
      { host: 'c.test', port: 443, protocol: 'tcp' },
      { host: '192.0.2.2', port: 80, protocol: 'tcp' },
    ],
  );
  t.deepEqual(
    diff.added.map((r) => r.host),
    ['c.test', '192.0.2.2'],
  );
  t.deepEqual(
    diff.removed.map((r) => r.host),
    ['b.test', 'c.test'],
  );
  t.deepEqual(
    diff.kept.map((r) => r.host),
    ['a.test'],
  );
});

test('the edit form: a body as typed (a port that is no number goes as text), back and forth', (t) => {
  const form = formOf({
    mode: 'allowlist',
    dns: 'listed',
    audit: true,
    rules: [
      { host: 'a.test', port: 443, protocol: 'tcp' },
      { host: 'b.test', protocol: 'any', bind_name: false },
    ],
  });
  t.deepEqual(bodyOf(form), {
    mode: 'allowlist',
    rules: [
      { host: 'a.test', port: 443, protocol: 'tcp' },
      { host: 'b.test', protocol: 'any', bind_name: false },
    ],
    dns: 'listed',
    audit: true,
  });
  const odd = {
    ...form,
    dns: '' as const,
    rules: [{ host: ' x.test ', port: '44x', protocol: 'udp' as const, bindName: true }],
  };
  t.deepEqual(bodyOf(odd), {
    mode: 'allowlist',
    rules: [{ host: 'x.test', port: '44x', protocol: 'udp' }],
    audit: true,
  });
  t.deepEqual(bodyOf({ ...form, mode: 'isolated' }).rules, [], 'isolated sends no rules');
});

test("an API error's fields: by details path, else by code, else the form", (t) => {
  t.is(fieldOf('rules[2].port'), 'rules.2.port');
  t.is(fieldOf(''), '');
  t.deepEqual(
    [
      ...fieldErrors({
        code: 'invalid_request',
        message: '...',
        details: [
          { path: 'rules[1].port', message: 'must be an integer from 1 to 65535' },
          { path: 'rules[1].port', message: 'again' },
          { path: 'mode', message: 'must be one of ...' },
        ],
      }),
    ],
    [
      ['rules.1.port', ['must be an integer from 1 to 65535', 'again']],
      ['mode', ['must be one of ...']],
    ],
  );
  t.deepEqual(
    [...fieldErrors({ code: 'rules_required', message: 'rules required' })],
    [['rules', ['rules required']]],
  );
  t.deepEqual([...fieldErrors({ code: 'dns_not_allowed', message: 'dns: no' })], [['dns', ['dns: no']]]);
  t.deepEqual([...fieldErrors({ code: 'precondition_failed', message: 'again' })], [['', ['again']]]);
});

test('denials per second by reason: the window, the columns, old seconds dropped', (t) => {
  const counts = new DenialCounts(3);
  const at = (ms: number) => new Date(ms).toISOString();
  counts.add({ at: at(10_000), reason: 'mode' });
  counts.add({ at: at(10_500), reason: 'mode' });
  counts.add({ at: at(12_100), reason: 'dns_unlisted' });
  counts.add({ at: 'not a time', reason: 'rule' });
  t.deepEqual(counts.reasonList(), ['dns_unlisted', 'mode']);
  t.deepEqual(counts.columns(12_900), [
    [10, 11, 12],
    [0, 0, 1],
    [2, 0, 0],
  ]);
  t.deepEqual(counts.columns(13_000), [
    [11, 12, 13],
    [0, 1, 0],
    [0, 0, 0],
  ]);
});

test('how times and destinations read', (t) => {
  t.is(duration(-5), '0s');
  t.is(duration(59_999), '59s');
  t.is(duration(245_000), '4m 05s');
  t.is(duration(7_380_000), '2h 03m');
  const e = { computer: 'x', at: '', pid: 1, comm: 'curl', protocol: 'tcp', reason: 'mode' };
  t.is(eventTarget({ ...e, family: 'ipv4', address: '192.0.2.1', port: 80, hostname: null }), '192.0.2.1:80');
  t.is(
    eventTarget({ ...e, family: 'ipv6', address: '2001:db8::1', port: 443, hostname: 'a.test' }),
    '[2001:db8::1]:443 (a.test)',
  );
  t.is(eventTarget({ ...e, family: null, address: null, port: null, hostname: 'asked.test' }), 'asked.test');
});

test('the store-lost banner: none for no node, what to do for one or more', (t) => {
  t.is(storeLostText(0), '');
  t.is(storeLostText(Number.NaN), '');
  t.regex(storeLostText(1), /^1 node has lost the store: .*egressd store accept/);
  t.regex(storeLostText(3), /^3 nodes have lost the store/);
});
