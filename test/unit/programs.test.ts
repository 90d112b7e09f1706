/** BPF program names: whole in the kernel, one per hook; pins where earlier agents put them. */
import { execFileSync } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import test from 'ava';
import { GUARD_HOOKS, HOOKS, NAME_CHECK } from '../../daemon/kernel/loader.js';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');
const object = path.join(root, 'build/egress.bpf.o');
/** BPF_OBJ_NAME_LEN (16) less the NUL: the kernel cuts longer names (bpf_prog_info, kallsyms, perf). */
const MAX_NAME = 15;
const programs = [...HOOKS, ...GUARD_HOOKS, NAME_CHECK].map((h) => h.program);
/**
 * Global functions of bpf/lib/names.h that are no programs: the verifier
 * checks each once, on its own (a static function would be checked at every
 * call, with its caller's state, past the verifier's limits).
 */
const SUBPROGRAMS = [
  'take_name',
  'name_allowed',
  'tls_name',
  'authority_name',
  'http_name',
  'judge_first_bytes',
];

test('every program name fits in the 15 characters the kernel keeps', (t) => {
  for (const name of programs) t.true(name.length <= MAX_NAME, `${name}: ${name.length} characters`);
});

test("the object's programs are those of HOOKS, GUARD_HOOKS and NAME_CHECK, each once", (t) => {
  const btf = JSON.parse(execFileSync('bpftool', ['-j', 'btf', 'dump', 'file', object]).toString()) as {
    types: { kind: string; name?: string; linkage?: string }[];
  };
  const inObject = btf.types
    .filter((x) => x.kind === 'FUNC' && x.linkage === 'global' && !SUBPROGRAMS.includes(x.name ?? ''))
    .map((x) => x.name);
  t.deepEqual([...inObject].sort(), [...programs].sort());
  t.is(new Set(programs).size, programs.length);
});

// Agents before and after the programs got short names must find each other's pins (loader.ts: HOOKS).
test('pins keep the names that earlier agents pinned', (t) => {
  t.deepEqual(
    HOOKS.map((h) => h.pin),
    [
      'egress_sock_create',
      'egress_connect4',
      'egress_connect6',
      'egress_sendmsg4',
      'egress_sendmsg6',
      'egress_recvmsg4',
      'egress_recvmsg6',
      'egress_getpeername4',
      'egress_getpeername6',
      'egress_sock_ops',
      'egress_skb_egress',
    ],
  );
  t.deepEqual(
    GUARD_HOOKS.map((h) => h.pin),
    [
      'egress_guard_sock_create',
      'egress_guard_connect4',
      'egress_guard_connect6',
      'egress_guard_sendmsg4',
      'egress_guard_sendmsg6',
    ],
  );
});
