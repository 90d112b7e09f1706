/**
 * Audit mode through the real `egressd all`: a PUT with `audit: true` is
 * enforced (200) and echoed; the computer's would-be refusals go through
 * and come back as events marked audit with their reason, a name the policy
 * does not list is resolved (and reported) instead of NXDOMAIN, and the
 * denial metric keeps audit apart; turning audit off is atomic: the next
 * connect after the 200 is refused. Then the workflow's end: the suggested
 * allowlist names what the computer resolved and connected to, and applied
 * as is it allows exactly that.
 */
import test from 'ava';
import { type Dnsmasq, startDnsmasq } from '../helpers/dnsmasq.js';
import { type Egressd, startEgressd, waitFor } from '../helpers/egressd.js';
import { parsePrometheus } from '../helpers/prometheus.js';
import { createWorld, type World } from '../helpers/world.js';

let world: World;
let dnsmasq: Dnsmasq;
let egressd: Egressd;

test.before(async () => {
  world = await createWorld();
  dnsmasq = await startDnsmasq([
    'host-record=listed.test,203.0.113.31,300',
    'host-record=other.test,203.0.113.32,300',
    'host-record=api.used.test,203.0.113.33,300',
  ]);
  egressd = await startEgressd({ world, node: 'audit-node', dnsUpstream: `${dnsmasq.host}:${dnsmasq.port}` });
});

test.after.always(async () => {
  await egressd?.stop();
  await dnsmasq?.stop();
  await world?.destroy();
});

interface Event {
  reason: string;
  address: string | null;
  hostname: string | null;
  audit?: boolean;
}

async function events(id: string, count: number): Promise<Event[]> {
  let got: Event[] = [];
  await waitFor(`${count} events of ${id}`, async () => {
    const r = await egressd.client.send('GET', `/api/v1/computers/${id}/network-policy/events`);
    got = (r.body as { data: Event[] }).data;
    return got.length >= count;
  });
  return got;
}

/** A computer at world cgroup `id`: its path. */
async function register(id: string): Promise<string> {
  const cg = world.makeCgroup(id);
  const r = await egressd.client.send('PUT', `/api/v1/computers/${id}`, { body: { cgroup: cg.relative } });
  if (r.status !== 201) throw new Error(`register ${id}: ${r.status} ${r.text}`);
  return cg.path;
}

/** `dig +short NAME A` in computer cgroup `cgroupPath`, in the host namespace: its DNS goes to its proxy port. */
async function digShort(cgroupPath: string, name: string): Promise<string> {
  const args = ['@127.0.0.53', '+short', '+tries=1', '+time=2', name, 'A'];
  return (await world.run('dig', args, { cgroup: cgroupPath, netns: false })).out.trim();
}

test.serial(
  'audit: the would-be refusals go through, each an event marked audit; off is atomic',
  async (t) => {
    const cg = await register('watched');
    const policy = { mode: 'allowlist', rules: [{ host: 'listed.test', protocol: 'tcp' }] };
    const on = await egressd.client.send('PUT', '/api/v1/computers/watched/network-policy?wait=10000', {
      body: { ...policy, audit: true },
    });
    t.is(on.status, 200);
    t.like((on.body as { data: object }).data, { audit: true, dns: 'listed' });

    t.is(await digShort(cg, 'other.test'), '203.0.113.32', 'an unlisted name is resolved, not NXDOMAIN');
    t.deepEqual(await world.probeResults({ cgroup: cg }, 'tcp:192.0.2.1:80', 'udp-sendto:[2001:db8::1]:80'), [
      'ok',
      'ok',
    ]);
    const got = await events('watched', 3);
    t.deepEqual(got.map((e) => [e.reason, e.address ?? e.hostname, e.audit]).sort(), [
      ['dns_unlisted', 'other.test', true],
      ['mode', '192.0.2.1', true],
      ['mode', '2001:db8::1', true],
    ]);
    const metrics = parsePrometheus((await egressd.client.send('GET', '/metrics')).text);
    t.is(metrics.get('egressd_denials_total{computer="watched",reason="mode",audit="true"}'), 2);

    const off = await egressd.client.send('PUT', '/api/v1/computers/watched/network-policy?wait=10000', {
      body: policy,
    });
    t.is(off.status, 200);
    t.like((off.body as { data: object }).data, { audit: false });
    // No sleep: the 200 means the kernel refuses now.
    t.deepEqual(await world.probeResults({ cgroup: cg }, 'tcp:192.0.2.1:80'), ['EPERM']);
    t.is(await digShort(cg, 'other.test'), '', 'NXDOMAIN again: dig +short prints nothing');
  },
);

test.serial(
  'observe, then enforce: the suggestion names what was used, and applied as is allows exactly that',
  async (t) => {
    const cg = await register('newcomer');
    // Nothing is known of it yet: isolated in audit refuses nothing and reports everything.
    const audit = await egressd.client.send('PUT', '/api/v1/computers/newcomer/network-policy?wait=10000', {
      body: { mode: 'isolated', audit: true },
    });
    t.is(audit.status, 200);
    t.is(await digShort(cg, 'api.used.test'), '203.0.113.33');
    t.deepEqual(
      await world.probeResults(
        { cgroup: cg },
        'tcp:203.0.113.33:443',
        'udp-sendto:192.0.2.2:5353',
        'tcp:[2001:db8::2]:8080',
      ),
      ['ok', 'ok', 'ok'],
    );
    // The agent merges observations every 5 s.
    let suggestion:
      | { policy: { mode: string; rules: { host: string; port?: number; protocol: string }[] } }
      | undefined;
    await waitFor(
      'three observations in the suggestion',
      async () => {
        const r = await egressd.client.send('GET', '/api/v1/computers/newcomer/network-policy/suggestion');
        suggestion = (r.body as { data: typeof suggestion }).data;
        return (suggestion?.policy.rules.length ?? 0) >= 3;
      },
      15_000,
    );
    t.is(suggestion?.policy.mode, 'allowlist');
    t.deepEqual(
      suggestion?.policy.rules.map((r) => `${r.host} ${r.port} ${r.protocol}`).sort(),
      ['192.0.2.2 5353 udp', '2001:db8::2 8080 tcp', 'api.used.test 443 tcp'],
      'the name it resolved and connected to, by name; the bare addresses with their ports',
    );
    const applied = await egressd.client.send('PUT', '/api/v1/computers/newcomer/network-policy?wait=10000', {
      body: suggestion?.policy,
    });
    t.is(applied.status, 200);
    t.like((applied.body as { data: object }).data, { audit: false, dns: 'listed' });
    t.is(
      await digShort(cg, 'api.used.test'),
      '203.0.113.33',
      'the listed name resolves (and its address is learned)',
    );
    t.deepEqual(
      await world.probeResults(
        { cgroup: cg },
        'tcp:203.0.113.33:443',
        'udp-sendto:192.0.2.2:5353',
        'tcp:[2001:db8::2]:8080',
        'tcp:203.0.113.33:80',
        'tcp:192.0.2.1:80',
      ),
      ['ok', 'ok', 'ok', 'EPERM', 'EPERM'],
      'exactly what was used: another port or address is refused',
    );
  },
);
