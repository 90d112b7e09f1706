/**
 * An event stream opened through a dashboard session lives only as long as
 * the session: signing out ends it (at the next key check), as revoking a
 * key ends the streams opened with it.
 */
import http from 'node:http';
import test from 'ava';
import { ADMIN_KEY, type Harness, register, startHarness } from './harness.js';

let h: Harness;

test.before(async () => {
  h = await startHarness({}, { streams: { keyCheckMs: 200 } });
});

test.after.always(async () => {
  await h?.close();
});

test('signing out ends the event streams the session opened', async (t) => {
  await register(h, 'streamed');
  const signIn = await h.call('POST', '/ui/session', { key: '', body: { key: ADMIN_KEY } });
  t.is(signIn.status, 200);
  const cookie = (signIn.headers.getSetCookie()[0] ?? '').split(';')[0] ?? '';
  const csrf = (signIn.body as { data: { csrf_token: string } }).data.csrf_token;
  let text = '';
  const ended = new Promise<number>((resolve, reject) => {
    const url = new URL('/api/v1/computers/streamed/network-policy/events/stream', h.baseUrl);
    http
      .get(url, { headers: { cookie, accept: 'text/event-stream' } }, (res) => {
        t.is(res.statusCode, 200);
        res.setEncoding('utf8');
        res.on('data', (d: string) => {
          text += d;
        });
        res.on('end', () => resolve(Date.now()));
      })
      .on('error', reject);
  });
  await new Promise((r) => setTimeout(r, 300));
  const out = await h.call('DELETE', '/ui/session', { key: '', headers: { cookie, 'x-csrf-token': csrf } });
  t.is(out.status, 204);
  const signedOut = Date.now();
  const end = await Promise.race([ended, new Promise<number>((r) => setTimeout(() => r(0), 5000))]);
  t.true(end > 0, 'the stream ended');
  t.true(end - signedOut < 2000, `within the key check (${end - signedOut} ms)`);
  t.regex(text, /revoked/);
});
