import test from 'ava';
import type { PolicyRecord } from '../../api/src/store/store.js';
import { policyReplyJson, policyView } from '../../api/src/views.js';

function record(over: Partial<PolicyRecord>): PolicyRecord {
  const rules = over.rules ?? [];
  return {
    computerId: 'c-1',
    mode: 'allowlist',
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
    record({
      computerId: 'a_RULES_b',
      mode: 'isolated',
      enforced: { version: 7, at: '2026-01-01T00:00:01.000Z' },
    }),
    record({ rules: [{ host: 'x.example', protocol: 'udp' }], enforced: { version: 6, at: 'RULES' } }),
  ];
  for (const r of cases) {
    t.deepEqual(JSON.parse(policyReplyJson(r)), { data: policyView(r) }, r.computerId);
  }
});

test('enforcement state: enforced once the acknowledged version reaches the policy version', (t) => {
  t.is(policyView(record({})).enforcement.state, 'pending');
  t.is(policyView(record({ enforced: { version: 6, at: 't' } })).enforcement.state, 'pending');
  t.is(policyView(record({ enforced: { version: 7, at: 't' } })).enforcement.state, 'enforced');
  t.deepEqual(policyView(record({ enforced: { version: 8, at: 't' } })).enforcement, {
    state: 'enforced',
    enforced_version: 8,
    enforced_at: 't',
  });
});
