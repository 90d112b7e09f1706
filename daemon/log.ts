/**
 * egressd's logger: pino, writing readable lines with local times when
 * stdout is a terminal (pino-pretty, in this process: no worker thread), one
 * JSON object a line otherwise or when asked (`--log-format json`, for log
 * collectors and journald).
 */
import { type Logger, pino } from 'pino';
import pretty from 'pino-pretty';

export const LOG_FORMATS = ['auto', 'pretty', 'json'] as const;
export type LogFormat = (typeof LOG_FORMATS)[number];

/** `auto` → `pretty` on a terminal, `json` otherwise. */
export function resolveLogFormat(
  format: LogFormat,
  isTty = process.stdout.isTTY === true,
): 'pretty' | 'json' {
  return format === 'auto' ? (isTty ? 'pretty' : 'json') : format;
}

export function createLogger(
  level: string,
  format: LogFormat,
  isTty = process.stdout.isTTY === true,
): Logger {
  if (resolveLogFormat(format, isTty) === 'json') return pino({ level });
  return pino(
    { level },
    pretty({
      colorize: isTty,
      // Local time, to the millisecond; the JSON format keeps epoch milliseconds.
      translateTime: 'SYS:yyyy-mm-dd HH:MM:ss.l',
      ignore: 'hostname',
      singleLine: true,
      sync: true,
      destination: 1,
    }),
  );
}
