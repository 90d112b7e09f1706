/** The TypeScript mirror (daemon/kernel/abi.ts) against the built object's BTF and the header's constants. */
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import test from 'ava';
import {
  ABI_VERSION,
  CONFIG_SLOT,
  CONFIG_SLOTS,
  LAYOUT,
  MAPS,
  MODE,
  PROTO,
} from '../../daemon/kernel/abi.js';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');
const object = path.join(root, 'build/egress.bpf.o');

interface BtfType {
  kind: string;
  name?: string;
  size?: number;
  members?: { name: string; bits_offset: number }[];
}

const btf = JSON.parse(execFileSync('bpftool', ['-j', 'btf', 'dump', 'file', object]).toString()) as {
  types: BtfType[];
};

for (const [name, layout] of Object.entries(LAYOUT)) {
  test(`struct ${name} matches the object's BTF`, (t) => {
    const type = btf.types.find((x) => x.kind === 'STRUCT' && x.name === name);
    if (!type) return t.fail(`struct ${name} is not in the BTF of ${object}`);
    t.is(type.size, layout.size, 'size');
    const fromBtf = Object.fromEntries((type.members ?? []).map((m) => [m.name, m.bits_offset / 8]));
    t.deepEqual(fromBtf, layout.offsets);
  });
}

test('every map named in abi.ts exists in the object', (t) => {
  const vars = new Set(btf.types.filter((x) => x.kind === 'VAR').map((x) => x.name));
  for (const name of Object.values(MAPS)) t.true(vars.has(name), name);
});

test('constants match bpf/include/egress_abi.h', (t) => {
  const header = readFileSync(path.join(root, 'bpf/include/egress_abi.h'), 'utf8');
  const defines = new Map<string, number>();
  for (const m of header.matchAll(/^#define (EGRESS_\w+) (\d+|0x[0-9a-f]+)\b/gm)) {
    defines.set(m[1] ?? '', Number(m[2]));
  }
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
