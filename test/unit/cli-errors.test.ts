/**
 * The client commands' errors, from the real CLI process against a stand-in
 * API on loopback: one line with the API's code and message for a 4xx, the
 * URL and the system error when the API cannot be reached, a stack trace
 * only with --debug. Also the pure helpers of `computers add` and `run
 * --create`: absolute cgroup paths, the node chosen; what `policy set
 * --audit` sends and shows; and `policy suggest`: its argument errors, what
 * it prints, what --apply sends.
 */
import { execFile } from 'node:child_process';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import test from 'ava';
import { cgroupArgument, describeSuggestion, sinceArgument } from '../../cli/commands.js';
import { createNode } from '../../cli/run.js';
import { EgressdError } from '../../policy/errors.js';

const execFileAsync = promisify(execFile);
const CLI = fileURLToPath(new URL('../../cli/main.js', import.meta.url));

let server: Server;
let api: string;
let closedPort: number;
/** The bodies of the PUTs to computer "aud"'s policy, in order. */
const audSent: Array<Record<string, unknown>> = [];

/** Computers "sug-*": the bodies of the PUTs to each one's policy, and the query strings of its suggestion GETs. */
const sugSent = new Map<string, Array<Record<string, unknown>>>();
const sugAsked = new Map<string, string[]>();
const noted = <T>(map: Map<string, T[]>, id: string): T[] => {
  if (!map.has(id)) map.set(id, []);
  return map.get(id)!;
};

/** A suggestion as the API answers it. */
const SUGGESTION = {
  policy: {
    mode: 'allowlist',
    rules: [
      { host: '*.cdn.example.com', port: 443, protocol: 'tcp' },
      { host: '2001:db8::1', port: 53, protocol: 'udp' },
    ],
  },
  rules: [
    {
      rule: { host: '*.cdn.example.com', port: 443, protocol: 'tcp' },
      observations: ['a', 'b', 'c', 'd'].map((l, i) => ({
        host: `${l}.cdn.example.com`,
        port: 443,
        protocol: 'tcp',
        count: 2,
        first_seen: '2026-01-01T00:00:00.000Z',
        last_seen: `2026-01-0${5 - i}T00:00:00.000Z`,
      })),
    },
    {
      rule: { host: '2001:db8::1', port: 53, protocol: 'udp' },
      observations: [
        {
          host: '2001:db8::1',
          port: 53,
          protocol: 'udp',
          count: 1,
          first_seen: '2026-01-01T00:00:00.000Z',
          last_seen: '2026-01-02T00:00:00.000Z',
        },
      ],
    },
  ],
  wildcard_threshold: 3,
  since: null,
  observed: 5,
  skipped: [],
  note: null,
};

/** A policy view as the API answers it, enforced. */
function policyReply(body: Record<string, unknown>): string {
  return JSON.stringify({
    data: {
      computer_id: 'aud',
      mode: body['mode'],
      dns: 'all',
      block_dns: false,
      audit: body['audit'] === true,
      rules: [],
      version: 7,
      updated_at: '2026-01-01T00:00:00.000Z',
      enforcement: {
        state: 'enforced',
        reason: null,
        enforced_version: 7,
        enforced_at: '2026-01-01T00:00:00.000Z',
        revocation: null,
        revoked: null,
      },
    },
  });
}

test.before(async () => {
  server = createServer(async (req, res) => {
    res.setHeader('content-type', 'application/json');
    if (req.url?.startsWith('/api/v1/computers/aud/network-policy') && req.method === 'PUT') {
      let text = '';
      for await (const chunk of req) text += chunk;
      const body = JSON.parse(text) as Record<string, unknown>;
      audSent.push(body);
      res.end(policyReply(body));
      return;
    }
    const sug = /^\/api\/v1\/computers\/(sug-[a-z]+)\/network-policy(\/suggestion)?(\?|$)/.exec(
      req.url ?? '',
    );
    if (sug?.[1] && sug[2] && req.method === 'GET') {
      const query = new URL(req.url ?? '', 'http://x').searchParams;
      noted(sugAsked, sug[1]).push(query.toString());
      res.end(JSON.stringify({ data: { ...SUGGESTION, since: query.get('since') } }));
      return;
    }
    if (sug?.[1] && !sug[2] && req.method === 'PUT') {
      let text = '';
      for await (const chunk of req) text += chunk;
      const body = JSON.parse(text) as Record<string, unknown>;
      noted(sugSent, sug[1]).push(body);
      res.end(policyReply(body));
      return;
    }
    if (req.url?.startsWith('/api/v1/computers/nobody/network-policy')) {
      res.statusCode = 404;
      res.end(JSON.stringify({ error: { code: 'computer_not_found', message: 'computer not found' } }));
      return;
    }
    res.statusCode = 400;
    res.end(
      JSON.stringify({
        error: { code: 'invalid_request', message: 'rules[0].host: not an address, CIDR block or hostname' },
      }),
    );
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  api = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  // A port nothing listens on: bound, noted, closed.
  const probe = createServer();
  await new Promise<void>((r) => probe.listen(0, '127.0.0.1', r));
  closedPort = (probe.address() as AddressInfo).port;
  await new Promise((r) => probe.close(r));
});

test.after.always(() => new Promise<void>((r) => server?.close(() => r())));

async function cli(
  apiUrl: string,
  ...args: string[]
): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const r = await execFileAsync(process.execPath, [CLI, ...args], {
      env: { PATH: process.env['PATH'] ?? '', EGRESSD_API: apiUrl, EGRESSD_API_KEY: 'k' },
    });
    return { code: 0, ...r };
  } catch (err) {
    const e = err as { code?: number; stdout?: string; stderr?: string };
    return { code: e.code ?? 1, stdout: e.stdout ?? '', stderr: e.stderr ?? '' };
  }
}

const lines = (text: string) => text.split('\n').filter((l) => l !== '');

test('a 4xx: one line with the API message and code, no stack trace', async (t) => {
  const r = await cli(api, 'policy', 'get', 'nobody');
  t.is(r.code, 1);
  t.deepEqual(lines(r.stderr), ['egressd: computer not found (HTTP 404, computer_not_found)']);
  const bad = await cli(api, 'policy', 'set', 'x', '--mode', 'allowlist', '--rule', 'bad..host');
  t.is(bad.code, 1);
  t.deepEqual(lines(bad.stderr), [
    'egressd: rules[0].host: not an address, CIDR block or hostname (HTTP 400, invalid_request)',
  ]);
});

test('a bad rule on the command line: one line, no stack trace', async (t) => {
  const r = await cli(api, 'policy', 'set', 'x', '--mode', 'allowlist', '--rule', 'github.com:99999');
  t.is(r.code, 1);
  t.deepEqual(lines(r.stderr), [
    'egressd: rule "github.com:99999": the port must be an integer from 1 to 65535',
  ]);
});

test('an unreachable API: the URL and the system error, and what to check', async (t) => {
  const url = `http://127.0.0.1:${closedPort}`;
  const r = await cli(url, 'computers', 'list');
  t.is(r.code, 1);
  t.is(lines(r.stderr).length, 1, r.stderr);
  t.regex(
    r.stderr,
    new RegExp(
      `^egressd: cannot reach the API at ${url}/api/v1/computers \\(ECONNREFUSED\\): nothing listens there: is egressd running, and is --api / EGRESSD_API right\\?`,
    ),
  );
  t.notRegex(r.stderr, /\n\s+at /);
});

test('--debug adds the stack trace', async (t) => {
  const r = await cli(api, 'policy', 'get', 'nobody', '--debug');
  t.is(r.code, 1);
  t.regex(r.stderr, /^egressd: computer not found \(HTTP 404, computer_not_found\)\n/);
  t.regex(r.stderr, /ApiClientError: computer not found\n\s+at /);
  const unreachable = await cli(`http://127.0.0.1:${closedPort}`, 'computers', 'list', '--debug');
  t.regex(unreachable.stderr, /ApiUnreachableError: cannot reach the API/);
});

test('usage errors print the usage and exit 2', async (t) => {
  const r = await cli(api, 'policy', 'frobnicate', 'x');
  t.is(r.code, 2);
  t.regex(r.stderr, /usage: egressd policy get\|set\|reset\|learned ID/);
  const unknown = await cli(api, 'policy', 'get', 'x', '--no-such-flag');
  t.is(unknown.code, 2);
  t.regex(unknown.stderr, /Unknown option '--no-such-flag'/);
});

test('policy set --audit sends audit true; without it, false (a set replaces the whole policy); both show it', async (t) => {
  const on = await cli(api, 'policy', 'set', 'aud', '--mode', 'isolated', '--audit');
  t.is(on.code, 0, on.stderr);
  t.like(audSent.at(-1), { mode: 'isolated', audit: true });
  t.true(lines(on.stdout).includes('audit:       on (refusals are let through and reported)'), on.stdout);
  const off = await cli(api, 'policy', 'set', 'aud', '--mode', 'isolated');
  t.is(off.code, 0, off.stderr);
  t.like(audSent.at(-1), { mode: 'isolated', audit: false });
  t.true(lines(off.stdout).includes('audit:       off'), off.stdout);
});

test('cgroup arguments: an absolute path under the local cgroup2 mount is made relative', (t) => {
  const mount = () => '/sys/fs/cgroup/unified';
  t.is(cgroupArgument('egressd/x', mount), 'egressd/x');
  t.is(cgroupArgument('/sys/fs/cgroup/unified/egressd/x', mount), 'egressd/x');
  t.is(cgroupArgument('/sys/fs/cgroup/unified/egressd/x/', mount), 'egressd/x');
  t.is(cgroupArgument('/sys/fs/cgroup/unified//egressd/./x', mount), 'egressd/x');
  // As /proc/PID/cgroup shows it: relative to the mount already, the API takes it.
  t.is(cgroupArgument('/egressd/x', mount), '/egressd/x');
  // No cgroup2 here (a client on another host): sent as given, the API decides.
  t.is(
    cgroupArgument('/sys/fs/cgroup/egressd/x', () => undefined),
    '/sys/fs/cgroup/egressd/x',
  );
  t.throws(() => cgroupArgument('/sys/fs/cgroup/unified', mount), { instanceOf: EgressdError });
  // A directory elsewhere in /sys (a cgroup v1 hierarchy, say): refused with the mount named.
  const err = t.throws(() => cgroupArgument('/sys/fs', mount), { instanceOf: EgressdError });
  t.regex(err?.message ?? '', /not under this host's cgroup2 mount \(\/sys\/fs\/cgroup\/unified\)/);
});

test('run --create: the node is --node, else EGRESSD_NODE, else the API default node', async (t) => {
  const service = (node: string | null) => ({
    service: async () => ({ default_node: node, cgroup_bases: ['egressd'], tenant: null }),
  });
  t.is(await createNode({ node: 'flag-node' }, { EGRESSD_NODE: 'env' }, service('api'), api), 'flag-node');
  t.is(await createNode({}, { EGRESSD_NODE: 'env-node' }, service('api'), api), 'env-node');
  t.is(await createNode({}, {}, service('agent-node'), api), 'agent-node');
  const err = await t.throwsAsync(() => createNode({}, {}, service(null), api), { instanceOf: EgressdError });
  t.regex(err?.message ?? '', /has no default node .*--node or EGRESSD_NODE/);
  t.regex(err?.message ?? '', new RegExp(api.replace(/[.]/g, '\\.')));
  t.true(path.isAbsolute(CLI));
});

test('policy suggest: argument errors print what to give and exit 2, asking the API nothing', async (t) => {
  const noId = await cli(api, 'policy', 'suggest');
  t.is(noId.code, 2);
  t.regex(noId.stderr, /egressd policy suggest ID \[--since TIME\] \[--apply\]/);
  const badSince = await cli(api, 'policy', 'suggest', 'sug-args', '--since', 'yesterday');
  t.is(badSince.code, 2);
  t.deepEqual(lines(badSince.stderr), [
    'egressd: --since must be an RFC 3339 time (for example 2026-01-01T00:00:00Z) or a time back from now (90s, 30m, 24h, 7d), not "yesterday"',
  ]);
  const setFlags = await cli(
    api,
    'policy',
    'suggest',
    'sug-args',
    '--mode',
    'allowlist',
    '--audit',
    '--apply',
  );
  t.is(setFlags.code, 2);
  t.regex(setFlags.stderr, /^egressd: policy suggest takes no --mode, --audit: it suggests the rules/);
  const applyElsewhere = await cli(api, 'policy', 'set', 'sug-args', '--mode', 'isolated', '--apply');
  t.is(applyElsewhere.code, 2);
  t.regex(applyElsewhere.stderr, /--since and --apply go with policy suggest, not policy set/);
  const sinceElsewhere = await cli(api, 'policy', 'get', 'sug-args', '--since', '1h');
  t.is(sinceElsewhere.code, 2);
  t.false(sugAsked.has('sug-args'), 'nothing was asked');
  t.false(sugSent.has('sug-args'), 'nothing was sent');
});

test('policy suggest --since: RFC 3339 or back from now, sent as RFC 3339', (t) => {
  const now = Date.parse('2026-03-10T12:00:00Z');
  t.is(sinceArgument('24h', now), '2026-03-09T12:00:00.000Z');
  t.is(sinceArgument('30m', now), '2026-03-10T11:30:00.000Z');
  t.is(sinceArgument('7d', now), '2026-03-03T12:00:00.000Z');
  t.is(sinceArgument('90s', now), '2026-03-10T11:58:30.000Z');
  t.is(sinceArgument('2026-01-01T00:00:00Z', now), '2026-01-01T00:00:00.000Z');
  t.is(sinceArgument('2026-01-01T01:00:00+01:00', now), '2026-01-01T00:00:00.000Z');
  for (const bad of ['', ' ', 'soon', '24x', '-1h', undefined, true]) {
    t.throws(() => sinceArgument(bad, now), { instanceOf: EgressdError, message: /^--since must be/ });
  }
});

test('policy suggest prints one rule a line with its count and last seen, and how to apply; --json the answer', async (t) => {
  const r = await cli(api, 'policy', 'suggest', 'sug-print', '--since', '2026-01-01T00:00:00Z');
  t.is(r.code, 0, r.stderr);
  t.is(sugAsked.get('sug-print')?.[0], 'since=2026-01-01T00%3A00%3A00.000Z');
  t.deepEqual(lines(r.stdout), [
    'sug-print: suggested allowlist from 5 observations since 2026-01-01T00:00:00.000Z',
    '  *.cdn.example.com:443/tcp  4 names, seen 8 times, last 2026-01-05T00:00:00.000Z',
    '  [2001:db8::1]:53/udp       seen 1 time, last 2026-01-02T00:00:00.000Z',
    'apply it with: egressd policy suggest sug-print --since 2026-01-01T00:00:00.000Z --apply',
  ]);
  const json = await cli(api, 'policy', 'suggest', 'sug-print', '--json');
  t.is(json.code, 0, json.stderr);
  t.deepEqual(JSON.parse(json.stdout).policy, SUGGESTION.policy);
  t.false(sugSent.has('sug-print'), 'without --apply nothing is sent');
});

test('policy suggest --apply PUTs the suggested policy as it is and prints it as policy set does', async (t) => {
  const r = await cli(api, 'policy', 'suggest', 'sug-apply', '--apply');
  t.is(r.code, 0, r.stderr);
  t.deepEqual(sugSent.get('sug-apply'), [SUGGESTION.policy]);
  t.true(lines(r.stdout).includes('mode:        allowlist'), r.stdout);
  t.true(lines(r.stdout).includes('state:       enforced'), r.stdout);
});

test('policy suggest with nothing observed: says it refuses everything, and the note', (t) => {
  const empty = {
    ...SUGGESTION,
    policy: { mode: 'isolated' as const, rules: [], dns: 'none' as const },
    rules: [],
    observed: 0,
    note: 'nothing was observed: the suggestion refuses everything.',
  };
  t.deepEqual(describeSuggestion('box', empty), [
    'box: suggested isolated from 0 observations',
    '  (no rules: isolated, dns none; it refuses everything)',
    'note: nothing was observed: the suggestion refuses everything.',
    'apply it with: egressd policy suggest box --apply',
  ]);
});
