/**
 * The suggested allowlist of a computer (GET .../suggestion: what it was
 * seen connecting to, as a policy body), its difference from the policy in
 * force, and Apply: an ordinary PUT of that body (with the session's CSRF
 * token, and If-Match the version the difference was made against, so that
 * a policy changed meanwhile is refused with 412 rather than overwritten),
 * whose answer is shown as it came: 200 enforced, or 202 pending with the
 * enforcement state and its reason.
 */
import { useState } from 'preact/hooks';
import { call, errorText, type PolicyView, policyPath, type SuggestionView } from './api.js';
import { diffRules, ruleText } from './model.js';
import { href, Notice, StateBadge, usePoll, ViewTitle } from './parts.js';

/** How long the PUT waits for the agent (ms) before it answers 202. */
const APPLY_WAIT_MS = 10_000;

interface Applied {
  status: number;
  policy: PolicyView | undefined;
  message: string;
}

export function SuggestionPage({ id }: { id: string }) {
  const [policy, setPolicy] = useState<PolicyView | undefined>(undefined);
  const [suggestion, setSuggestion] = useState<SuggestionView | undefined>(undefined);
  const [problem, setProblem] = useState('');
  const [applied, setApplied] = useState<Applied | undefined>(undefined);
  const [busy, setBusy] = useState(false);

  const load = async () => {
    const [p, s] = await Promise.all([
      call<PolicyView>('GET', policyPath(id)),
      call<SuggestionView>('GET', `${policyPath(id)}/suggestion`),
    ]);
    if (p.status === 200 && s.status === 200) {
      setPolicy(p.data);
      setSuggestion(s.data);
      setProblem('');
    } else if (p.status !== 401) {
      setProblem(errorText(p.status === 200 ? s : p));
    }
  };
  usePoll(load, 15_000);

  const apply = async () => {
    if (!suggestion || !policy) return;
    setBusy(true);
    const r = await call<PolicyView>('PUT', `${policyPath(id)}?wait=${APPLY_WAIT_MS}`, {
      body: suggestion.policy,
      headers: { 'if-match': `"${policy.version}"` },
    });
    setBusy(false);
    const message =
      r.status === 200
        ? `HTTP 200: version ${r.data?.version} is enforced`
        : r.status === 202
          ? `HTTP 202: version ${r.data?.version} is stored, not yet enforced (${r.data?.enforcement.state})`
          : `HTTP ${r.status}: ${errorText(r)}`;
    setApplied({ status: r.status, policy: r.data, message });
    if (r.data) setPolicy(r.data);
  };

  const title = <ViewTitle>Suggested allowlist for {id}</ViewTitle>;
  if (!policy || !suggestion) {
    return (
      <section aria-labelledby="view-title">
        {title}
        {problem ? <Notice kind="error" text={problem} /> : <Notice text="Loading…" />}
      </section>
    );
  }
  const next = suggestion.policy;
  const diff = diffRules(policy.rules, next.rules);
  const same =
    diff.added.length === 0 && diff.removed.length === 0 && policy.mode === next.mode && !policy.audit;
  const observed = new Map(suggestion.rules.map((r) => [ruleText(r.rule), r.observations]));
  return (
    <section id="suggestion" aria-labelledby="view-title">
      {title}
      <p>
        <a href={href.computer(id)}>Back to {id}</a>
      </p>
      {problem ? <Notice kind="error" text={problem} /> : null}
      <p>
        Built from {suggestion.observed} observed destination{suggestion.observed === 1 ? '' : 's'}
        {suggestion.since ? ` since ${new Date(suggestion.since).toLocaleString()}` : ''}.
        {same ? null : (
          <>
            {' '}
            Applying it puts <strong>{next.mode}</strong> mode in force (audit off) in place of{' '}
            <strong>{policy.mode}</strong>
            {policy.audit ? ' in audit' : ''} (version {policy.version}).
          </>
        )}
      </p>
      {suggestion.note ? <p class="note">{suggestion.note}</p> : null}

      <h3>Difference from the policy in force</h3>
      {same ? (
        <p class="muted">The policy in force is this suggestion already.</p>
      ) : (
        <ul class="diff" aria-label="Rule changes">
          {diff.added.map((r) => (
            <li key={`+${ruleText(r)}`} class="added">
              <span class="sign" aria-hidden="true">
                +
              </span>
              <span class="sr-only">added: </span>
              {ruleText(r)}
              <Seen observations={observed.get(ruleText(r))} />
            </li>
          ))}
          {diff.removed.map((r) => (
            <li key={`-${ruleText(r)}`} class="removed">
              <span class="sign" aria-hidden="true">
                −
              </span>
              <span class="sr-only">removed: </span>
              {ruleText(r)}
            </li>
          ))}
          {diff.kept.map((r) => (
            <li key={`=${ruleText(r)}`} class="kept">
              <span class="sign" aria-hidden="true">
                =
              </span>
              <span class="sr-only">kept: </span>
              {ruleText(r)}
              <Seen observations={observed.get(ruleText(r))} />
            </li>
          ))}
        </ul>
      )}
      {suggestion.skipped.length > 0 ? (
        <p class="note">
          Not in any rule (the policy cannot name them):{' '}
          {suggestion.skipped.map((o) => `${o.host}:${o.port}/${o.protocol}`).join(', ')}
        </p>
      ) : null}

      <p class="actions">
        <button type="button" id="apply" class="primary" disabled={busy || same} onClick={() => void apply()}>
          {busy ? 'Applying…' : 'Apply this allowlist'}
        </button>
      </p>
      {applied ? <ApplyResult applied={applied} /> : null}
    </section>
  );
}

function Seen({
  observations,
}: {
  observations: SuggestionView['rules'][number]['observations'] | undefined;
}) {
  if (!observations || observations.length === 0) return null;
  const count = observations.reduce((n, o) => n + o.count, 0);
  const last = observations[0]?.last_seen;
  return (
    <span class="muted">
      {' '}
      — seen {count} time{count === 1 ? '' : 's'}
      {last ? `, last ${new Date(last).toLocaleTimeString()}` : ''}
    </span>
  );
}

function ApplyResult({ applied }: { applied: Applied }) {
  const ok = applied.status === 200 || applied.status === 202;
  return (
    <div id="apply-result" class={ok ? 'result' : 'result failed'} role="status">
      <p>{applied.message}</p>
      {applied.policy ? (
        <p>
          Enforcement: <StateBadge enforcement={applied.policy.enforcement} />
        </p>
      ) : null}
    </div>
  );
}
