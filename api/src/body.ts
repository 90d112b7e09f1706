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
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of ctx.req as AsyncIterable<Buffer>) {
    size += chunk.length;
    if (size > limitBytes) {
      ctx.set('Connection', 'close');
      throw tooLarge();
    }
    chunks.push(chunk);
  }
  const text = Buffer.concat(chunks).toString('utf8');
  try {
    return JSON.parse(text);
  } catch (err) {
    throw new ApiError(400, 'invalid_json', `body: not valid JSON (${(err as Error).message})`);
  }
}
