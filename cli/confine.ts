/**
 * How `egressd run` starts CMD so that it cannot leave its computer.
 *
 * Root (more exactly CAP_SYS_ADMIN, or root's write access to the cgroup
 * tree) can move itself out of any cgroup by writing its pid into another
 * cgroup.procs, and so out of its computer's policy. So CMD runs as an
 * ordinary user unless asked otherwise (resolveRunAs), and the one process
 * that becomes CMD goes through four programs, each exec'ing the next (the
 * pid, and so CMD's exit status, stay the same):
 *
 *   /bin/sh -c 'echo 0 > "$0" && exec "$@"' <computer>/cgroup.procs \
 *     unshare --cgroup -- setpriv --regid G --init-groups --reuid U ... -- CMD
 *
 * 1. sh, still root, writes itself into the computer's cgroup.procs ("0"
 *    means the writer); from here on the process and all it becomes are in
 *    the computer. A failed write ends it (status 2) before CMD.
 * 2. unshare(CLONE_NEWCGROUP): its cgroup namespace is rooted where it is,
 *    the computer's cgroup (/proc/self/cgroup reads "0::/"). This is the
 *    view only: without the `nsdelegate` mount option the kernel lets root
 *    in a cgroup namespace write any cgroup.procs it can reach.
 * 3. setpriv (still root) clears the bounding, inheritable and ambient
 *    capability sets, sets the gid, the supplementary groups (the user's own
 *    through initgroups(3), none for a uid without a passwd entry), then the
 *    uid, which empties the permitted and effective sets, and no_new_privs:
 *    no setuid program gives anything back. A failure ends it before CMD
 *    (status 1, or 127 for a CMD it cannot find, like sh's).
 * 4. CMD, without any capability, in the computer, unable to write any
 *    cgroup.procs (they belong to root, mode 0644: EACCES).
 *
 * CMD's environment is the caller's without egressd's API keys (confinedEnv).
 * unshare and setpriv are util-linux's (Debian package util-linux).
 * With --user root --allow-root-escape, step 3 only sets the ids and groups:
 * CMD keeps root's capabilities and can leave (the warning says so).
 */
import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { EgressdError } from '../policy/errors.js';

export const UNSHARE = '/usr/bin/unshare';
export const SETPRIV = '/usr/bin/setpriv';

/** Who CMD runs as. */
export interface RunAs {
  uid: number;
  gid: number;
  /** The passwd entry of `uid`, when it has one: its groups become CMD's, and HOME, USER, LOGNAME. */
  account?: { name: string; home: string };
}

export interface RunAsOptions {
  /** --user NAME|UID */
  user?: string | undefined;
  /** --group NAME|GID */
  group?: string | undefined;
  /** --allow-root-escape: --user root is allowed only with it. */
  allowRootEscape: boolean;
}

export interface PasswdEntry {
  name: string;
  uid: number;
  gid: number;
  home: string;
}

/** The account database (getent, so NSS users count too); a fake in unit tests. */
export interface Accounts {
  /** By name, or by uid when `key` is all digits. */
  user(key: string): PasswdEntry | undefined;
  /** A group's gid, by name, or by gid when `key` is all digits. */
  group(key: string): number | undefined;
}

/** Debian's `nobody` and `nogroup`, when the account database has no `nobody`. */
export const NOBODY = { uid: 65534, gid: 65534 } as const;

const NUMERIC = /^\d+$/;
const ACCOUNT_NAME = /^[A-Za-z0-9_.][A-Za-z0-9_.-]*\$?$/;
/** (uid_t)-1 means "unchanged" to setresuid(2): never an id. */
const MAX_ID = 0xfffffffe;

function parseId(value: string, what: string): number {
  const n = Number(value);
  if (!NUMERIC.test(value) || n > MAX_ID) {
    throw new EgressdError('USAGE', `${what} must be a number from 0 to ${MAX_ID}, not "${value}"`);
  }
  return n;
}

function checkName(value: string, flag: string): void {
  if (!NUMERIC.test(value) && !ACCOUNT_NAME.test(value)) {
    throw new EgressdError('USAGE', `${flag} takes a name or a number, not "${value}"`);
  }
}

/**
 * The user and group CMD runs as: --user (and its primary group), else the
 * user who ran sudo (SUDO_UID, SUDO_GID), else `nobody`; --group overrides
 * the group. Never root, unless --user names uid 0 and --allow-root-escape
 * is given. (A sudo from root, SUDO_UID=0, counts as no sudo: nobody.)
 */
export function resolveRunAs(
  opts: RunAsOptions,
  env: Record<string, string | undefined>,
  accounts: Accounts,
): RunAs {
  let uid: number;
  let gid: number | undefined;
  let entry: PasswdEntry | undefined;
  if (opts.user !== undefined) {
    checkName(opts.user, '--user');
    entry = accounts.user(opts.user);
    if (NUMERIC.test(opts.user)) {
      uid = parseId(opts.user, '--user');
      if (entry?.uid !== uid) entry = undefined;
    } else if (entry) {
      uid = entry.uid;
    } else {
      throw new EgressdError('NO_SUCH_USER', `--user ${opts.user}: no such user (give a uid to use one)`);
    }
    gid = entry?.gid;
  } else if (env['SUDO_UID'] && env['SUDO_UID'] !== '0') {
    uid = parseId(env['SUDO_UID'], 'SUDO_UID');
    entry = accounts.user(String(uid));
    if (entry?.uid !== uid) entry = undefined;
    gid = env['SUDO_GID'] ? parseId(env['SUDO_GID'], 'SUDO_GID') : entry?.gid;
  } else {
    entry = accounts.user('nobody');
    uid = entry?.uid ?? NOBODY.uid;
    gid = entry?.gid ?? NOBODY.gid;
  }
  if (opts.group !== undefined) {
    checkName(opts.group, '--group');
    if (NUMERIC.test(opts.group)) {
      gid = parseId(opts.group, '--group');
    } else {
      gid = accounts.group(opts.group);
      if (gid === undefined) {
        throw new EgressdError(
          'NO_SUCH_GROUP',
          `--group ${opts.group}: no such group (give a gid to use one)`,
        );
      }
    }
  }
  if (gid === undefined) {
    throw new EgressdError('USAGE', `uid ${uid} has no passwd entry, so no group: give --group NAME|GID`);
  }
  if (uid === 0 && !opts.allowRootEscape) {
    throw new EgressdError(
      'ROOT_NOT_ALLOWED',
      'CMD would run as root, which can move itself out of its computer (and its policy) by writing to ' +
        'any cgroup.procs: run it as another --user, or add --allow-root-escape if CMD is trusted',
    );
  }
  if (uid !== 0 && opts.allowRootEscape) {
    throw new EgressdError(
      'USAGE',
      `--allow-root-escape goes with --user root; CMD would run as uid ${uid}, so leave it out`,
    );
  }
  return { uid, gid, ...(entry ? { account: { name: entry.name, home: entry.home } } : {}) };
}

/** The argv that runs `command` confined to the cgroup of `procs` (its cgroup.procs file) as `as`. */
export function confinedArgv(procs: string, as: RunAs, command: readonly string[]): string[] {
  const drop =
    as.uid === 0 ? [] : ['--bounding-set=-all', '--inh-caps=-all', '--ambient-caps=-all', '--no-new-privs'];
  return [
    '/bin/sh',
    '-c',
    'echo 0 > "$0" && exec "$@"',
    procs,
    UNSHARE,
    '--cgroup',
    '--',
    SETPRIV,
    `--regid=${as.gid}`,
    as.account ? '--init-groups' : '--clear-groups',
    `--reuid=${as.uid}`,
    ...drop,
    '--',
    ...command,
  ];
}

/** Variables of egressd's own that CMD never sees: with the API key it could change its computer's policy. */
export const SECRET_VARIABLES = ['EGRESSD_API_KEY', 'EGRESSD_ADMIN_KEY'] as const;

/**
 * CMD's environment: the caller's without egressd's keys, with HOME, USER and
 * LOGNAME of the account it runs as (when it has one).
 */
export function confinedEnv(
  env: Record<string, string | undefined>,
  as: RunAs,
): Record<string, string | undefined> {
  const out = { ...env };
  for (const name of SECRET_VARIABLES) delete out[name];
  if (as.account)
    Object.assign(out, { HOME: as.account.home, USER: as.account.name, LOGNAME: as.account.name });
  return out;
}

/** Throws with what to install when unshare or setpriv is missing. */
export function checkConfineTools(): void {
  const missing = [UNSHARE, SETPRIV].filter((p) => !existsSync(p));
  if (missing.length) {
    throw new EgressdError(
      'MISSING_TOOL',
      `egressd run needs ${missing.join(' and ')} from util-linux: apt-get install util-linux`,
    );
  }
}

function getent(database: 'passwd' | 'group', key: string): string[] | undefined {
  try {
    const line = execFileSync('getent', [database, key], {
      encoding: 'utf8',
      stdio: ['ignore', 'pipe', 'ignore'],
    }).split('\n')[0];
    return line ? line.split(':') : undefined;
  } catch {
    return undefined; // exit 2: no such key
  }
}

/** The host's accounts through getent(1): /etc/passwd, /etc/group and whatever NSS adds. */
export const systemAccounts: Accounts = {
  user(key) {
    const f = getent('passwd', key);
    if (!f || f.length < 7) return undefined;
    return { name: f[0]!, uid: Number(f[2]), gid: Number(f[3]), home: f[5]! };
  },
  group(key) {
    const f = getent('group', key);
    return f && f.length >= 3 ? Number(f[2]) : undefined;
  },
};
