/**
 * Small pieces the views share: the enforcement state as text and a badge,
 * a table of rules, a heading that takes the focus when its view opens (so
 * that keyboard and screen-reader users land on the new view), polling, and
 * a clock for times to expiry.
 */
import type { ComponentChildren } from 'preact';
import { useEffect, useRef, useState } from 'preact/hooks';
import type { Enforcement, Rule } from './api.js';

/** The hash of a view: `#/computers/ID`, `#/computers/ID/edit`. */
export const href = {
  computers: () => '#/computers',
  computer: (id: string) => `#/computers/${encodeURIComponent(id)}`,
  edit: (id: string) => `#/computers/${encodeURIComponent(id)}/edit`,
  suggestion: (id: string) => `#/computers/${encodeURIComponent(id)}/suggestion`,
};

const STATE_CLASS: Record<string, string> = { enforced: 'ok', pending: 'wait' };

/** The enforcement state, its reason beside it; the class gives a colour, the text says it all. */
export function StateBadge({ enforcement }: { enforcement: Enforcement }) {
  return (
    <span class="state-cell">
      <span class={`badge ${STATE_CLASS[enforcement.state] ?? 'bad'}`}>{enforcement.state}</span>
      {enforcement.reason === null ? null : <span class="reason">{enforcement.reason}</span>}
    </span>
  );
}

/** The versions as `3` (in force) or `4 → 3 in force`. */
export function versionText(version: number, enforcement: Enforcement): string {
  const enforced = enforcement.enforced_version;
  if (enforced === version) return String(version);
  return `${version} (in force: ${enforced ?? 'none'})`;
}

/** What live revocation did at the last change, in words. */
export function revocationText(e: Enforcement): string {
  switch (e.revocation) {
    case 'on':
      return `${e.revoked ?? 0} connection${e.revoked === 1 ? '' : 's'} closed by the last change`;
    case 'off':
      return 'live revocation is off: open connections were left open';
    case 'unsupported':
      return 'live revocation is unsupported by this kernel (before 6.5)';
    case 'failed':
      return "live revocation failed (see the agent's log)";
    default:
      return 'not reported yet';
  }
}

export function RulesTable({ rules, caption }: { rules: readonly Rule[]; caption: string }) {
  if (rules.length === 0) return <p class="muted">{caption}: none.</p>;
  return (
    <table class="stack">
      <caption>{caption}</caption>
      <thead>
        <tr>
          <th scope="col">Host</th>
          <th scope="col">Port</th>
          <th scope="col">Protocol</th>
          <th scope="col">Name-bound</th>
        </tr>
      </thead>
      <tbody>
        {rules.map((r, i) => (
          <tr key={i}>
            <td data-label="Host">{r.host}</td>
            <td data-label="Port">{r.port ?? 'any'}</td>
            <td data-label="Protocol">{r.protocol}</td>
            <td data-label="Name-bound">{r.bind_name === false ? 'no' : 'yes'}</td>
          </tr>
        ))}
      </tbody>
    </table>
  );
}

/** A view's heading: focused when the view opens (not on the first page load). */
export function ViewTitle({ children }: { children: ComponentChildren }) {
  const ref = useRef<HTMLHeadingElement>(null);
  useEffect(() => {
    if (document.activeElement !== document.body && document.activeElement !== null) {
      // Something had the focus (a link or button of the view before): move it here.
      ref.current?.focus();
    }
  }, []);
  return (
    <h2 ref={ref} tabIndex={-1} id="view-title">
      {children}
    </h2>
  );
}

/** Runs `task` now and every `everyMs` while mounted (and again when `deps` change). */
export function usePoll(task: () => Promise<void> | void, everyMs: number, deps: unknown[] = []): void {
  const saved = useRef(task);
  saved.current = task;
  useEffect(() => {
    let stopped = false;
    let timer: ReturnType<typeof setTimeout> | undefined;
    const run = async () => {
      try {
        await saved.current();
      } finally {
        if (!stopped) timer = setTimeout(run, everyMs);
      }
    };
    void run();
    return () => {
      stopped = true;
      clearTimeout(timer);
    };
  }, [everyMs, ...deps]);
}

/** The time now, renewed every `everyMs`. */
export function useNow(everyMs = 1000): number {
  const [now, setNow] = useState(Date.now());
  useEffect(() => {
    const timer = setInterval(() => setNow(Date.now()), everyMs);
    return () => clearInterval(timer);
  }, [everyMs]);
  return now;
}

export function Notice({ text, kind = 'status' }: { text: string; kind?: 'status' | 'error' }) {
  return kind === 'error' ? (
    <p class="error" role="alert">
      {text}
    </p>
  ) : (
    <p class="muted" role="status">
      {text}
    </p>
  );
}
