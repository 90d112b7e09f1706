/**
 * A client for the name-bound connection tests (test/privileged/names.test.ts),
 * run in a computer's cgroup and the world's namespace:
 *
 *   node first-bytes.js tcp HOST PORT HEX [HEX...]
 *       connects, writes each HEX chunk as its own send() (50 ms apart, after
 *       the previous one was handed to the kernel), then waits up to 2 s for
 *       the world's echo server to send every byte back; prints
 *       {"connect":"ok"|ERRNO,"writes":["ok"|ERRNO...],"echoed":N,"sent":N}
 *       With FIRST_BYTES_WAIT=1 it prints {"connected":true} once connected and
 *       writes only after a line on stdin (a policy change in between).
 *   node first-bytes.js udp HOST PORT HEX
 *       one datagram: {"send":"ok"|ERRNO}
 */
import dgram from 'node:dgram';
import net from 'node:net';

const ECHO_WAIT_MS = 2000;
const GAP_MS = 50;

function print(result: Record<string, unknown>): void {
  process.stdout.write(`${JSON.stringify(result)}\n`);
}

function code(err: unknown): string {
  return (err as NodeJS.ErrnoException).code ?? String(err);
}

async function tcp(host: string, port: number, chunks: Buffer[]): Promise<void> {
  const socket = net.connect({ host, port });
  socket.setNoDelay(true);
  let echoed = 0;
  let failure: string | undefined;
  socket.on('data', (d) => {
    echoed += d.length;
  });
  socket.on('error', (err) => {
    failure ??= code(err);
  });
  const connected = await new Promise<string>((resolve) => {
    socket.once('connect', () => resolve('ok'));
    socket.once('error', (err) => resolve(code(err)));
  });
  if (connected !== 'ok') {
    print({ connect: connected });
    return;
  }
  if (process.env['FIRST_BYTES_WAIT'] === '1') {
    print({ connected: true });
    await new Promise((resolve) => process.stdin.once('data', resolve));
    process.stdin.destroy(); // else the open stdin keeps the process alive
  }
  const writes: string[] = [];
  let sent = 0;
  for (const chunk of chunks) {
    const result = await new Promise<string>((resolve) => {
      socket.write(chunk, (err) => resolve(err ? code(err) : (failure ?? 'ok')));
    });
    writes.push(result);
    if (result !== 'ok') break;
    sent += chunk.length;
    await new Promise((r) => setTimeout(r, GAP_MS));
  }
  const deadline = Date.now() + ECHO_WAIT_MS;
  while (echoed < sent && failure === undefined && Date.now() < deadline) {
    await new Promise((r) => setTimeout(r, 20));
  }
  print({ connect: 'ok', writes, echoed, sent });
  socket.destroy();
}

async function udp(host: string, port: number, payload: Buffer): Promise<void> {
  const socket = dgram.createSocket(host.includes(':') ? 'udp6' : 'udp4');
  const result = await new Promise<string>((resolve) => {
    socket.send(payload, port, host, (err) => resolve(err ? code(err) : 'ok'));
  });
  print({ send: result });
  socket.close();
}

const [kind, host = '', port = '0', ...hex] = process.argv.slice(2);
const chunks = hex.map((h) => Buffer.from(h, 'hex'));
if (kind === 'tcp') await tcp(host, Number(port), chunks);
else if (kind === 'udp') await udp(host, Number(port), chunks[0] ?? Buffer.alloc(1));
else {
  console.error('usage: first-bytes.js tcp HOST PORT HEX... | udp HOST PORT HEX');
  process.exit(2);
}
