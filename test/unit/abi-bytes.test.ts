/**
 * Every encoder and decoder of daemon/kernel/abi.ts against bytes written out
 * by hand (little-endian host order, addresses in network order), one group
 * per struct member in the order of the header.
 */
import test from 'ava';
import {
  decodeCgroupKey,
  decodeComputer,
  decodeLearned,
  decodeLearnedKey,
  decodeMode,
  decodePortKey,
  decodeRuleKey,
  decodeU64,
  encodeCgroupKey,
  encodeComputer,
  encodeDnsPorts,
  encodeInternalKey,
  encodeLearned,
  encodeLearnedKey,
  encodeMarks,
  encodeMode,
  encodePortKeys,
  encodeProxyV4,
  encodeProxyV6,
  encodeRules,
  encodeU32,
  encodeU64,
} from '../../daemon/kernel/abi.js';
import { decodeDenyEvent, decodeObserved, decodeRevoked } from '../../daemon/kernel/records.js';
import {
  decodeCgroupLinkInfo,
  decodeNetlinkAck,
  decodeProgInfo,
  encodeSockDestroy,
} from '../../daemon/kernel/uapi.js';

/** Bytes from hex, spaces ignored. */
const hex = (s: string) => Buffer.from(s.replace(/\s+/g, ''), 'hex');

const V6 = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]; // 2001:db8::1

test('modes: encodeMode and decodeMode', (t) => {
  t.deepEqual(
    (['pending', 'unrestricted', 'allowlist', 'denylist', 'isolated'] as const).map(encodeMode),
    [0, 1, 2, 3, 4],
  );
  t.deepEqual([0, 1, 2, 3, 4].map(decodeMode), [
    'pending',
    'unrestricted',
    'allowlist',
    'denylist',
    'isolated',
  ]);
  t.is(decodeMode(5), undefined);
});

test('struct egress_computer: encodeComputer, decodeComputer', (t) => {
  const value = {
    mode: 2,
    policyId: 0x01020304,
    version: 0x1122334455667788n,
    learnedId: 7,
    dnsPort: 44001,
    flags: 1,
    cgroupId: 0x0a0b0c0d0e0f1011n,
  };
  const bytes = hex('02000000 04030201 8877665544332211 07000000 e1ab 0100 11100f0e0d0c0b0a');
  t.deepEqual(encodeComputer(value), bytes);
  t.deepEqual(decodeComputer(bytes), value);
});

test('struct egress_deny_event: decodeDenyEvent (IPv4, IPv6, a socket creation)', (t) => {
  const event = (addr: string, family: string, flags = '00000000') =>
    hex(
      `0807060504030201 3412000000000000 92100000 02000000 6375726c000000000000000000000000 ${addr} bb01 ${family} 06 ${flags}`,
    );
  const common = { timeNs: 0x0102030405060708n, cgroupId: 0x1234n, pid: 4242, reason: 2, comm: 'curl' };
  t.deepEqual(decodeDenyEvent(event('c0000201 000000000000000000000000', '04')), {
    ...common,
    address: [192, 0, 2, 1],
    port: 443,
    protocol: 6,
    audit: false,
  });
  t.deepEqual(decodeDenyEvent(event('20010db8000000000000000000000001', '06')), {
    ...common,
    address: V6,
    port: 443,
    protocol: 6,
    audit: false,
  });
  // flags: EGRESS_FLAG_AUDIT (the refusal was let through).
  t.true(decodeDenyEvent(event('c0000201 000000000000000000000000', '04', '02000000')).audit);
  t.deepEqual(decodeDenyEvent(event('00000000000000000000000000000000', '00')).address, []);
  // A full 16-byte comm has no terminating zero.
  const long = event('00000000000000000000000000000000', '00');
  long.fill(0x61, 24, 40);
  t.is(decodeDenyEvent(long).comm, 'a'.repeat(16));
});

test('cgroup storage and "governed" keys: encodeCgroupKey, decodeCgroupKey', (t) => {
  t.deepEqual(encodeCgroupKey(0x0102030405060708n), hex('0807060504030201'));
  t.is(decodeCgroupKey(hex('0807060504030201')), 0x0102030405060708n);
});

test('struct egress_learned_v4/v6: encodeLearnedKey, decodeLearnedKey', (t) => {
  t.deepEqual(encodeLearnedKey(5, [203, 0, 113, 7]), hex('05000000 cb007107'));
  t.deepEqual(encodeLearnedKey(5, V6), hex('05000000 20010db8000000000000000000000001'));
  t.deepEqual(decodeLearnedKey(hex('05000000 cb007107')), { learnedId: 5, bytes: [203, 0, 113, 7] });
  t.deepEqual(decodeLearnedKey(hex('05000000 20010db8000000000000000000000001')), {
    learnedId: 5,
    bytes: V6,
  });
});

test('struct egress_learned: encodeLearned, decodeLearned', (t) => {
  const value = { expiresNs: 0x0102030405060708n, portSet: 3, anyPortProtos: 5, flags: 3 };
  const bytes = hex('0807060504030201 03000000 05 03 0000');
  t.deepEqual(encodeLearned(value), bytes);
  t.deepEqual(decodeLearned(bytes), value);
});

test('struct egress_lpm_v4 and egress_rule: encodeRules, decodeRuleKey', (t) => {
  const { keys, values } = encodeRules(9, 4, [
    { bytes: [10, 0, 0, 0], prefixLen: 8, portSet: 2, anyPortProtos: 1 },
    { bytes: [10, 1, 0, 0], prefixLen: 16, portSet: 0, anyPortProtos: 7 },
  ]);
  // prefixlen counts the 32 bits of policy_id too.
  t.deepEqual(keys, hex('28000000 09000000 0a000000  30000000 09000000 0a010000'));
  t.deepEqual(values, hex('02000000 01 000000  00000000 07 000000'));
  t.deepEqual(decodeRuleKey(keys.subarray(12)), { policyId: 9, bytes: [10, 1, 0, 0], prefixLen: 16 });
});

test('struct egress_lpm_v6: encodeRules, decodeRuleKey', (t) => {
  const { keys, values } = encodeRules(9, 6, [{ bytes: V6, prefixLen: 128, portSet: 1, anyPortProtos: 2 }]);
  t.deepEqual(keys, hex('a0000000 09000000 20010db8000000000000000000000001'));
  t.deepEqual(values, hex('01000000 02 000000'));
  t.deepEqual(decodeRuleKey(keys), { policyId: 9, bytes: V6, prefixLen: 128 });
  t.deepEqual(encodeRules(9, 6, []), { keys: Buffer.alloc(0), values: Buffer.alloc(0) });
});

test('struct egress_port_key: encodePortKeys, decodePortKey; set values: encodeMarks', (t) => {
  const keys = encodePortKeys(9, [
    { portSet: 2, port: 443, proto: 1 },
    { portSet: 3, port: 53, proto: 2 },
  ]);
  t.deepEqual(keys, hex('09000000 02000000 bb01 01 00  09000000 03000000 3500 02 00'));
  t.deepEqual(decodePortKey(keys.subarray(12)), { policyId: 9, portSet: 3, port: 53, proto: 2 });
  t.deepEqual(encodeMarks(), hex('01'));
  t.deepEqual(encodeMarks(3), hex('010101'));
});

test('struct egress_internal_v4/v6: encodeInternalKey', (t) => {
  t.deepEqual(encodeInternalKey([10, 0, 0, 0], 8), hex('08000000 0a000000'));
  t.deepEqual(
    encodeInternalKey([0xfd, ...Array(15).fill(0)], 8),
    hex('08000000 fd000000000000000000000000000000'),
  );
});

test('config keys and values: encodeU32, encodeU64, decodeU64', (t) => {
  t.deepEqual(encodeU32(0x01020304), hex('04030201'));
  t.deepEqual(encodeU64(0x0102030405060708n), hex('0807060504030201'));
  t.is(decodeU64(hex('0807060504030201')), 0x0102030405060708n);
});

test('config EGRESS_CONFIG_DNS_PORTS: encodeDnsPorts (min | max << 16)', (t) => {
  t.deepEqual(encodeDnsPorts(44000, 44999), hex('e0abc7af 00000000'));
});

test('config EGRESS_CONFIG_PROXY_V4 / _V6_HI / _V6_LO: encodeProxyV4, encodeProxyV6', (t) => {
  t.deepEqual(encodeProxyV4([10, 0, 0, 1]), hex('0a000001 00000000'));
  t.deepEqual(encodeProxyV4(), hex('0000000000000000'));
  const v6 = encodeProxyV6(V6);
  t.deepEqual(v6.hi, hex('20010db800000000'));
  t.deepEqual(v6.lo, hex('0000000000000001'));
  const none = encodeProxyV6();
  t.deepEqual([none.hi, none.lo], [hex('0000000000000000'), hex('0000000000000000')]);
});

test('struct bpf_prog_info and bpf_link_info (uapi): decodeProgInfo, decodeCgroupLinkInfo', (t) => {
  t.deepEqual(decodeProgInfo(hex('02000000 2a000000')), { id: 42 });
  // type BPF_LINK_TYPE_CGROUP (3), id 7, prog_id 42, padding, cgroup_id 0x1234, attach_type 10, padding.
  const link = hex('03000000 07000000 2a000000 00000000 3412000000000000 0a000000 00000000');
  t.deepEqual(decodeCgroupLinkInfo(link), { progId: 42, cgroupId: 0x1234n });
});

test('struct egress_revoked', (t) => {
  const V6_PEER = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 6];
  const record = (family: number, error: number) => {
    const b = Buffer.alloc(80);
    b.writeBigUInt64LE(0x0102030405060708n, 0); // cgroup_id
    Buffer.from(family === 6 ? V6_PEER : [203, 0, 113, 6]).copy(b, 8); // addr, IPv4 in the first 4 bytes
    b.writeUInt16LE(7000, 24); // port
    b[26] = family;
    b[27] = 6; // protocol
    b.writeInt32LE(error, 28);
    b.writeUInt32LE(1000, 32); // uid
    b.writeUInt16LE(40000, 36); // local_port
    b[38] = family; // sock_family
    Buffer.from(family === 6 ? V6 : [192, 0, 2, 9]).copy(b, 40); // local_addr
    Buffer.from(family === 6 ? V6_PEER : [203, 0, 113, 6]).copy(b, 56); // peer_addr
    b.writeBigUInt64LE(0x1122n, 72); // cookie
    return b;
  };
  const common = { cgroupId: 0x0102030405060708n, port: 7000, protocol: 6, error: 0, uid: 1000 };
  t.deepEqual(decodeRevoked(Buffer.concat([record(4, 0), record(6, 0)])), [
    {
      ...common,
      address: [203, 0, 113, 6],
      socket: {
        family: 4,
        localAddress: [192, 0, 2, 9],
        localPort: 40000,
        peerAddress: [203, 0, 113, 6],
        cookie: 0x1122n,
      },
    },
    {
      ...common,
      address: V6_PEER,
      socket: { family: 6, localAddress: V6, localPort: 40000, peerAddress: V6_PEER, cookie: 0x1122n },
    },
  ]);
  // A failed close: the second record of the same socket replaces the first.
  const failed = decodeRevoked(Buffer.concat([record(4, 0), record(4, -9)]));
  t.is(failed.length, 1);
  t.is(failed[0]?.error, -9);
  t.deepEqual(decodeRevoked(Buffer.alloc(79)), [], 'a partial record is not read');
});

test('netlink SOCK_DESTROY request and its ack (uapi)', (t) => {
  const request = encodeSockDestroy(7, {
    family: 4,
    protocol: 6,
    localAddress: [192, 0, 2, 9],
    localPort: 40000,
    peerAddress: [203, 0, 113, 6],
    peerPort: 7000,
    cookie: 0x1122334455667788n,
  });
  t.deepEqual(
    request,
    hex(
      '48000000 1500 0500 07000000 00000000' + // nlmsghdr: 72 bytes, SOCK_DESTROY, REQUEST|ACK, seq 7
        ' 02 06 00 00 ffffffff' + // AF_INET, TCP, any state
        ' 9c40 1b58 c0000209000000000000000000000000 cb007106000000000000000000000000 00000000' +
        ' 88776655 44332211', // ports (network order), src = local, dst = peer, if, cookie
    ),
  );
  t.is(decodeNetlinkAck(hex('24000000 0200 0000 07000000 00000000 feffffff')), 2, 'NLMSG_ERROR -ENOENT');
  t.is(decodeNetlinkAck(hex('24000000 0200 0000 07000000 00000000 00000000')), 0, 'an ack');
  t.is(decodeNetlinkAck(hex('24000000 0300 0000 07000000 00000000 00000000')), undefined, 'not an ack');
});

test('struct egress_observed_key and struct egress_observed: decodeObserved', (t) => {
  const key = hex('0807060504030201 cb007106000000000000000000000000 bb01 04 11 00000000');
  const value = hex('0300000000000000 e803000000000000 d007000000000000');
  t.deepEqual(decodeObserved(key, value), {
    cgroupId: 0x0102030405060708n,
    address: [203, 0, 113, 6],
    port: 443,
    protocol: 17,
    count: 3n,
    firstNs: 1000n,
    lastNs: 2000n,
  });
  const v6 = hex('0100000000000000 20010db8000000000000000000000001 5000 06 06 00000000');
  t.deepEqual(decodeObserved(v6, value).address, V6);
});
