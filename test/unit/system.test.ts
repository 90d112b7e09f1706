import test from 'ava';
import {
  checkKernel,
  findCgroup2Mount,
  parseMountInfo,
  requireRoot,
  resolveCgroup,
} from '../../daemon/kernel/system.js';

const HYBRID = [
  '24 30 0:22 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw',
  '31 24 0:27 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755',
  '32 31 0:28 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:10 - cgroup2 cgroup2 rw',
  '40 24 0:35 / /sys/fs/bpf rw,nosuid,nodev,noexec,relatime shared:11 - bpf bpf rw',
  '41 24 0:36 / /mnt/with\\040space rw - ext4 /dev/vda rw',
].join('\n');

test('mountinfo: cgroup2 found on hybrid hosts, escapes decoded', (t) => {
  const mounts = parseMountInfo(HYBRID);
  t.is(findCgroup2Mount(mounts), '/sys/fs/cgroup/unified');
  t.true(mounts.some((m) => m.mountPoint === '/mnt/with space'));
});

test('no cgroup2 mount: the error says how to get one', (t) => {
  const err = t.throws(() =>
    findCgroup2Mount(parseMountInfo(HYBRID.replace('cgroup2 cgroup2', 'cgroup cgroup'))),
  );
  t.regex(err?.message ?? '', /no cgroup2 file system is mounted.*mount -t cgroup2/s);
});

test('a missing cgroup path names the directory to create', (t) => {
  const err = t.throws(() => resolveCgroup('no/such/computer', '/sys/fs/cgroup/unified'));
  t.regex(err?.message ?? '', /does not exist under .*mkdir/);
});

test('not root: the agent refuses to start and says why', (t) => {
  const err = t.throws(() => requireRoot(65534));
  t.regex(err?.message ?? '', /run it as root/);
  t.notThrows(() => requireRoot(0));
});

test('a kernel without SO_NETNS_COOKIE is refused with the version to run', (t) => {
  const err = t.throws(() =>
    checkKernel(() => {
      throw Object.assign(new Error('getsockopt'), { errno: 92 });
    }, '5.10.0-32-amd64'),
  );
  t.regex(
    err?.message ?? '',
    /this kernel \(5\.10\.0-32-amd64\) lacks SO_NETNS_COOKIE .* run Linux 5\.15 or newer/,
  );
  t.notThrows(() => checkKernel(() => 1n));
  t.throws(
    () =>
      checkKernel(() => {
        throw Object.assign(new Error('other'), { errno: 1 });
      }),
    { message: 'other' },
  );
});
