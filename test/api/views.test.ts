import test from 'ava';
import { computerListItemView, isEnforced, policyReplyJson, policyView } from '../../api/views.js';
import { formatRevocation, parseRevocation } from '../../store/acks.js';
import type { PolicyRecord, Revocation } from '../../store/store.js';

function record(over: Partial<PolicyRecord>): PolicyRecord {
  const rules = over.rules ?? [];
  return {
    computerId: 'c-1',
    mode: 'allowlist',
    dns: 'listed',
    audit: false,
    rules,
    rulesJson: JSON.stringify(rules),
    version: 7,
    updatedAt: '2026-01-01T00:00:00.000Z',
    enforced: undefined,
    ...over,
  };
}

test('the spliced reply equals the serialised view', (t) => {
  const cases: PolicyRecord[] = [
    record({}),
    record({ rules: [{ host: 'github.com', port: 443, protocol: 'tcp' }] }),
    record({ computerId: 'RULES', rules: [{ host: '*.rules.example', protocol: 'any' }] }),
    record({ mode: 'isolated', dns: 'none' }),
    record({ mode: 'denylist', audit: true, rules: [{ host: 'evil.example', protocol: 'any' }] }),
    record({
      computerId: 'a_RULES_b',
      mode: 'isolated',
      enforced: { version: 7, at: '2026-01-01T00:00:01.000Z', state: 'enforced', reason: '' },
    }),
    record({
      rules: [{ host: 'x.example', protocol: 'udp' }],
      enforced: { version: 6, at: 'RULES', state: 'enforced', reason: '' },
    }),
  ];
  for (const r of cases) {
    t.deepEqual(JSON.parse(policyReplyJson(r)), { data: policyView(r) }, r.computerId);
  }
});

test('audit: a boolean in the policy view and in the list brief', (t) => {
  t.is(policyView(record({})).audit, false);
  t.is(policyView(record({ audit: true })).audit, true);
  t.is(JSON.parse(policyReplyJson(record({ audit: true }))).data.audit, true);
  const computer = {
    id: 'c-1',
    cgroup: 'egressd/c-1',
    node: 'n',
    tenant: null,
    dnsUpstream: null,
    createdAt: 't',
    updatedAt: 't',
  };
  const status = { mode: 'isolated' as const, dns: 'all' as const, version: 3, enforced: undefined };
  t.is(computerListItemView(computer, { ...status, audit: true }).policy.audit, true);
  t.is(computerListItemView(computer, { ...status, audit: false }).policy.audit, false);
});

test('enforcement state: what the agent reported of this version; in force only when enforced (or with DNS refused)', (t) => {
  const of = (state: 'dns_ports_exhausted' | 'cgroup_missing' | 'cgroup_forbidden', reason = '') =>
    policyView(record({ enforced: { version: 7, at: 't', state, reason } })).enforcement;
  t.deepEqual(of('dns_ports_exhausted', 'no free port'), {
    state: 'dns_ports_exhausted',
    reason: 'no free port',
    enforced_version: 7,
    enforced_at: 't',
    revocation: null,
    revoked: null,
  });
  t.deepEqual(of('cgroup_missing', 'cgroup /x does not exist'), {
    state: 'cgroup_missing',
    reason: 'cgroup /x does not exist',
    enforced_version: null,
    enforced_at: null,
    revocation: null,
    revoked: null,
  });
  t.deepEqual(of('cgroup_forbidden'), {
    state: 'cgroup_forbidden',
    reason: null,
    enforced_version: null,
    enforced_at: null,
    revocation: null,
    revoked: null,
  });
  // A reason belongs to the version it was reported for: a newer version is pending, without it.
  t.deepEqual(
    policyView(
      record({ version: 8, enforced: { version: 7, at: 't', state: 'cgroup_missing', reason: 'x' } }),
    ).enforcement,
    {
      state: 'pending',
      reason: null,
      enforced_version: null,
      enforced_at: null,
      revocation: null,
      revoked: null,
    },
  );
  t.true(isEnforced(record({ enforced: { version: 7, at: 't', state: 'dns_ports_exhausted', reason: '' } })));
  t.false(isEnforced(record({ enforced: { version: 7, at: 't', state: 'cgroup_forbidden', reason: '' } })));
});

test('enforcement state: enforced once the acknowledged version reaches the policy version', (t) => {
  t.is(policyView(record({})).enforcement.state, 'pending');
  t.is(
    policyView(record({ enforced: { version: 6, at: 't', state: 'enforced', reason: '' } })).enforcement
      .state,
    'pending',
  );
  t.is(
    policyView(record({ enforced: { version: 7, at: 't', state: 'enforced', reason: '' } })).enforcement
      .state,
    'enforced',
  );
  t.deepEqual(
    policyView(record({ enforced: { version: 8, at: 't', state: 'enforced', reason: '' } })).enforcement,
    {
      state: 'enforced',
      reason: null,
      enforced_version: 8,
      enforced_at: 't',
      revocation: null,
      revoked: null,
    },
  );
});

test('enforcement: revocation and revoked as the agent reported them for this version, never for a pending one', (t) => {
  const view = (version: number, revocation?: Revocation) =>
    policyView(
      record({ version, enforced: { version: 7, at: 't', state: 'enforced', reason: '', revocation } }),
    ).enforcement;
  t.like(view(7, { state: 'on', revoked: 3 }), { revocation: 'on', revoked: 3 });
  t.like(view(7, { state: 'unsupported' }), { revocation: 'unsupported', revoked: null });
  t.like(view(7), { revocation: null, revoked: null }, 'an agent that did not say');
  t.like(view(8, { state: 'on', revoked: 3 }), { state: 'pending', revocation: null, revoked: null });
});

test('revocation as one word (the ack field and the channel message) and back', (t) => {
  for (const r of [
    { state: 'on', revoked: 0 },
    { state: 'on', revoked: 10_000 },
    { state: 'off' },
    { state: 'unsupported' },
    { state: 'failed' },
  ] as Revocation[]) {
    t.deepEqual(parseRevocation(formatRevocation(r)), r);
  }
  t.is(formatRevocation(undefined), '-');
  t.is(parseRevocation('-'), undefined);
  t.is(parseRevocation('on:'), undefined);
  t.is(parseRevocation('cgroup'), undefined, 'the first word of a reason is not a revocation');
});
