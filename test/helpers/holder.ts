/**
 * Long-lived sockets for the live-revocation tests (test/privileged/revoke.test.ts),
 * one JSON line per answer on stdout:
 *
 *   node holder.js echo PORT
 *       TCP and UDP echo servers on [::]:PORT (dual-stack); prints {"ready":true}.
 *   node holder.js hold SOCKET...
 *       opens each SOCKET, prints {"ready":true} once all are open, then for
 *       every line "check" on stdin tries each once and prints
 *       {"results":[...]}, one per SOCKET: "ok" (a TCP socket's echo came
 *       back, a datagram was sent), or what failed (an errno name, "closed",
 *       "timeout"). SOCKET is
 *         tcp:ADDR:PORT    a TCP connection (its errors are remembered)
 *         udp:ADDR:PORT    a connected UDP socket: check sends on it
 *         sendto:ADDR:PORT an unconnected UDP socket: check sends to ADDR:PORT
 *       ADDR is an IPv4 or IPv6 literal, IPv6 in brackets; ::ffff:a.b.c.d is
 *       a v4-mapped peer on an IPv6 socket.
 *   node holder.js many COUNT ADDR:PORT
 *       opens COUNT TCP connections to ADDR:PORT (64 at a time) and holds
 *       them; prints {"ready":true,"open":N} (bench/revoke.ts).
 *       The caller raises the fd limit (ulimit -n) for large counts.
 */
import { createSocket, type Socket as UdpSocket } from 'node:dgram';
import { createServer, type Socket as TcpSocket, connect as tcpConnect } from 'node:net';
import { createInterface } from 'node:readline';

const CHECK_TIMEOUT_MS = 2000;

function parse(spec: string): { kind: string; host: string; port: number } {
  const m = /^(tcp|udp|sendto):\[?([^\]]+?)\]?:(\d+)$/.exec(spec);
  if (!m) throw new Error(`bad socket ${spec}: want tcp|udp|sendto:ADDR:PORT`);
  return { kind: m[1]!, host: m[2]!, port: Number(m[3]) };
}

function echo(port: number): void {
  createServer((s) => {
    s.on('error', () => {});
    s.pipe(s);
  }).listen({ port, host: '::', ipv6Only: false }, () => {
    const udp = createSocket({ type: 'udp6', ipv6Only: false });
    udp.on('message', (msg, from) => udp.send(msg, from.port, from.address));
    udp.bind(port, '::', () => console.log(JSON.stringify({ ready: true })));
  });
}

interface Held {
  check(): Promise<string>;
}

function holdTcp(host: string, port: number): Promise<Held> {
  return new Promise((resolve, reject) => {
    let failure: string | undefined;
    let onData: ((d: Buffer) => void) | undefined;
    const s: TcpSocket = tcpConnect({ host, port }, () => resolve(held));
    s.on('error', (err: NodeJS.ErrnoException) => {
      failure ??= err.code ?? err.message;
      reject(err);
    });
    s.on('close', () => {
      failure ??= 'closed';
      onData?.(Buffer.alloc(0));
    });
    s.on('data', (d) => onData?.(d));
    const held: Held = {
      check: () =>
        new Promise((done) => {
          if (failure) return done(failure);
          const timer = setTimeout(() => done(failure ?? 'timeout'), CHECK_TIMEOUT_MS);
          onData = (d) => {
            clearTimeout(timer);
            onData = undefined;
            done(d.length > 0 ? 'ok' : (failure ?? 'closed'));
          };
          s.write('ping', (err) => {
            if (err) {
              clearTimeout(timer);
              done(failure ?? (err as NodeJS.ErrnoException).code ?? err.message);
            }
          });
        }),
    };
  });
}

function udpSocket(host: string): UdpSocket {
  return createSocket({ type: host.includes(':') ? 'udp6' : 'udp4', ipv6Only: false });
}

function sendResult(err: Error | null): string {
  return err ? ((err as NodeJS.ErrnoException).code ?? err.message) : 'ok';
}

function holdUdp(host: string, port: number, connected: boolean): Promise<Held> {
  const s = udpSocket(host);
  s.on('error', () => {});
  const held: Held = {
    check: () =>
      new Promise((done) => {
        const cb = (err: Error | null) => done(sendResult(err));
        try {
          if (connected) s.send('ping', cb);
          else s.send('ping', port, host, cb);
        } catch (err) {
          done((err as NodeJS.ErrnoException).code ?? String(err));
        }
      }),
  };
  if (!connected) return new Promise((resolve) => s.bind(0, () => resolve(held)));
  return new Promise((resolve, reject) => {
    s.connect(port, host, () => resolve(held));
    s.once('error', reject);
  });
}

async function hold(specs: string[]): Promise<void> {
  const held: Held[] = [];
  for (const spec of specs) {
    const { kind, host, port } = parse(spec);
    held.push(kind === 'tcp' ? await holdTcp(host, port) : await holdUdp(host, port, kind === 'udp'));
  }
  console.log(JSON.stringify({ ready: true }));
  for await (const line of createInterface({ input: process.stdin })) {
    if (line.trim() !== 'check') continue;
    const results: string[] = [];
    for (const h of held) results.push(await h.check());
    console.log(JSON.stringify({ results }));
  }
  process.exit(0);
}

async function many(count: number, target: string): Promise<void> {
  const { host, port } = parse(`tcp:${target}`);
  const open: TcpSocket[] = [];
  for (let i = 0; i < count; i += 64) {
    const batch = Array.from(
      { length: Math.min(64, count - i) },
      () =>
        new Promise<TcpSocket>((resolve, reject) => {
          const s = tcpConnect({ host, port }, () => resolve(s));
          s.once('error', reject);
        }),
    );
    for (const s of await Promise.all(batch)) {
      s.on('error', () => {});
      open.push(s);
    }
  }
  console.log(JSON.stringify({ ready: true, open: open.length }));
  process.stdin.resume();
  // Closed with a reset: no TIME_WAIT left to hold ports for the next run.
  process.stdin.on('end', () => {
    for (const s of open) s.resetAndDestroy();
    setTimeout(() => process.exit(0), 100);
  });
}

const [mode, ...rest] = process.argv.slice(2);
if (mode === 'echo') echo(Number(rest[0]));
else if (mode === 'many') {
  many(Number(rest[0]), rest[1] ?? '').catch((err: NodeJS.ErrnoException) => {
    console.log(JSON.stringify({ error: err.code ?? err.message }));
    process.exit(1);
  });
} else if (mode === 'hold') {
  hold(rest).catch((err: NodeJS.ErrnoException) => {
    console.log(JSON.stringify({ error: err.code ?? err.message }));
    process.exit(1);
  });
} else {
  console.error('usage: holder.js echo PORT | hold SOCKET... | many COUNT ADDR:PORT');
  process.exit(2);
}
