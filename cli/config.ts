/**
 * egressd's configuration, resolved once per process from the table in
 * options.ts: flag, then environment, then default, each checked by its zod
 * schema. parseArgs takes the table's flags (CONFIG_FLAGS), --help prints
 * it (optionsHelp). cli/main.ts is the only caller with process.env; the
 * API and the agent get what it resolved.
 */
import { isIP } from 'node:net';
import { networkInterfaces } from 'node:os';
import ipaddr from 'ipaddr.js';
import { z } from 'zod';
import { EgressdError } from '../policy/errors.js';
import { OPTIONS, type Option } from './options.js';

export class ConfigError extends EgressdError {
  constructor(message: string) {
    super('BAD_CONFIG', message);
    this.name = 'ConfigError';
  }
}

type Key = keyof typeof OPTIONS;
export type EgressdConfig = { -readonly [K in Key]: z.output<(typeof OPTIONS)[K]['schema']> };

const ENTRIES = Object.entries(OPTIONS) as [Key, Option][];
const SCHEMA = z.object(Object.fromEntries(ENTRIES.map(([key, o]) => [key, o.schema])));

/** Variables no longer read, and their replacements: refused at start, so that no setting is dropped unseen. */
const RENAMED: Readonly<Record<string, string>> = { EGRESSD_API_LISTEN: 'EGRESSD_LISTEN' };

/** "--flag / VARIABLE", or the variable alone. */
function names(key: Key): string {
  const o: Option = OPTIONS[key];
  return o.flag === undefined ? o.env : `--${o.flag} / ${o.env}`;
}

/** The flags of the options, for node:util parseArgs. */
export const CONFIG_FLAGS = Object.fromEntries(
  ENTRIES.filter(([, o]) => o.flag !== undefined).map(([, o]) => [
    o.flag,
    o.list ? { type: 'string' as const, multiple: true as const } : { type: 'string' as const },
  ]),
) as Record<string, { type: 'string'; multiple?: true }>;

/** The options part of `egressd --help`: flag, variable and default, then what it is. */
export function optionsHelp(): string {
  const flagWidth = Math.max(...ENTRIES.map(([, o]) => (o.flag?.length ?? 0) + 2));
  const envWidth = Math.max(...ENTRIES.map(([, o]) => o.env.length));
  const shown = (o: Option) =>
    o.shown ??
    (typeof o.default === 'string'
      ? o.default || 'none'
      : Array.isArray(o.default)
        ? o.default.join(',') || 'none'
        : '');
  return [
    'options (flag, environment variable, default; lists: repeat the flag, comma-separated in the variable):',
    ...ENTRIES.flatMap(([, o]) => [
      `  ${(o.flag ? `--${o.flag}` : '').padEnd(flagWidth)}  ${o.env.padEnd(envWidth)}  ${shown(o)}`,
      ...wrap(o.help, 100).map((line) => `      ${line}`),
    ]),
  ].join('\n');
}

/** `text` in lines of at most `width` characters, broken between words. */
function wrap(text: string, width: number): string[] {
  const lines: string[] = [];
  let line = '';
  for (const word of text.split(' ')) {
    if (line !== '' && line.length + 1 + word.length > width) {
      lines.push(line);
      line = word;
    } else line = line === '' ? word : `${line} ${word}`;
  }
  return [...lines, line];
}

/** Resolves and checks every option; throws a ConfigError naming the flag or variable to fix. */
export function resolveEgressdConfig(
  flags: Record<string, string | string[] | boolean | undefined>,
  env: Record<string, string | undefined>,
): EgressdConfig {
  for (const [old, now] of Object.entries(RENAMED)) {
    if (env[old]) {
      throw new ConfigError(
        `${old} is no longer read: rename it to ${now}${env[now] ? ` (${now} is set too: keep one)` : ''}`,
      );
    }
  }
  const raw: Record<string, string | string[]> = {};
  const fromEnv = new Set<Key>();
  for (const [key, o] of ENTRIES) {
    const given = o.flag === undefined ? undefined : flags[o.flag];
    const variable = env[o.env];
    if (given !== undefined && typeof given !== 'boolean') {
      raw[key] = o.list ? [given].flat() : [given].flat().at(-1)!;
    } else if (variable !== undefined && variable !== '') {
      fromEnv.add(key);
      raw[key] = o.list
        ? variable
            .split(',')
            .map((s) => s.trim())
            .filter(Boolean)
        : variable;
    } else {
      raw[key] =
        typeof o.default === 'function'
          ? o.default()
          : Array.isArray(o.default)
            ? [...(o.default as readonly string[])]
            : (o.default as string);
    }
  }
  const parsed = SCHEMA.safeParse(raw);
  if (!parsed.success) {
    const issue = parsed.error.issues[0]!;
    const [key, index] = issue.path as [Key, number | undefined];
    const o: Option = OPTIONS[key];
    const value = typeof raw[key] === 'string' && o.shownAs ? o.shownAs(raw[key]) : raw[key];
    // The value as given (a Redis URL without its password): a list item alone; a variable's as it is written in the environment.
    const shown =
      typeof index === 'number'
        ? `"${(value as string[])[index]}" `
        : Array.isArray(value)
          ? ''
          : fromEnv.has(key)
            ? `${OPTIONS[key].env}="${value}" `
            : `"${value}" `;
    throw new ConfigError(`${names(key)}: ${shown}${issue.message}`);
  }
  const config = parsed.data as EgressdConfig;
  if (config.dnsTtlMin > config.dnsTtlMax) {
    throw new ConfigError(
      `${names('dnsTtlMin')} (${config.dnsTtlMin}) must not exceed ${names('dnsTtlMax')} (${config.dnsTtlMax})`,
    );
  }
  return hideSecrets(config);
}

/** Makes the secrets in `config` (the keys) non-enumerable: never logged, spread or serialised. */
export function hideSecrets<T extends object>(config: T): T {
  for (const [key, o] of ENTRIES) {
    if (o.secret && key in config) {
      const value = (config as Record<string, unknown>)[key];
      Object.defineProperty(config, key, { value, enumerable: false, writable: false, configurable: true });
    }
  }
  return config;
}

/**
 * The environment variables that resolve to `config` again (its secrets
 * left out): how a process hands its configuration to the processes it
 * starts (flags would show a Redis password in the process list).
 */
export function configEnvironment(config: EgressdConfig): Record<string, string> {
  const env: Record<string, string> = {};
  for (const [key, o] of ENTRIES) {
    if (o.secret) continue;
    const value = config[key];
    env[o.env] = Array.isArray(value) ? value.join(',') : String(value);
  }
  return env;
}

/**
 * Every --dns-proxy-address must be an address of this host (the proxy
 * binds each computer's port there; the hooks send sandboxes' DNS there):
 * one that is not would leave those sandboxes without DNS, with a bind
 * error for each computer. Checked at the agent's start, not in
 * resolveEgressdConfig (the client commands share the flags).
 * `interfaces`: os.networkInterfaces(), or a test's.
 */
export function checkProxyAddressesLocal(
  addresses: readonly string[],
  interfaces: Readonly<Record<string, readonly { address: string }[] | undefined>> = networkInterfaces(),
): void {
  const own = new Map<string, string>();
  for (const [name, infos] of Object.entries(interfaces)) {
    for (const i of infos ?? []) {
      if (ipaddr.isValid(i.address)) own.set(ipaddr.parse(i.address).toString(), name);
    }
  }
  for (const address of addresses) {
    if (ipaddr.isValid(address) && own.has(ipaddr.parse(address).toString())) continue;
    const shown = [...own]
      .filter(([a]) => isIP(a) === isIP(address))
      .map(([a, name]) => `${a} (${name})`)
      .join(', ');
    throw new ConfigError(
      `${names('dnsProxyAddresses')}: ${address} is not an address of this host` +
        (shown === '' ? '' : ` (its IPv${isIP(address) || 4} addresses: ${shown})`) +
        `: give the address sandboxes reach this host at, such as the host side of their veth (ip -brief address), or add it first (ip address add ${address}/${isIP(address) === 6 ? 64 : 24} dev IFACE)`,
    );
  }
}

/** A checked host:port option (--listen, --metrics-listen) → host and port; an empty host is 127.0.0.1. */
export function parseListen(listen: string): { host: string; port: number } {
  const at = listen.lastIndexOf(':');
  const host = listen.slice(0, at).replace(/^\[|\]$/g, '');
  return { host: host === '' ? '127.0.0.1' : host, port: Number(listen.slice(at + 1)) };
}
