/**
 * Loads build/egress.bpf.o and pins its maps and programs under the pin
 * directory, or adopts what an earlier agent pinned there. Pins:
 *   <pinDir>/maps/<map>        every map of the object
 *   <pinDir>/progs/<pin>       every program (egress_sock_create is pinned last:
 *                              its pin marks a complete load)
 *   <pinDir>/computers/<id>/<hook>   links, owned by the enforcer
 *   <pinDir>/roots/<root>/<hook>     guard links of the sandbox roots, owned by the enforcer
 * Pinned links and maps keep enforcement in force while no agent runs.
 */
import { existsSync, mkdirSync, readdirSync, rmSync } from 'node:fs';
import { constants } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { EgressdError } from '../../policy/errors.js';
import { ABI_VERSION, CONFIG_SLOT, MAPS } from './abi.js';
import * as bpf from './libbpf.js';
import { readConfig, writeConfig } from './maps.js';
import { decodeProgInfo, UAPI_LAYOUT } from './uapi.js';

/**
 * The cgroup hooks, in attach order: sock_create first (see Enforcer.attach).
 * `program` is the name in build/egress.bpf.o (at most 15 characters, which
 * the kernel keeps whole); `pin` is its file under <pinDir>/progs, the name
 * the program had before names were shortened. Pins keep those names so that
 * an agent adopts the pins of an earlier or a later build alike (within one
 * ABI version): the marker and every file it looks for are where they were.
 */
export const HOOKS = [
  {
    name: 'sock_create',
    program: 'eg_sock',
    pin: 'egress_sock_create',
    attachType: bpf.ATTACH.inetSockCreate,
  },
  { name: 'connect4', program: 'eg_conn4', pin: 'egress_connect4', attachType: bpf.ATTACH.inet4Connect },
  { name: 'connect6', program: 'eg_conn6', pin: 'egress_connect6', attachType: bpf.ATTACH.inet6Connect },
  { name: 'sendmsg4', program: 'eg_send4', pin: 'egress_sendmsg4', attachType: bpf.ATTACH.udp4Sendmsg },
  { name: 'sendmsg6', program: 'eg_send6', pin: 'egress_sendmsg6', attachType: bpf.ATTACH.udp6Sendmsg },
  { name: 'recvmsg4', program: 'eg_recv4', pin: 'egress_recvmsg4', attachType: bpf.ATTACH.udp4Recvmsg },
  { name: 'recvmsg6', program: 'eg_recv6', pin: 'egress_recvmsg6', attachType: bpf.ATTACH.udp6Recvmsg },
  {
    name: 'getpeername4',
    program: 'eg_peer4',
    pin: 'egress_getpeername4',
    attachType: bpf.ATTACH.inet4Getpeername,
  },
  {
    name: 'getpeername6',
    program: 'eg_peer6',
    pin: 'egress_getpeername6',
    attachType: bpf.ATTACH.inet6Getpeername,
  },
  // Name-bound connections (bpf/lib/names.h): the check's sock_ops and its egress backstop.
  { name: 'sock_ops', program: 'eg_ops', pin: 'egress_sock_ops', attachType: bpf.ATTACH.sockOps },
  { name: 'egress', program: 'eg_skb', pin: 'egress_skb_egress', attachType: bpf.ATTACH.inetEgress },
] as const;

/** The name check's sk_msg program: attached to the name_check_socks map once, at load. */
export const NAME_CHECK = { program: 'eg_msg', pin: 'egress_name_msg' } as const;

export type HookName = (typeof HOOKS)[number]['name'];

/** The guard's hooks, attached to each sandbox root (see "governed" in bpf/include/egress_abi.h). */
export const GUARD_HOOKS = [
  {
    name: 'sock_create',
    program: 'eg_guard_sock',
    pin: 'egress_guard_sock_create',
    attachType: bpf.ATTACH.inetSockCreate,
  },
  {
    name: 'connect4',
    program: 'eg_guard_conn4',
    pin: 'egress_guard_connect4',
    attachType: bpf.ATTACH.inet4Connect,
  },
  {
    name: 'connect6',
    program: 'eg_guard_conn6',
    pin: 'egress_guard_connect6',
    attachType: bpf.ATTACH.inet6Connect,
  },
  {
    name: 'sendmsg4',
    program: 'eg_guard_send4',
    pin: 'egress_guard_sendmsg4',
    attachType: bpf.ATTACH.udp4Sendmsg,
  },
  {
    name: 'sendmsg6',
    program: 'eg_guard_send6',
    pin: 'egress_guard_sendmsg6',
    attachType: bpf.ATTACH.udp6Sendmsg,
  },
] as const;

export type GuardHookName = (typeof GUARD_HOOKS)[number]['name'];
type MapName = (typeof MAPS)[keyof typeof MAPS];

const COMPLETE_MARKER = HOOKS[0].pin;

export const DEFAULT_OBJECT_PATH = path.resolve(
  path.dirname(fileURLToPath(import.meta.url)),
  '../../../build/egress.bpf.o',
);

export interface LoadedObject {
  pinDir: string;
  maps: Record<MapName, number>;
  programs: Record<HookName, { fd: number; id: number }>;
  guards: Record<GuardHookName, { fd: number; id: number }>;
  /** True when the pins were already there (a restarted agent). */
  adopted: boolean;
}

export interface LoadOptions {
  pinDir: string;
  objectPath?: string;
  log?: (level: 'warn' | 'info' | 'debug', line: string) => void;
}

let libbpfLog: string[] = [];
let loggerSet = false;

function captureLibbpfLog(log: LoadOptions['log']): void {
  if (loggerSet) return;
  loggerSet = true;
  bpf.setLibbpfLogger((level, line) => {
    libbpfLog.push(line);
    if (libbpfLog.length > 200) libbpfLog = libbpfLog.slice(-100);
    log?.(level === 'warn' ? 'warn' : 'debug', line);
  });
}

export function loadOrAdopt(opts: LoadOptions): LoadedObject {
  captureLibbpfLog(opts.log);
  const { pinDir } = opts;
  mkdirSync(pinDir, { recursive: true });
  if (existsSync(path.join(pinDir, 'progs', COMPLETE_MARKER))) return adopt(pinDir);
  // A load that died before its last pin: nothing can be attached yet, start over.
  if (hasAttachments(pinDir)) {
    throw new EgressdError(
      'PINS_INCOMPLETE',
      `${pinDir} holds computer links but no complete program set: remove it (rm -r ${pinDir}) to detach everything and start again`,
    );
  }
  rmSync(path.join(pinDir, 'maps'), { recursive: true, force: true });
  rmSync(path.join(pinDir, 'progs'), { recursive: true, force: true });
  return loadFresh(pinDir, opts.objectPath ?? DEFAULT_OBJECT_PATH);
}

function hasAttachments(pinDir: string): boolean {
  const dir = path.join(pinDir, 'computers');
  return existsSync(dir) && readdirSync(dir).length > 0;
}

function programId(fd: number): number {
  const info = Buffer.alloc(UAPI_LAYOUT.bpf_prog_info.size);
  bpf.objInfo(fd, info);
  return decodeProgInfo(info).id;
}

/**
 * Opens and loads the object. The verifier gives up with EAGAIN when a signal
 * arrives during its work (a profiler's SIGPROF, a child's SIGCHLD): retried.
 */
function openAndLoad(objectPath: string): bpf.BpfObject {
  for (let attempt = 1; ; attempt++) {
    const obj = bpf.openObject(objectPath);
    libbpfLog = [];
    try {
      bpf.loadObject(obj);
      return obj;
    } catch (err) {
      bpf.closeObject(obj);
      if (err instanceof bpf.LibbpfError && err.errno === constants.errno.EAGAIN && attempt < 5) continue;
      throw new EgressdError(
        'BPF_LOAD_FAILED',
        `the kernel refused egressd's BPF programs (${(err as Error).message}). This kernel may lack cgroup ` +
          `socket hooks, LPM tries or cgroup storage (Linux 5.17 or newer is needed; tested from 6.1), or kernel lockdown forbids BPF. ` +
          `libbpf said:\n` +
          libbpfLog.slice(-20).join('\n'),
        { cause: err },
      );
    }
  }
}

function loadFresh(pinDir: string, objectPath: string): LoadedObject {
  if (!existsSync(objectPath)) {
    throw new EgressdError('NO_BPF_OBJECT', `BPF object ${objectPath} is missing: run npm run build`);
  }
  const obj = openAndLoad(objectPath);
  try {
    mkdirSync(path.join(pinDir, 'maps'), { recursive: true });
    mkdirSync(path.join(pinDir, 'progs'), { recursive: true });
    for (const name of Object.values(MAPS)) bpf.objPin(bpf.mapFd(obj, name), path.join(pinDir, 'maps', name));
    // The marker program goes last, so that its pin means every pin exists.
    const nameCheck = bpf.programFd(obj, NAME_CHECK.program);
    bpf.progAttach(nameCheck, bpf.mapFd(obj, MAPS.nameCheckSocks), bpf.ATTACH.skMsgVerdict);
    bpf.objPin(nameCheck, path.join(pinDir, 'progs', NAME_CHECK.pin));
    for (const hook of [...GUARD_HOOKS, ...[...HOOKS].reverse()]) {
      bpf.objPin(bpf.programFd(obj, hook.program), path.join(pinDir, 'progs', hook.pin));
    }
  } finally {
    bpf.closeObject(obj);
  }
  const loaded = adopt(pinDir);
  writeConfig(loaded.maps.config, CONFIG_SLOT.abiVersion, BigInt(ABI_VERSION));
  writeConfig(loaded.maps.config, CONFIG_SLOT.agentNetnsCookie, bpf.currentNetnsCookie());
  return { ...loaded, adopted: false };
}

function adopt(pinDir: string): LoadedObject {
  // The ABI first: an older build's pins may lack maps and programs that this one has.
  const config = bpf.objGet(path.join(pinDir, 'maps', MAPS.config));
  let pinned: number;
  try {
    pinned = Number(readConfig(config, CONFIG_SLOT.abiVersion));
  } finally {
    bpf.closeFd(config);
  }
  if (pinned !== 0 && pinned !== ABI_VERSION) {
    throw new EgressdError(
      'PINS_INCOMPATIBLE',
      `the programs pinned in ${pinDir} come from an egressd build with ABI ${pinned}; this build has ABI ` +
        `${ABI_VERSION}. Remove the pins (rm -r ${pinDir}, which detaches every computer) and restart`,
    );
  }
  const maps = {} as Record<MapName, number>;
  for (const name of Object.values(MAPS)) maps[name] = bpf.objGet(path.join(pinDir, 'maps', name));
  const program = (pin: string) => {
    const fd = bpf.objGet(path.join(pinDir, 'progs', pin));
    return { fd, id: programId(fd) };
  };
  const programs = {} as Record<HookName, { fd: number; id: number }>;
  for (const hook of HOOKS) programs[hook.name] = program(hook.pin);
  const guards = {} as Record<GuardHookName, { fd: number; id: number }>;
  for (const hook of GUARD_HOOKS) guards[hook.name] = program(hook.pin);
  return { pinDir, maps, programs, guards, adopted: true };
}

export function closeLoaded(loaded: LoadedObject): void {
  for (const fd of Object.values(loaded.maps)) bpf.closeFd(fd);
  for (const p of [...Object.values(loaded.programs), ...Object.values(loaded.guards)]) bpf.closeFd(p.fd);
}
