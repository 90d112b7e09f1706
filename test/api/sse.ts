/**
 * A cheap Server-Sent Events client for tests: one raw TCP socket per stream
 * (no fetch, no parser), so that a test can hold thousands open.
 */
import { once } from 'node:events';
import { connect, type Socket } from 'node:net';

export interface RawStream {
  socket: Socket;
  /** The HTTP status of the answer. */
  status: number;
  /** Everything received so far, headers and chunk framing included. */
  text: string;
  /** Resolves when the server ended or dropped the connection. */
  closed: Promise<void>;
  /** Resolves once `text` matches `re`; rejects after `ms`. */
  waitFor(re: RegExp, ms?: number): Promise<void>;
  /** The JSON of every `data:` line so far. */
  events(): unknown[];
  close(): void;
}

/** GET `path` with `key` on 127.0.0.1:`port`; resolves once the status line is in. */
export async function openStream(port: number, path: string, key: string): Promise<RawStream> {
  const socket = connect(port, '127.0.0.1');
  socket.setEncoding('utf8');
  await once(socket, 'connect');
  socket.write(
    `GET ${path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer ${key}\r\nAccept: text/event-stream\r\n\r\n`,
  );
  let notify: (() => void) | undefined;
  const stream: RawStream = {
    socket,
    status: 0,
    text: '',
    closed: new Promise((resolve) => socket.once('close', () => resolve())),
    waitFor: async (re, ms = 5000) => {
      const deadline = Date.now() + ms;
      while (!re.test(stream.text)) {
        const left = deadline - Date.now();
        if (left <= 0 || socket.destroyed) {
          throw new Error(`no ${re} within ${ms} ms; got: ${stream.text.slice(-300)}`);
        }
        await new Promise<void>((resolve) => {
          const timer = setTimeout(resolve, Math.min(left, 50));
          notify = () => {
            clearTimeout(timer);
            resolve();
          };
        });
      }
    },
    events: () => [...stream.text.matchAll(/^data: (.*)$/gm)].map((m) => JSON.parse(m[1] ?? '')),
    close: () => socket.destroy(),
  };
  socket.on('error', () => {});
  socket.on('data', (chunk: string) => {
    stream.text += chunk;
    notify?.();
  });
  await stream.waitFor(/^HTTP\/1\.1 \d{3}/);
  stream.status = Number(/^HTTP\/1\.1 (\d{3})/.exec(stream.text)?.[1]);
  return stream;
}
