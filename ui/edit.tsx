/**
 * Edit a computer's policy: mode, rules (host, port, protocol, name-binding),
 * dns and audit, sent as one PUT (If-Match the version it was read at: a
 * policy changed meanwhile is 412, not overwritten). The page does not judge
 * the rules itself: the API's 400 names each field's problem by path
 * (`rules[2].port`), and each message is shown beside its field (linked to it
 * with aria-describedby; the first such field takes the focus). Messages the
 * API gives without a path go beside the field their code is about (rules,
 * dns), or above the form.
 */
import { useRef, useState } from 'preact/hooks';
import {
  call,
  type DnsMode,
  errorText,
  type Mode,
  type PolicyView,
  type Protocol,
  policyPath,
} from './api.js';
import { bodyOf, fieldErrors, formOf, type PolicyForm, type RuleRow } from './model.js';
import { href, Notice, StateBadge, usePoll, ViewTitle } from './parts.js';

const SAVE_WAIT_MS = 10_000;
const MODES: Mode[] = ['allowlist', 'denylist', 'isolated', 'unrestricted'];
const PROTOCOLS: Protocol[] = ['any', 'tcp', 'udp'];
const DNS: Array<[DnsMode | '', string]> = [
  ['', 'the default for the mode'],
  ['listed', 'listed: only names the rules cover'],
  ['all', 'all'],
  ['none', 'none'],
];

/** The element id of a field: `rules.2.port` → `field-rules-2-port`. */
const idOf = (field: string) => `field-${field.replace(/\./g, '-') || 'form'}`;

export function EditView({ id }: { id: string }) {
  const [policy, setPolicy] = useState<PolicyView | undefined>(undefined);
  const [form, setForm] = useState<PolicyForm | undefined>(undefined);
  const [errors, setErrors] = useState<Map<string, string[]>>(new Map());
  const [result, setResult] = useState<{ text: string; policy?: PolicyView; ok: boolean } | undefined>();
  const [problem, setProblem] = useState('');
  const [busy, setBusy] = useState(false);
  const formRef = useRef<HTMLFormElement>(null);

  usePoll(async () => {
    const r = await call<PolicyView>('GET', policyPath(id));
    if (r.status === 200 && r.data) {
      setPolicy(r.data);
      setForm(formOf(r.data));
    } else if (r.status !== 401) setProblem(errorText(r));
  }, 24 * 3600_000);

  if (!form || !policy) {
    return (
      <section aria-labelledby="view-title">
        <ViewTitle>Edit the policy of {id}</ViewTitle>
        {problem ? <Notice kind="error" text={problem} /> : <Notice text="Loading…" />}
      </section>
    );
  }

  const update = (change: Partial<PolicyForm>) => setForm({ ...form, ...change });
  const updateRule = (i: number, change: Partial<RuleRow>) =>
    update({ rules: form.rules.map((r, j) => (j === i ? { ...r, ...change } : r)) });
  const takesRules = form.mode === 'allowlist' || form.mode === 'denylist';

  const save = async (event: Event) => {
    event.preventDefault();
    setBusy(true);
    const r = await call<PolicyView>('PUT', `${policyPath(id)}?wait=${SAVE_WAIT_MS}`, {
      body: bodyOf(form),
      headers: { 'if-match': `"${policy.version}"` },
    });
    setBusy(false);
    if (r.status === 200 || r.status === 202) {
      setErrors(new Map());
      setPolicy(r.data);
      if (r.data) setForm(formOf(r.data));
      const state = r.status === 200 ? 'enforced' : 'stored, not yet enforced';
      setResult({
        text: `HTTP ${r.status}: version ${r.data?.version} ${state}`,
        ok: true,
        ...(r.data ? { policy: r.data } : {}),
      });
      return;
    }
    const found = r.status === 400 && r.error ? fieldErrors(r.error) : new Map([['', [errorText(r)]]]);
    setErrors(found);
    setResult({ text: `HTTP ${r.status}: not saved`, ok: false });
    // The first field with a problem takes the focus (the form's list when none is shown beside a field).
    queueMicrotask(() => {
      const first = formRef.current?.querySelector<HTMLElement>('[aria-invalid="true"]');
      (first ?? document.getElementById(idOf('')))?.focus();
    });
  };

  const shown = new Set<string>(['mode', 'dns', 'audit', 'rules']);
  form.rules.forEach((_, i) => {
    for (const f of ['host', 'port', 'protocol', 'bind_name', ''])
      shown.add(f === '' ? `rules.${i}` : `rules.${i}.${f}`);
  });
  const elsewhere = [...errors].filter(([field]) => !shown.has(field)).flatMap(([, m]) => m);
  const invalid = (field: string) =>
    errors.has(field) ? { 'aria-invalid': true as const, 'aria-describedby': `${idOf(field)}-error` } : {};
  const problemOf = (field: string) =>
    errors.has(field) ? (
      <span class="field-error" id={`${idOf(field)}-error`}>
        {errors.get(field)?.join('; ')}
      </span>
    ) : null;

  return (
    <section id="edit" aria-labelledby="view-title">
      <ViewTitle>Edit the policy of {id}</ViewTitle>
      <p>
        <a href={href.computer(id)}>Back to {id}</a> · editing version {policy.version}
      </p>
      <form ref={formRef} onSubmit={(e) => void save(e)} noValidate>
        <div id={idOf('')} tabIndex={-1} class="form-errors" role="alert">
          {elsewhere.length > 0 ? (
            <ul>
              {elsewhere.map((m) => (
                <li key={m}>{m}</li>
              ))}
            </ul>
          ) : null}
        </div>
        <div class="field">
          <label for={idOf('mode')}>Mode</label>
          <select
            id={idOf('mode')}
            value={form.mode}
            onChange={(e) => update({ mode: (e.currentTarget as HTMLSelectElement).value as Mode })}
            {...invalid('mode')}
          >
            {MODES.map((m) => (
              <option key={m} value={m}>
                {m}
              </option>
            ))}
          </select>
          {problemOf('mode')}
        </div>
        <div class="field">
          <label for={idOf('dns')}>DNS</label>
          <select
            id={idOf('dns')}
            value={form.dns}
            onChange={(e) => update({ dns: (e.currentTarget as HTMLSelectElement).value as DnsMode | '' })}
            {...invalid('dns')}
          >
            {DNS.map(([value, label]) => (
              <option key={value} value={value}>
                {label}
              </option>
            ))}
          </select>
          {problemOf('dns')}
        </div>
        <div class="field check">
          <input
            id={idOf('audit')}
            type="checkbox"
            checked={form.audit}
            onChange={(e) => update({ audit: (e.currentTarget as HTMLInputElement).checked })}
            {...invalid('audit')}
          />
          <label for={idOf('audit')}>Audit: report what would be refused, refuse nothing</label>
          {problemOf('audit')}
        </div>

        <fieldset id={idOf('rules')} class="rules" tabIndex={-1} {...invalid('rules')}>
          <legend>Rules</legend>
          {problemOf('rules')}
          {takesRules ? null : <p class="muted">{form.mode} mode takes no rules: they are not sent.</p>}
          {form.rules.map((r, i) => (
            <fieldset key={i} class="rule" disabled={!takesRules}>
              <legend>Rule {i + 1}</legend>
              {problemOf(`rules.${i}`)}
              <div class="field">
                <label for={idOf(`rules.${i}.host`)}>Host</label>
                <input
                  id={idOf(`rules.${i}.host`)}
                  value={r.host}
                  spellcheck={false}
                  onInput={(e) => updateRule(i, { host: (e.currentTarget as HTMLInputElement).value })}
                  {...invalid(`rules.${i}.host`)}
                />
                {problemOf(`rules.${i}.host`)}
              </div>
              <div class="field port">
                <label for={idOf(`rules.${i}.port`)}>Port</label>
                <input
                  id={idOf(`rules.${i}.port`)}
                  value={r.port}
                  inputMode="numeric"
                  placeholder="any"
                  onInput={(e) => updateRule(i, { port: (e.currentTarget as HTMLInputElement).value })}
                  {...invalid(`rules.${i}.port`)}
                />
                {problemOf(`rules.${i}.port`)}
              </div>
              <div class="field">
                <label for={idOf(`rules.${i}.protocol`)}>Protocol</label>
                <select
                  id={idOf(`rules.${i}.protocol`)}
                  value={r.protocol}
                  onChange={(e) =>
                    updateRule(i, { protocol: (e.currentTarget as HTMLSelectElement).value as Protocol })
                  }
                  {...invalid(`rules.${i}.protocol`)}
                >
                  {PROTOCOLS.map((p) => (
                    <option key={p} value={p}>
                      {p}
                    </option>
                  ))}
                </select>
                {problemOf(`rules.${i}.protocol`)}
              </div>
              <div class="field check">
                <input
                  id={idOf(`rules.${i}.bind_name`)}
                  type="checkbox"
                  checked={r.bindName}
                  onChange={(e) => updateRule(i, { bindName: (e.currentTarget as HTMLInputElement).checked })}
                  {...invalid(`rules.${i}.bind_name`)}
                />
                <label for={idOf(`rules.${i}.bind_name`)}>Name-bound</label>
                {problemOf(`rules.${i}.bind_name`)}
              </div>
              <button
                type="button"
                class="remove"
                onClick={() => update({ rules: form.rules.filter((_, j) => j !== i) })}
              >
                Remove rule {i + 1}
              </button>
            </fieldset>
          ))}
          <button
            type="button"
            disabled={!takesRules}
            onClick={() =>
              update({ rules: [...form.rules, { host: '', port: '', protocol: 'tcp', bindName: true }] })
            }
          >
            Add a rule
          </button>
        </fieldset>

        <p class="actions">
          <button type="submit" class="primary" disabled={busy}>
            {busy ? 'Saving…' : 'Save policy'}
          </button>
          <a href={href.computer(id)}>Cancel</a>
        </p>
      </form>
      {result ? (
        <div id="save-result" class={result.ok ? 'result' : 'result failed'} role="status">
          <p>{result.text}</p>
          {result.policy ? (
            <p>
              Enforcement: <StateBadge enforcement={result.policy.enforcement} />
            </p>
          ) : null}
        </div>
      ) : null}
    </section>
  );
}
