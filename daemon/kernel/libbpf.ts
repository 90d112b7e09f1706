/**
 * The one module that loads libbpf (Debian's libbpf1) and lists every symbol
 * egressd uses from it, plus the libc calls needed to read a network
 * namespace cookie and to enter another network namespace. Everything else goes through the typed wrappers below,
 * which turn libbpf's negative-errno returns into LibbpfError.
 */
import { constants } from 'node:os';
import koffi, { type LibraryHandle } from 'koffi';
import { EgressdError } from '../../policy/errors.js';

const { errno: E } = constants;

/** The kernel's ENOTSUPP: kernel-internal, so not in os.constants.errno, yet syscalls return it. */
export const ENOTSUPP = 524;

export class LibbpfError extends Error {
  constructor(
    readonly call: string,
    readonly errno: number,
    detail = '',
  ) {
    super(`${call} failed: ${errnoName(errno)}${detail ? `: ${detail}` : ''}`);
    this.name = 'LibbpfError';
  }
}

const ERRNO_NAMES = new Map<number, string>([[ENOTSUPP, 'ENOTSUPP']]);
for (const [name, n] of Object.entries(E)) if (!ERRNO_NAMES.has(n)) ERRNO_NAMES.set(n, name);
// Linux spells 95 EOPNOTSUPP (ENOTSUP is its alias).
ERRNO_NAMES.set(E.EOPNOTSUPP, 'EOPNOTSUPP');

export function errnoName(errno: number): string {
  return ERRNO_NAMES.get(errno) ?? `errno ${errno}`;
}

let lib: LibraryHandle;
try {
  lib = koffi.load('libbpf.so.1');
} catch (err) {
  throw new EgressdError(
    'NO_LIBBPF',
    "libbpf.so.1 could not be loaded: install Debian's libbpf1 (apt-get install libbpf1, or run scripts/setup.sh)",
    { cause: err },
  );
}
const libc = koffi.load('libc.so.6');

koffi.opaque('bpf_object');
koffi.opaque('bpf_program');
koffi.opaque('bpf_map');
const printFn = koffi.proto('int egressd_libbpf_print_fn(int level, const char *fmt, void *ap)');
koffi.opaque('ring_buffer');
const sampleFn = koffi.proto('int egressd_ring_buffer_sample_fn(void *ctx, void *data, size_t size)');

const sym = {
  libbpf_set_print: lib.func('void *libbpf_set_print(egressd_libbpf_print_fn *fn)'),
  bpf_object__open_file: lib.func('bpf_object *bpf_object__open_file(const char *path, void *opts)'),
  bpf_object__load: lib.func('int bpf_object__load(bpf_object *obj)'),
  bpf_object__close: lib.func('void bpf_object__close(bpf_object *obj)'),
  bpf_object__find_program_by_name: lib.func(
    'bpf_program *bpf_object__find_program_by_name(bpf_object *obj, const char *name)',
  ),
  bpf_object__find_map_by_name: lib.func(
    'bpf_map *bpf_object__find_map_by_name(bpf_object *obj, const char *name)',
  ),
  bpf_program__fd: lib.func('int bpf_program__fd(bpf_program *prog)'),
  bpf_map__fd: lib.func('int bpf_map__fd(bpf_map *map)'),
  bpf_map__reuse_fd: lib.func('int bpf_map__reuse_fd(bpf_map *map, int fd)'),
  bpf_iter_create: lib.func('int bpf_iter_create(int link_fd)'),
  bpf_obj_pin: lib.func('int bpf_obj_pin(int fd, const char *pathname)'),
  bpf_obj_get: lib.func('int bpf_obj_get(const char *pathname)'),
  bpf_obj_get_info_by_fd: lib.func('int bpf_obj_get_info_by_fd(int fd, void *info, void *info_len)'),
  bpf_link_create: lib.func('int bpf_link_create(int prog_fd, int target_fd, int attach_type, void *opts)'),
  bpf_link_detach: lib.func('int bpf_link_detach(int link_fd)'),
  bpf_prog_attach: lib.func(
    'int bpf_prog_attach(int prog_fd, int attachable_fd, int type, unsigned int flags)',
  ),
  bpf_prog_query: lib.func(
    'int bpf_prog_query(int target_fd, int type, uint32_t query_flags, void *attach_flags, void *prog_ids, void *prog_cnt)',
  ),
  bpf_map_update_elem: lib.func(
    'int bpf_map_update_elem(int fd, const void *key, const void *value, uint64_t flags)',
  ),
  bpf_map_lookup_elem: lib.func('int bpf_map_lookup_elem(int fd, const void *key, void *value)'),
  bpf_map_delete_elem: lib.func('int bpf_map_delete_elem(int fd, const void *key)'),
  bpf_map_get_next_key: lib.func('int bpf_map_get_next_key(int fd, const void *key, void *next_key)'),
  bpf_map_update_batch: lib.func(
    'int bpf_map_update_batch(int fd, const void *keys, const void *values, void *count, void *opts)',
  ),
  ring_buffer__new: lib.func(
    'ring_buffer *ring_buffer__new(int map_fd, egressd_ring_buffer_sample_fn *cb, void *ctx, void *opts)',
  ),
  ring_buffer__consume: lib.func('int ring_buffer__consume(ring_buffer *rb)'),
  ring_buffer__free: lib.func('void ring_buffer__free(ring_buffer *rb)'),
  vsnprintf: libc.func('int vsnprintf(char *buf, size_t size, const char *fmt, void *ap)'),
  socket: libc.func('int socket(int domain, int type, int protocol)'),
  getsockopt: libc.func('int getsockopt(int fd, int level, int name, void *value, void *len)'),
  close: libc.func('int close(int fd)'),
  setns: libc.func('int setns(int fd, int nstype)'),
  send: libc.func('long send(int fd, const void *buf, size_t len, int flags)'),
  recv: libc.func('long recv(int fd, void *buf, size_t len, int flags)'),
};

/** Attach types of enum bpf_attach_type (uapi/linux/bpf.h) that egressd uses. */
export const ATTACH = {
  inetEgress: 1,
  inetSockCreate: 2,
  sockOps: 3,
  skMsgVerdict: 7,
  inet4Connect: 10,
  inet6Connect: 11,
  udp4Sendmsg: 14,
  udp6Sendmsg: 15,
  udp4Recvmsg: 19,
  udp6Recvmsg: 20,
  inet4Getpeername: 29,
  inet6Getpeername: 30,
  traceIter: 28,
} as const;

/** BPF_ANY / BPF_NOEXIST / BPF_EXIST flags of map updates. */
export const UPDATE = { any: 0n, noExist: 1n, exist: 2n } as const;

function check(call: string, rc: number): number {
  if (rc < 0) throw new LibbpfError(call, -rc);
  return rc;
}

/** Sends libbpf's own messages (verifier logs included) to `log`. Call once. */
export function setLibbpfLogger(log: (level: 'warn' | 'info' | 'debug', line: string) => void): void {
  const levels = ['warn', 'info', 'debug'] as const;
  const cb = koffi.register((level: number, fmt: string, ap: unknown) => {
    const buf = Buffer.alloc(4096);
    const n = sym.vsnprintf(buf, buf.length, fmt, ap);
    const text = buf.toString('utf8', 0, Math.max(0, Math.min(n, buf.length - 1))).trimEnd();
    if (text) log(levels[level] ?? 'debug', text);
    return 0;
  }, koffi.pointer(printFn));
  sym.libbpf_set_print(cb);
}

export type BpfObject = unknown;

export function openObject(path: string): BpfObject {
  const obj = sym.bpf_object__open_file(path, null);
  if (!obj) throw new LibbpfError(`bpf_object__open_file(${path})`, koffi.errno());
  return obj;
}

export function loadObject(obj: BpfObject): void {
  check('bpf_object__load', sym.bpf_object__load(obj));
}

export function closeObject(obj: BpfObject): void {
  sym.bpf_object__close(obj);
}

export function programFd(obj: BpfObject, name: string): number {
  const prog = sym.bpf_object__find_program_by_name(obj, name);
  if (!prog) throw new LibbpfError(`find program ${name}`, E.ENOENT);
  return check(`bpf_program__fd(${name})`, sym.bpf_program__fd(prog));
}

export function mapFd(obj: BpfObject, name: string): number {
  const map = sym.bpf_object__find_map_by_name(obj, name);
  if (!map) throw new LibbpfError(`find map ${name}`, E.ENOENT);
  return check(`bpf_map__fd(${name})`, sym.bpf_map__fd(map));
}

/** Makes the object use an existing map (`fd`, another object's) instead of creating its own. Before loadObject. */
export function reuseMap(obj: BpfObject, name: string, fd: number): void {
  const map = sym.bpf_object__find_map_by_name(obj, name);
  if (!map) throw new LibbpfError(`find map ${name}`, E.ENOENT);
  check(`bpf_map__reuse_fd(${name})`, sym.bpf_map__reuse_fd(map, fd));
}

/** A new iterator of an iterator link: read() it to run the program over every object (Linux 5.8+). */
export function iterCreate(linkFd: number): number {
  return check('bpf_iter_create', sym.bpf_iter_create(linkFd));
}

const CLONE_NEWNET = 0x40000000;

/** Moves the calling thread into the network namespace of `fd` (an open /proc/<pid>/ns/net). */
export function enterNetns(fd: number): void {
  if (sym.setns(fd, CLONE_NEWNET) < 0) throw new LibbpfError('setns', koffi.errno());
}

export function objPin(fd: number, path: string): void {
  check(`bpf_obj_pin(${path})`, sym.bpf_obj_pin(fd, path));
}

export function objGet(path: string): number {
  return check(`bpf_obj_get(${path})`, sym.bpf_obj_get(path));
}

/** Fills `info` (a struct bpf_*_info buffer) and returns the length the kernel wrote. */
export function objInfo(fd: number, info: Buffer): number {
  const len = Buffer.alloc(4);
  len.writeUInt32LE(info.length);
  check('bpf_obj_get_info_by_fd', sym.bpf_obj_get_info_by_fd(fd, info, len));
  return len.readUInt32LE();
}

export function linkCreate(progFd: number, targetFd: number, attachType: number): number {
  return check('bpf_link_create', sym.bpf_link_create(progFd, targetFd, attachType, null));
}

/** Attaches a program to a map (an sk_msg program to a sockhash): it stays while the map exists. */
export function progAttach(progFd: number, targetFd: number, attachType: number): void {
  check('bpf_prog_attach', sym.bpf_prog_attach(progFd, targetFd, attachType, 0));
}

export function linkDetach(linkFd: number): void {
  check('bpf_link_detach', sym.bpf_link_detach(linkFd));
}

/** Ids of the programs attached to a cgroup for one attach type (this cgroup only, not inherited). */
export function progQuery(cgroupFd: number, attachType: number): number[] {
  const flags = Buffer.alloc(4);
  const ids = Buffer.alloc(4 * 64);
  const count = Buffer.alloc(4);
  count.writeUInt32LE(64);
  check('bpf_prog_query', sym.bpf_prog_query(cgroupFd, attachType, 0, flags, ids, count));
  const n = count.readUInt32LE();
  return Array.from({ length: n }, (_, i) => ids.readUInt32LE(i * 4));
}

export function mapUpdate(fd: number, key: Buffer, value: Buffer, flags = UPDATE.any): void {
  check('bpf_map_update_elem', sym.bpf_map_update_elem(fd, key, value, flags));
}

/** The same update on a worker thread, for the ones that block (a map-in-map update waits for RCU). */
export function mapUpdateAsync(fd: number, key: Buffer, value: Buffer, flags = UPDATE.any): Promise<void> {
  return new Promise((resolve, reject) => {
    sym.bpf_map_update_elem.async(fd, key, value, flags, (err: unknown, rc: number) => {
      if (err) reject(err);
      else if (rc < 0) reject(new LibbpfError('bpf_map_update_elem', -rc));
      else resolve();
    });
  });
}

/** Returns false when the key is absent. */
export function mapLookup(fd: number, key: Buffer, value: Buffer): boolean {
  const rc = sym.bpf_map_lookup_elem(fd, key, value);
  if (rc === -E.ENOENT) return false;
  check('bpf_map_lookup_elem', rc);
  return true;
}

/** Returns false when the key was absent. */
export function mapDelete(fd: number, key: Buffer): boolean {
  const rc = sym.bpf_map_delete_elem(fd, key);
  if (rc === -E.ENOENT) return false;
  check('bpf_map_delete_elem', rc);
  return true;
}

/** Writes the key after `key` (or the first key when `key` is null) into `next`; false at the end. */
export function mapNextKey(fd: number, key: Buffer | null, next: Buffer): boolean {
  const rc = sym.bpf_map_get_next_key(fd, key, next);
  if (rc === -E.ENOENT) return false;
  check('bpf_map_get_next_key', rc);
  return true;
}

/** Batch update of `count` packed keys and values. */
export function mapUpdateBatch(fd: number, keys: Buffer, values: Buffer, count: number): void {
  const n = Buffer.alloc(4);
  n.writeUInt32LE(count);
  check('bpf_map_update_batch', sym.bpf_map_update_batch(fd, keys, values, n, null));
}

/**
 * A BPF ring buffer read by ring_buffer__consume: `onSample` gets a copy of
 * each record. libbpf reads for as long as records keep coming, which a busy
 * producer can make endless, so one consume() takes at most `budget` records
 * (the callback's negative return stops libbpf after the current record).
 */
export function openRingBuffer(mapFd: number, onSample: (data: Buffer) => void, budget = 2000) {
  const STOP = -E.EAGAIN; // "more next time", not an error
  let taken = 0;
  const cb = koffi.register((_ctx: unknown, data: unknown, size: number | bigint) => {
    onSample(Buffer.from(koffi.view(data, Number(size)).slice(0)));
    return ++taken >= budget ? STOP : 0;
  }, koffi.pointer(sampleFn));
  const rb = sym.ring_buffer__new(mapFd, cb, null, null);
  if (!rb) {
    koffi.unregister(cb);
    throw new LibbpfError('ring_buffer__new', koffi.errno());
  }
  return {
    /** Reads the records ready now, at most the budget; returns how many. */
    consume(): number {
      taken = 0;
      const rc = sym.ring_buffer__consume(rb);
      if (rc === STOP) return taken;
      return check('ring_buffer__consume', rc);
    },
    close(): void {
      sym.ring_buffer__free(rb);
      koffi.unregister(cb);
    },
  };
}

export function closeFd(fd: number): void {
  sym.close(fd);
}

const AF_INET = 2;
const SOCK_DGRAM = 2;
const SOL_SOCKET = 1;
const SO_NETNS_COOKIE = 71;

/** The cookie of this process's network namespace (SO_NETNS_COOKIE, Linux 5.14+). */
export function currentNetnsCookie(): bigint {
  const fd = sym.socket(AF_INET, SOCK_DGRAM, 0);
  if (fd < 0) throw new LibbpfError('socket', koffi.errno());
  try {
    const value = Buffer.alloc(8);
    const len = Buffer.alloc(4);
    len.writeUInt32LE(8);
    if (sym.getsockopt(fd, SOL_SOCKET, SO_NETNS_COOKIE, value, len) < 0) {
      throw new LibbpfError('getsockopt(SO_NETNS_COOKIE)', koffi.errno());
    }
    return value.readBigUInt64LE();
  } finally {
    sym.close(fd);
  }
}

/** A netlink socket for sock_diag (SOCK_DESTROY) in the calling thread's network namespace. */
export function openSockDiag(): number {
  const fd = sym.socket(
    16 /* AF_NETLINK */,
    3 /* SOCK_RAW */ | 0o2000000 /* SOCK_CLOEXEC */,
    4 /* NETLINK_SOCK_DIAG */,
  );
  if (fd < 0) throw new LibbpfError('socket(AF_NETLINK)', koffi.errno());
  return fd;
}

/** Sends one netlink request to the kernel and returns its first answer. */
export function netlinkRequest(fd: number, request: Buffer): Buffer {
  if (sym.send(fd, request, request.length, 0) < 0) throw new LibbpfError('send(netlink)', koffi.errno());
  const answer = Buffer.alloc(4096);
  const n = sym.recv(fd, answer, answer.length, 0);
  if (n < 0) throw new LibbpfError('recv(netlink)', koffi.errno());
  return answer.subarray(0, Number(n));
}
