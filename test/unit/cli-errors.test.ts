/**
 * The client commands' errors, from the real CLI process against a stand-in
 * API on loopback: one line with the API's code and message for a 4xx, the
 * URL and the system error when the API cannot be reached, a stack trace
 * only with --debug. Also the pure helpers of `computers add` and `run
 * --create`: absolute cgroup paths, the node chosen; and what `policy set
 * --audit` sends and shows.
 */
import { execFile } from 'node:child_process';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import test from 'ava';
import { cgroupArgument } from '../../cli/commands.js';
import { createNode } from '../../cli/run.js';
import { EgressdError } from '../../policy/errors.js';

const execFileAsync = promisify(execFile);
const CLI = fileURLToPath(new URL('../../cli/main.js', import.meta.url));

let server: Server;
let api: string;
let closedPort: number;
/** The bodies of the PUTs to computer "aud"'s policy, in order. */
const audSent: Array<Record<string, unknown>> = [];

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
