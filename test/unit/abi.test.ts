/**
 * The TypeScript mirror (daemon/kernel/abi.ts) against the built object's BTF,
 * the header's constants and <linux/bpf.h>; then every encoder and decoder
 * against bytes written out by hand.
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import test from 'ava';
import {
  ABI_VERSION,
  CONFIG_SLOT,
  CONFIG_SLOTS,
  FLAG,
  LAYOUT,
  LEARNED_FLAG,
  MAPS,
  MODE,
  NAME_MAX,
  PROTO,
  REASON,
  REVOKE_MAPS,
} from '../../daemon/kernel/abi.js';
import { UAPI_LAYOUT } from '../../daemon/kernel/uapi.js';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');
const object = path.join(root, 'build/egress.bpf.o');
/** The second object (live revocation): egress.bpf.o's maps and its own. */
const revokeObject = path.join(root, 'build/revoke.bpf.o');
const header = readFileSync(path.join(root, 'bpf/include/egress_abi.h'), 'utf8');

interface BtfType {
  id: number;
  kind: string;
  name?: string;
  size?: number;
  members?: { name: string; bits_offset: number }[];
  vars?: { type_id: number }[];
}

const btfOf = (file: string) =>
  JSON.parse(execFileSync('bpftool', ['-j', 'btf', 'dump', 'file', file]).toString()) as { types: BtfType[] };
const btf = btfOf(object);
const revokeBtf = btfOf(revokeObject);

/** EGRESS_* defines of the header, evaluated (numbers, other defines, `|`, `<<`, parentheses). */
function headerDefines(): Map<string, number> {
  const defines = new Map<string, number>();
  for (const m of header.matchAll(/^#define (EGRESS_\w+)[ \t]+([^/\n]+?)[ \t]*(?:\/\*.*)?$/gm)) {
    const tokens = (m[2] ?? '').match(/0x[0-9a-fA-F]+|\d+|EGRESS_\w+|<<|\||\(|\)/g) ?? [];
    let i = 0;
    const primary = (): number => {
      const t = tokens[i++] ?? '';
      if (t === '(') {
        const v = or();
        i++; // ')'
        return v;
      }
      const v = /^EGRESS_/.test(t) ? defines.get(t) : Number(t);
      if (v === undefined || Number.isNaN(v)) throw new Error(`cannot evaluate ${m[1]}: ${m[2]}`);
      return v;
    };
    const shift = (): number => {
      let v = primary();
      while (tokens[i] === '<<') {
        i++;
        v = v * 2 ** primary();
      }
      return v;
    };
    const or = (): number => {
      let v = shift();
      while (tokens[i] === '|') {
        i++;
        v |= shift();
      }
      return v;
    };
    defines.set(m[1] ?? '', or());
  }
  return defines;
}

const defines = headerDefines();

/** proxyV6Hi → PROXY_V6_HI */
const macro = (name: string) => name.replace(/([a-z0-9])([A-Z])/g, '$1_$2').toUpperCase();

/** The header's defines that start with `prefix`, by the rest of their name. */
function group(prefix: string): Record<string, number> {
  return Object.fromEntries(
    [...defines].filter(([k]) => k.startsWith(prefix)).map(([k, v]) => [k.slice(prefix.length), v]),
  );
}

const mirrored = (table: Record<string, number>) =>
  Object.fromEntries(Object.entries(table).map(([k, v]) => [macro(k), v]));

for (const [name, layout] of Object.entries(LAYOUT)) {
  test(`struct ${name} matches the object's BTF`, (t) => {
    const type = [...btf.types, ...revokeBtf.types].find((x) => x.kind === 'STRUCT' && x.name === name);
    if (!type) return t.fail(`struct ${name} is not in the BTF of ${object} nor of ${revokeObject}`);
    t.is(type.size, layout.size, 'size');
    const fromBtf = Object.fromEntries((type.members ?? []).map((m) => [m.name, m.bits_offset / 8]));
    t.deepEqual(fromBtf, layout.offsets);
  });
}

test('every struct of the header has a layout in abi.ts, and no other', (t) => {
  const structs = [...header.matchAll(/^struct (\w+) \{/gm)].map((m) => m[1]).sort();
  t.deepEqual(Object.keys(LAYOUT).sort(), structs);
});

test('every map named in abi.ts exists in the object', (t) => {
  const vars = new Set(btf.types.filter((x) => x.kind === 'VAR').map((x) => x.name));
  for (const name of Object.values(MAPS)) t.true(vars.has(name), name);
});

const mapNames = (b: { types: BtfType[] }) => {
  const maps = b.types.find((x) => x.kind === 'DATASEC' && x.name === '.maps');
  return (maps?.vars ?? []).map((v) => b.types.find((x) => x.id === v.type_id)?.name).sort();
};

test('every map of the object is named in abi.ts', (t) => {
  t.deepEqual(mapNames(btf), Object.values(MAPS).sort());
});

test("the revocation object has egress.bpf.o's maps (it shares them) and its own", (t) => {
  t.deepEqual(mapNames(revokeBtf), [...Object.values(MAPS), ...Object.values(REVOKE_MAPS)].sort());
});

test('constants match bpf/include/egress_abi.h', (t) => {
  const expect = (name: string, value: number) => t.is(defines.get(name), value, name);
  for (const [mode, value] of Object.entries(MODE)) expect(`EGRESS_MODE_${mode.toUpperCase()}`, value);
  expect('EGRESS_PROTO_TCP', PROTO.tcp);
  expect('EGRESS_PROTO_UDP', PROTO.udp);
  expect('EGRESS_PROTO_OTHER', PROTO.other);
  expect('EGRESS_CONFIG_AGENT_NETNS_COOKIE', CONFIG_SLOT.agentNetnsCookie);
  expect('EGRESS_CONFIG_ABI_VERSION', CONFIG_SLOT.abiVersion);
  expect('EGRESS_CONFIG_NEXT_POLICY_ID', CONFIG_SLOT.nextPolicyId);
  expect('EGRESS_CONFIG_SLOTS', CONFIG_SLOTS);
  expect('EGRESS_ABI_VERSION', ABI_VERSION);
});

test('every mode, protocol bit, flag, config slot and deny reason of the header, and no other', (t) => {
  t.deepEqual(mirrored(MODE), group('EGRESS_MODE_'), 'modes');
  t.deepEqual(mirrored(PROTO), group('EGRESS_PROTO_'), 'protocol bits');
  t.deepEqual(mirrored(FLAG), group('EGRESS_FLAG_'), 'flags');
  t.deepEqual({ ...mirrored(CONFIG_SLOT), SLOTS: CONFIG_SLOTS }, group('EGRESS_CONFIG_'), 'config slots');
  t.deepEqual(mirrored(REASON), group('EGRESS_REASON_'), 'deny reasons');
  t.deepEqual(mirrored(LEARNED_FLAG), group('EGRESS_LEARNED_'), 'learned entry flags');
  t.is(defines.get('EGRESS_NAME_MAX'), NAME_MAX, 'EGRESS_NAME_MAX');
  for (const slot of Object.values(CONFIG_SLOT)) t.true(slot < CONFIG_SLOTS, `slot ${slot} is in the map`);
});

test('the header defines nothing else that user space would have to mirror', (t) => {
  const mirroredGroups = /^EGRESS_(MODE|PROTO|FLAG|CONFIG|REASON|LEARNED)_|^EGRESS_NAME_MAX$/;
  // Capacities of the kernel's maps and loops: user space needs none of them.
  const kernelOnly = [
    'EGRESS_ABI_H',
    'EGRESS_ABI_VERSION',
    'EGRESS_MAX_RULE_ENTRIES',
    'EGRESS_MAX_INTERNAL_ENTRIES',
    'EGRESS_MAX_COMPUTERS',
    'EGRESS_GUARD_MAX_DEPTH',
    'EGRESS_MAX_LEARNED',
    'EGRESS_MAX_DNS_SOCKETS',
    'EGRESS_EVENTS_BYTES',
    'EGRESS_MAX_OBSERVED',
    'EGRESS_MAX_LEARNED_NAMES',
    'EGRESS_MAX_NAME_CHECKS',
    // States of a name check: only the programs read and write them.
    'EGRESS_NAME_PENDING',
    'EGRESS_NAME_PASSED',
    'EGRESS_NAME_REFUSED',
  ];
  const all = [...header.matchAll(/^#define (EGRESS_\w+)/gm)].map((m) => m[1] ?? '');
  t.deepEqual(
    all.filter((name) => !mirroredGroups.test(name) && !kernelOnly.includes(name)),
    [],
  );
});

test('the uapi layouts that links.ts and loader.ts read match <linux/bpf.h>', (t) => {
  const dir = mkdtempSync(path.join(tmpdir(), 'egressd-uapi-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const fields = Object.entries(UAPI_LAYOUT).flatMap(([struct, layout]) =>
    Object.keys(layout.offsets).map((field) => ({
      struct,
      field,
      // The cgroup link's members live in a union member named after the link type.
      member:
        struct === 'bpf_link_info' && ['cgroup_id', 'attach_type'].includes(field)
          ? `cgroup.${field}`
          : field,
    })),
  );
  const source = [
    '#include <stddef.h>',
    '#include <stdio.h>',
    '#include <linux/bpf.h>',
    'int main(void) {',
    ...fields.map(
      ({ struct, member }) =>
        `  printf("%zu %zu\\n", offsetof(struct ${struct}, ${member}), sizeof(((struct ${struct} *)0)->${member}));`,
    ),
    '  return 0;',
    '}',
  ].join('\n');
  writeFileSync(path.join(dir, 'uapi.c'), source);
  execFileSync('cc', ['-o', path.join(dir, 'uapi'), path.join(dir, 'uapi.c')]);
  const lines = execFileSync(path.join(dir, 'uapi')).toString().trim().split('\n');
  fields.forEach(({ struct, field }, i) => {
    const [offset, size] = (lines[i] ?? '').split(' ').map(Number);
    const layout = UAPI_LAYOUT[struct as keyof typeof UAPI_LAYOUT];
    t.is((layout.offsets as Record<string, number>)[field], offset, `${struct}.${field}`);
    t.true((offset ?? 0) + (size ?? 0) <= layout.size, `${struct}.${field} is within the buffer read`);
  });
});
