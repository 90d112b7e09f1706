import test from 'ava';
import {
  type Accounts,
  confinedArgv,
  confinedEnv,
  type PasswdEntry,
  resolveRunAs,
  SETPRIV,
  UNSHARE,
} from '../../cli/confine.js';
import { EgressdError } from '../../policy/errors.js';

const PASSWD: PasswdEntry[] = [
  { name: 'root', uid: 0, gid: 0, home: '/root' },
  { name: 'alice', uid: 1000, gid: 1000, home: '/home/alice' },
  { name: 'nobody', uid: 65534, gid: 65534, home: '/nonexistent' },
];
const GROUPS: Record<string, number> = { root: 0, alice: 1000, staff: 50, nogroup: 65534 };

const accounts: Accounts = {
  user: (key) => PASSWD.find((e) => (/^\d+$/.test(key) ? String(e.uid) === key : e.name === key)),
  group: (key) => (/^\d+$/.test(key) ? Number(key) : GROUPS[key]),
};
const none = { allowRootEscape: false };

test('default: nobody, or the user who ran sudo (SUDO_UID/SUDO_GID); a sudo from root is no sudo', (t) => {
  t.deepEqual(resolveRunAs(none, {}, accounts), {
    uid: 65534,
    gid: 65534,
    account: { name: 'nobody', home: '/nonexistent' },
  });
  t.deepEqual(resolveRunAs(none, {}, { user: () => undefined, group: () => undefined }), {
    uid: 65534,
    gid: 65534,
  });
  t.deepEqual(resolveRunAs(none, { SUDO_UID: '1000', SUDO_GID: '50' }, accounts), {
    uid: 1000,
    gid: 50,
    account: { name: 'alice', home: '/home/alice' },
  });
  t.deepEqual(resolveRunAs(none, { SUDO_UID: '4242', SUDO_GID: '4343' }, accounts), { uid: 4242, gid: 4343 });
  t.is(resolveRunAs(none, { SUDO_UID: '0', SUDO_GID: '0' }, accounts).uid, 65534);
});

test('--user and --group by name or number', (t) => {
  t.like(resolveRunAs({ ...none, user: 'alice' }, { SUDO_UID: '4242' }, accounts), { uid: 1000, gid: 1000 });
  t.like(resolveRunAs({ ...none, user: '1000', group: 'staff' }, {}, accounts), {
    uid: 1000,
    gid: 50,
    account: { name: 'alice' },
  });
  t.deepEqual(resolveRunAs({ ...none, user: '4242', group: '4343' }, {}, accounts), { uid: 4242, gid: 4343 });
  t.like(resolveRunAs({ ...none, group: 'staff' }, {}, accounts), { uid: 65534, gid: 50 });
  const fails = (opts: Parameters<typeof resolveRunAs>[0], code: string, message: RegExp) => {
    const err = t.throws<EgressdError>(() => resolveRunAs(opts, {}, accounts), {
      instanceOf: EgressdError,
      message,
    });
    t.is(err?.code, code);
  };
  fails({ ...none, user: 'mallory' }, 'NO_SUCH_USER', /--user mallory: no such user/);
  fails({ ...none, user: '4242' }, 'USAGE', /uid 4242 has no passwd entry, so no group: give --group/);
  fails({ ...none, group: 'wheel' }, 'NO_SUCH_GROUP', /--group wheel: no such group/);
  fails({ ...none, user: '-x' }, 'USAGE', /--user takes a name or a number/);
  fails({ ...none, user: '4294967295', group: '1' }, 'USAGE', /--user must be a number from 0 to/);
});

test('root only with --allow-root-escape, and that flag only with root', (t) => {
  for (const user of ['root', '0']) {
    const err = t.throws<EgressdError>(() => resolveRunAs({ ...none, user }, {}, accounts), {
      instanceOf: EgressdError,
      message: /move itself out of its computer.*--allow-root-escape/,
    });
    t.is(err?.code, 'ROOT_NOT_ALLOWED');
    t.deepEqual(resolveRunAs({ user, allowRootEscape: true }, {}, accounts), {
      uid: 0,
      gid: 0,
      account: { name: 'root', home: '/root' },
    });
  }
  t.throws(() => resolveRunAs({ allowRootEscape: true }, {}, accounts), {
    message: /--allow-root-escape goes with --user root; CMD would run as uid 65534/,
  });
});

test('argv: join the cgroup, unshare the cgroup namespace, drop everything, then CMD', (t) => {
  const procs = '/sys/fs/cgroup/egressd/run/x/cgroup.procs';
  const join = ['/bin/sh', '-c', 'echo 0 > "$0" && exec "$@"', procs, UNSHARE, '--cgroup', '--', SETPRIV];
  t.deepEqual(
    confinedArgv(procs, { uid: 1000, gid: 50, account: { name: 'alice', home: '/h' } }, ['id', '-u']),
    [
      ...join,
      '--regid=50',
      '--init-groups',
      '--reuid=1000',
      '--bounding-set=-all',
      '--inh-caps=-all',
      '--ambient-caps=-all',
      '--no-new-privs',
      '--',
      'id',
      '-u',
    ],
  );
  t.deepEqual(confinedArgv(procs, { uid: 4242, gid: 4343 }, ['sh']), [
    ...join,
    '--regid=4343',
    '--clear-groups',
    '--reuid=4242',
    '--bounding-set=-all',
    '--inh-caps=-all',
    '--ambient-caps=-all',
    '--no-new-privs',
    '--',
    'sh',
  ]);
  t.deepEqual(confinedArgv(procs, { uid: 0, gid: 0, account: { name: 'root', home: '/root' } }, ['sh']), [
    ...join,
    '--regid=0',
    '--init-groups',
    '--reuid=0',
    '--',
    'sh',
  ]);
});

test("env: egressd's keys removed; HOME, USER and LOGNAME are the account's, when there is one", (t) => {
  const env = { PATH: '/usr/bin', HOME: '/root', USER: 'root', EGRESSD_API_KEY: 'k', EGRESSD_ADMIN_KEY: 'a' };
  t.deepEqual(confinedEnv(env, { uid: 1000, gid: 1000, account: { name: 'alice', home: '/home/alice' } }), {
    PATH: '/usr/bin',
    HOME: '/home/alice',
    USER: 'alice',
    LOGNAME: 'alice',
  });
  t.deepEqual(confinedEnv(env, { uid: 4242, gid: 4242 }), { PATH: '/usr/bin', HOME: '/root', USER: 'root' });
});
