/**
 * The dashboard (issue 20): sign-in, a header, and the view the location's
 * hash names (#/computers, #/computers/ID, #/computers/ID/edit,
 * #/computers/ID/suggestion). The key is typed into the sign-in form, sent
 * once in the body of POST /ui/session and cleared; what the page keeps is
 * the session's CSRF token, in memory (api.ts).
 */
import { useEffect, useState } from 'preact/hooks';
import { call, errorText, type SessionView, setCsrfToken, whenUnauthorized } from './api.js';
import { ComputerView } from './computer.js';
import { ComputersView } from './computers.js';
import { EditView } from './edit.js';
import { storeLostText } from './model.js';
import { href } from './parts.js';
import { SuggestionPage } from './suggestion.js';

type Route =
  | { view: 'computers' }
  | { view: 'computer' | 'edit' | 'suggestion'; id: string }
  | { view: 'unknown'; hash: string };

export function parseRoute(hash: string): Route {
  const path = hash.replace(/^#/, '');
  if (path === '' || path === '/' || path === '/computers') return { view: 'computers' };
  const m = /^\/computers\/([^/]+)(?:\/(edit|suggestion))?$/.exec(path);
  if (!m?.[1]) return { view: 'unknown', hash };
  let id: string;
  try {
    id = decodeURIComponent(m[1]);
  } catch {
    return { view: 'unknown', hash };
  }
  return { view: (m[2] as 'edit' | 'suggestion' | undefined) ?? 'computer', id };
}

function useRoute(): Route {
  const [route, setRoute] = useState(() => parseRoute(location.hash));
  useEffect(() => {
    const changed = () => setRoute(parseRoute(location.hash));
    addEventListener('hashchange', changed);
    return () => removeEventListener('hashchange', changed);
  }, []);
  return route;
}

export function App() {
  /** undefined while the page asks whether it has a session; null: signed out. */
  const [session, setSession] = useState<SessionView | null | undefined>(undefined);
  const [notice, setNotice] = useState('');
  const route = useRoute();

  const signedIn = (s: SessionView) => {
    setCsrfToken(s.csrf_token);
    setNotice('');
    setSession(s);
  };
  const signedOut = (message: string) => {
    setCsrfToken('');
    setNotice(message);
    setSession(null);
  };

  useEffect(() => {
    whenUnauthorized(signedOut);
    void call<SessionView>('GET', '/ui/session').then((r) =>
      r.status === 200 && r.data ? signedIn(r.data) : signedOut(''),
    );
  }, []);

  const signOut = async () => {
    const r = await call('DELETE', '/ui/session');
    signedOut(r.status === 204 ? 'Signed out.' : `Sign-out failed: ${errorText(r)}`);
  };

  return (
    <>
      <a class="skip" href="#main">
        Skip to content
      </a>
      <header>
        <h1>
          <a href={href.computers()}>egressd</a>
        </h1>
        {session ? (
          <>
            <nav aria-label="Views">
              <a href={href.computers()}>Computers</a>
            </nav>
            <p id="who">
              {session.kind === 'admin' ? 'Signed in as admin' : `Signed in as tenant ${session.tenant}`}
            </p>
            <button id="sign-out" type="button" onClick={() => void signOut()}>
              Sign out
            </button>
          </>
        ) : null}
      </header>
      <main id="main">
        {session === undefined ? (
          <p class="muted">Loading…</p>
        ) : session === null ? (
          <SignIn notice={notice} onSignedIn={signedIn} />
        ) : (
          <>
            {session.kind === 'admin' ? <StoreLost /> : null}
            <View route={route} session={session} />
          </>
        )}
      </main>
    </>
  );
}

/** How often the admin's page asks /readyz whether a node lost its store. */
const STORE_CHECK_MS = 10_000;

/** A banner while any node follows no store (README "A Redis that comes back empty"). */
function StoreLost() {
  const [nodes, setNodes] = useState(0);
  useEffect(() => {
    const check = () =>
      void call('GET', '/readyz').then((r) => {
        const n = (r.body as { store_lost?: unknown } | undefined)?.store_lost;
        setNodes(typeof n === 'number' ? n : 0);
      });
    check();
    const timer = setInterval(check, STORE_CHECK_MS);
    return () => clearInterval(timer);
  }, []);
  const text = storeLostText(nodes);
  return text === '' ? null : (
    <p id="store-lost" class="error" role="alert">
      {text}
    </p>
  );
}

function View({ route, session }: { route: Route; session: SessionView }) {
  switch (route.view) {
    case 'computers':
      return <ComputersView session={session} />;
    case 'computer':
      return <ComputerView key={route.id} id={route.id} />;
    case 'edit':
      return <EditView key={route.id} id={route.id} />;
    case 'suggestion':
      return <SuggestionPage key={route.id} id={route.id} />;
    default:
      return (
        <section>
          <h2>Not found</h2>
          <p>
            No view here. <a href={href.computers()}>See the computers</a>.
          </p>
        </section>
      );
  }
}

/** No name on the key's input, and the form has no action: without the script it sends nothing. */
function SignIn({ notice, onSignedIn }: { notice: string; onSignedIn: (s: SessionView) => void }) {
  const [error, setError] = useState(notice);
  const [busy, setBusy] = useState(false);
  const submit = async (event: Event) => {
    event.preventDefault();
    const input = (event.currentTarget as HTMLFormElement).elements.namedItem('key') as HTMLInputElement;
    const key = input.value;
    input.value = '';
    setBusy(true);
    const r = await call<SessionView>('POST', '/ui/session', { body: { key } });
    setBusy(false);
    if (r.status === 200 && r.data) onSignedIn(r.data);
    else {
      setError(errorText(r));
      input.focus();
    }
  };
  return (
    <form id="sign-in" class="narrow" onSubmit={(e) => void submit(e)} aria-labelledby="sign-in-title">
      <h2 id="sign-in-title">Sign in</h2>
      <p>Your API key is exchanged for a short-lived session; the page does not keep the key.</p>
      <label for="key">API key</label>
      {/* biome-ignore lint/a11y/noAutofocus: the sign-in page has one thing to do */}
      <input id="key" type="password" autocomplete="off" spellcheck={false} required autoFocus />
      <button type="submit" disabled={busy}>
        Sign in
      </button>
      <p id="sign-in-error" class="error" role="alert">
        {error}
      </p>
    </form>
  );
}
