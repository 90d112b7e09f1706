/** Reading a JSON request body: 415 when it is not JSON, 413 past the limit, 400 when it does not parse. */
import type { Context } from 'koa';
import { ApiError } from './errors.js';

export async function readJson(ctx: Context, limitBytes: number): Promise<unknown> {
  const is = ctx.request.is('json');
  if (is === null) throw new ApiError(400, 'invalid_request', 'body: missing; send a JSON object');
  if (is === false) {
    throw new ApiError(
      415,
      'unsupported_media_type',
      `Content-Type "${ctx.request.type || '(none)'}" is not JSON: send the body as application/json`,
    );
  }
  const tooLarge = () =>
    new ApiError(
      413,
      'payload_too_large',
      `body: larger than the limit of ${limitBytes} bytes; send fewer rules`,
    );
  const declared = Number(ctx.request.length ?? 0);
  if (declared > limitBytes) {
    ctx.set('Connection', 'close');
    throw tooLarge();
  }
  const chunks = await readAll(ctx.req, limitBytes).catch((err: unknown) => {
    if (err === TOO_LARGE) {
      ctx.set('Connection', 'close');
      throw tooLarge();
    }
    throw new ApiError(400, 'invalid_request', `body: could not be read (${(err as Error).message})`);
  });
  const text = Buffer.concat(chunks).toString('utf8');
  try {
    return JSON.parse(text);
  } catch (err) {
    throw new ApiError(400, 'invalid_json', `body: not valid JSON (${(err as Error).message})`);
  }
}

const TOO_LARGE = Symbol('too large');

/** The request's chunks (event listeners: cheaper than async iteration on a hot path); rejects with TOO_LARGE past `limit`. */
function readAll(req: NodeJS.ReadableStream, limit: number): Promise<Buffer[]> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    const onData = (chunk: Buffer) => {
      size += chunk.length;
      if (size > limit) {
        cleanup();
        reject(TOO_LARGE);
        return;
      }
      chunks.push(chunk);
    };
    const onEnd = () => {
      cleanup();
      resolve(chunks);
    };
    const onError = (err: Error) => {
      cleanup();
      reject(err);
    };
    const onClose = () => {
      cleanup();
      reject(new Error('the client closed the connection'));
    };
    const cleanup = () => {
      req.off('data', onData);
      req.off('end', onEnd);
      req.off('error', onError);
      req.off('close', onClose);
    };
    req.on('data', onData);
    req.on('end', onEnd);
    req.on('error', onError);
    req.on('close', onClose);
  });
}
