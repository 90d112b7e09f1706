/**
 * One computer: what it is, its policy (rules as a table, the enforcement
 * state and what live revocation closed), a live chart of its denials per
 * second by reason and a live list of its deny events (the SSE stream, after
 * the last EVENTS_SHOWN read at opening), and the names its DNS taught it
 * with their time to expiry. The policy is read again every POLICY_EVERY_MS
 * (its enforcement state moves on its own), the names every LEARNED_EVERY_MS.
 */
import { useMemo, useState } from 'preact/hooks';
import {
  type ComputerView as Computer,
  call,
  computerPath,
  type DenyEvent,
  errorText,
  type LearnedName,
  type PolicyView,
  policyPath,
} from './api.js';
import { DenialChart } from './chart.js';
import { useEventStream } from './live.js';
import { DenialCounts, duration, eventTarget } from './model.js';
import {
  href,
  Notice,
  RulesTable,
  revocationText,
  StateBadge,
  useNow,
  usePoll,
  ViewTitle,
  versionText,
} from './parts.js';

const EVENTS_SHOWN = 50;
const POLICY_EVERY_MS = 5000;
const LEARNED_EVERY_MS = 10_000;

export function ComputerView({ id }: { id: string }) {
  const [computer, setComputer] = useState<Computer | undefined>(undefined);
  const [policy, setPolicy] = useState<PolicyView | undefined>(undefined);
  const [learned, setLearned] = useState<LearnedName[]>([]);
  const [events, setEvents] = useState<DenyEvent[]>([]);
  const [problem, setProblem] = useState('');
  const counts = useMemo(() => new DenialCounts(60), []);
  const [version, setVersion] = useState(0);

  usePoll(async () => {
    const [c, p] = await Promise.all([
      call<Computer>('GET', computerPath(id)),
      call<PolicyView>('GET', policyPath(id)),
    ]);
    if (c.status === 200 && p.status === 200) {
      setComputer(c.data);
      setPolicy(p.data);
      setProblem('');
    } else if (c.status !== 401) {
      setProblem(errorText(c.status === 200 ? p : c));
    }
  }, POLICY_EVERY_MS);

  usePoll(async () => {
    const r = await call<LearnedName[]>('GET', `${policyPath(id)}/learned`);
    if (r.status === 200 && r.data) setLearned(r.data);
  }, LEARNED_EVERY_MS);

  // The events so far, once; the stream adds the new ones (an event in both is shown once: by its time and text).
  usePoll(async () => {
    const r = await call<DenyEvent[]>('GET', `${policyPath(id)}/events?limit=${EVENTS_SHOWN}`);
    if (r.status !== 200 || !r.data) return;
    const earlier = r.data;
    setEvents((live) => {
      const seen = new Set(live.map((e) => JSON.stringify(e)));
      const unseen = earlier.filter((e) => !seen.has(JSON.stringify(e)));
      for (const e of unseen) counts.add(e);
      return [...live, ...unseen].slice(0, EVENTS_SHOWN);
    });
    setVersion((v) => v + 1);
  }, 24 * 3600_000);

  const stream = useEventStream(id, (e) => {
    counts.add(e);
    setEvents((list) => [e, ...list].slice(0, EVENTS_SHOWN));
    setVersion((v) => v + 1);
  });

  if (!policy || !computer) {
    return (
      <section aria-labelledby="view-title">
        <ViewTitle>Computer {id}</ViewTitle>
        {problem ? <Notice kind="error" text={problem} /> : <Notice text="Loading…" />}
        <p>
          <a href={href.computers()}>Back to the computers</a>
        </p>
      </section>
    );
  }
  const revokedEvents = events.filter((e) => e.reason === 'revoked').length;
  return (
    <section id="computer" aria-labelledby="view-title">
      <ViewTitle>Computer {id}</ViewTitle>
      {problem ? <Notice kind="error" text={problem} /> : null}
      <p class="actions">
        <a class="button" href={href.edit(id)}>
          Edit policy
        </a>
        <a class="button" href={href.suggestion(id)}>
          Suggested allowlist
        </a>
      </p>
      <dl class="facts">
        <dt>Node</dt>
        <dd>{computer.node}</dd>
        <dt>Tenant</dt>
        <dd>{computer.tenant ?? '—'}</dd>
        <dt>Cgroup</dt>
        <dd>{computer.cgroup}</dd>
        <dt>Mode</dt>
        <dd id="policy-mode">
          {policy.mode}
          {policy.audit ? <span class="badge wait">audit</span> : null}, DNS {policy.dns}
        </dd>
        <dt>Version</dt>
        <dd>{versionText(policy.version, policy.enforcement)}</dd>
        <dt>Enforcement</dt>
        <dd id="enforcement">
          <StateBadge enforcement={policy.enforcement} />
        </dd>
        <dt>Revoked</dt>
        <dd id="revoked">
          {revocationText(policy.enforcement)}
          {revokedEvents > 0 ? `; ${revokedEvents} revoked event${revokedEvents === 1 ? '' : 's'} below` : ''}
        </dd>
      </dl>

      <h3>Policy rules</h3>
      <RulesTable rules={policy.rules} caption={`Rules of version ${policy.version}`} />

      <h3>Denials per second</h3>
      <p class="muted" role="status">
        Live stream: {stream}
      </p>
      <DenialChart counts={counts} version={version} />

      <h3>Deny events</h3>
      <EventList events={events} />

      <h3>Learned names</h3>
      <LearnedList learned={learned} />
    </section>
  );
}

function EventList({ events }: { events: DenyEvent[] }) {
  if (events.length === 0) return <p class="muted">No deny events yet.</p>;
  return (
    <table class="stack events" aria-label="Deny events, newest first">
      <thead>
        <tr>
          <th scope="col">Time</th>
          <th scope="col">Reason</th>
          <th scope="col">Protocol</th>
          <th scope="col">Destination</th>
          <th scope="col">Process</th>
        </tr>
      </thead>
      <tbody id="event-rows">
        {events.map((e, i) => (
          <tr key={`${events.length - i}`} class={e.audit ? 'audit' : undefined}>
            <td data-label="Time">{new Date(e.at).toLocaleTimeString()}</td>
            <td data-label="Reason">
              {e.reason}
              {e.audit ? <span class="badge wait">audit</span> : null}
              {e.name !== undefined ? <span class="reason"> tried {e.name || '(no name)'}</span> : null}
            </td>
            <td data-label="Protocol">{e.protocol}</td>
            <td data-label="Destination">{eventTarget(e)}</td>
            <td data-label="Process">{e.comm === null ? 'DNS proxy' : `${e.comm} (${e.pid})`}</td>
          </tr>
        ))}
      </tbody>
    </table>
  );
}

function LearnedList({ learned }: { learned: LearnedName[] }) {
  const now = useNow(1000);
  const live = learned.filter((l) => Date.parse(l.expires_at) > now);
  if (live.length === 0) return <p class="muted">No names learned (or all expired).</p>;
  return (
    <table class="stack">
      <thead>
        <tr>
          <th scope="col">Name</th>
          <th scope="col">Address</th>
          <th scope="col">Expires in</th>
        </tr>
      </thead>
      <tbody>
        {live.map((l) => (
          <tr key={`${l.name} ${l.address}`}>
            <td data-label="Name">{l.name}</td>
            <td data-label="Address">{l.address}</td>
            <td data-label="Expires in">{duration(Date.parse(l.expires_at) - now)}</td>
          </tr>
        ))}
      </tbody>
    </table>
  );
}
