/**
 * The dashboard's first page (issue 20, step 1): sign in with a key, see the
 * computers the key may see, sign out. The key goes once, in the body of
 * POST /ui/session, and is dropped: the session is an HttpOnly cookie the
 * page cannot read, and the CSRF token lives in this module's memory only
 * (GET /ui/session gives it again after a reload). Nothing goes to the
 * browser's storage or into a URL; text goes in with textContent, never as HTML.
 */

interface SessionView {
  kind: 'admin' | 'tenant';
  tenant: string | null;
  key_id: string | null;
  csrf_token: string;
  idle_timeout_s: number;
  expires_at: string;
}

interface ComputerItem {
  id: string;
  node: string;
  tenant: string | null;
  policy: { mode: string; audit: boolean; enforcement: { state: string; reason: string | null } };
}

interface Reply {
  status: number;
  // biome-ignore lint/suspicious/noExplicitAny: replies are JSON picked apart by each caller
  body: any;
}

/** At most this many pages of 1,000 computers (the views of step 2 page and filter). */
const MAX_PAGES = 10;

let csrfToken = '';

function element<T extends HTMLElement>(id: string): T {
  const found = document.getElementById(id);
  if (!found) throw new Error(`the page has no #${id}`);
  return found as T;
}

async function call(method: string, path: string, body?: unknown): Promise<Reply> {
  const headers: Record<string, string> = { accept: 'application/json' };
  if (body !== undefined) headers['content-type'] = 'application/json';
  if (method !== 'GET' && csrfToken !== '') headers['x-csrf-token'] = csrfToken;
  const response = await fetch(path, {
    method,
    headers,
    credentials: 'same-origin',
    cache: 'no-store',
    ...(body === undefined ? {} : { body: JSON.stringify(body) }),
  });
  const text = await response.text();
  let parsed: unknown;
  try {
    parsed = text === '' ? undefined : JSON.parse(text);
  } catch {
    parsed = undefined;
  }
  return { status: response.status, body: parsed };
}

function errorText(reply: Reply): string {
  return reply.body?.error?.message ?? `the API answered ${reply.status}`;
}

function showSignIn(message = ''): void {
  csrfToken = '';
  element('computers').hidden = true;
  element('sign-out').hidden = true;
  element('who').hidden = true;
  element('computer-rows').replaceChildren();
  element('sign-in-error').textContent = message;
  element('sign-in').hidden = false;
  element<HTMLInputElement>('key').focus();
}

async function showSession(session: SessionView): Promise<void> {
  csrfToken = session.csrf_token;
  element('sign-in').hidden = true;
  const who = element('who');
  who.textContent = session.kind === 'admin' ? 'Signed in as admin' : `Signed in as tenant ${session.tenant}`;
  who.hidden = false;
  element('sign-out').hidden = false;
  element('computers').hidden = false;
  await listComputers();
}

async function listComputers(): Promise<void> {
  const status = element('status');
  status.textContent = 'Loading…';
  const rows: HTMLTableRowElement[] = [];
  let cursor: string | null = null;
  for (let page = 0; page < MAX_PAGES; page++) {
    const query: string = cursor === null ? '' : `&cursor=${encodeURIComponent(cursor)}`;
    const reply = await call('GET', `/api/v1/computers?limit=1000${query}`);
    if (reply.status === 401) return showSignIn(errorText(reply));
    if (reply.status !== 200) {
      status.textContent = `Could not list the computers: ${errorText(reply)}`;
      return;
    }
    for (const c of reply.body.data as ComputerItem[]) rows.push(row(c));
    cursor = reply.body.next_cursor;
    if (cursor === null) break;
  }
  element('computer-rows').replaceChildren(...rows);
  const more = cursor === null ? '' : ' (the first ones only)';
  status.textContent = `${rows.length} computer${rows.length === 1 ? '' : 's'}${more}`;
}

function row(c: ComputerItem): HTMLTableRowElement {
  const tr = document.createElement('tr');
  const enforcement = c.policy.enforcement;
  const cells = [
    c.id,
    c.node,
    c.tenant ?? '—',
    c.policy.audit ? `${c.policy.mode} (audit)` : c.policy.mode,
    enforcement.reason === null ? enforcement.state : `${enforcement.state}: ${enforcement.reason}`,
  ];
  for (const text of cells) {
    const td = document.createElement('td');
    td.textContent = text;
    tr.append(td);
  }
  return tr;
}

async function signIn(event: SubmitEvent): Promise<void> {
  event.preventDefault();
  const input = element<HTMLInputElement>('key');
  const key = input.value;
  input.value = '';
  const reply = await call('POST', '/ui/session', { key });
  if (reply.status !== 200) return showSignIn(errorText(reply));
  await showSession(reply.body.data as SessionView);
}

async function signOut(): Promise<void> {
  const reply = await call('DELETE', '/ui/session');
  showSignIn(reply.status === 204 ? 'Signed out.' : `Sign-out failed: ${errorText(reply)}`);
}

async function start(): Promise<void> {
  element('sign-in').addEventListener('submit', (event) => void signIn(event as SubmitEvent));
  element('sign-out').addEventListener('click', () => void signOut());
  const reply = await call('GET', '/ui/session');
  if (reply.status === 200) await showSession(reply.body.data as SessionView);
  else showSignIn();
}

void start();
