/**
 * Bearer keys. The admin key comes from configuration; tenant keys are made
 * by the admin (`POST /api/v1/keys`), shown once, and stored only as a
 * sha256 hash under their public id. Every comparison is constant-time.
 *
 * Key format: `egk_<id: 16 hex>_<secret: 43 base64url>`.
 */
import { createHash, randomBytes, scrypt, timingSafeEqual } from 'node:crypto';
import type { Store } from '../store/store.js';
import { ApiError } from './errors.js';

export type Principal =
  | { kind: 'admin' }
  | {
      kind: 'tenant';
      tenant: string;
      keyId: string;
      /** The cgroup subtree its computers must lie below ('' for a key made before prefixes: see keyPrefix). */
      cgroupPrefix: string;
    };

const KEY_RE = /^egk_([0-9a-f]{16})_[A-Za-z0-9_-]{43}$/;

export function hashKey(key: string): Buffer {
  return createHash('sha256').update(key).digest();
}

/** A new tenant key: its public id, the key itself (shown once) and the hash to store. */
export function generateApiKey(): { id: string; key: string; hash: string } {
  const id = randomBytes(8).toString('hex');
  const key = `egk_${id}_${randomBytes(32).toString('base64url')}`;
  return { id, key, hash: hashKey(key).toString('hex') };
}

const unauthorized = (why: string) => new ApiError(401, 'unauthorized', why);

export class Authenticator {
  private readonly adminHash: Buffer | undefined;
  private adminPrint: Promise<string> | undefined;

  constructor(
    private readonly store: Store,
    adminKey: string,
  ) {
    this.adminHash = adminKey === '' ? undefined : hashKey(adminKey);
  }

  /** Resolves the `Authorization` header to a principal; throws 401. */
  async authenticate(header: string | undefined): Promise<Principal> {
    if (!header) {
      throw unauthorized('missing API key: send the header "Authorization: Bearer <key>"');
    }
    const match = /^Bearer +(\S+) *$/i.exec(header);
    if (!match) throw unauthorized('the Authorization header must be "Bearer <key>"');
    return this.authenticateKey(match[1] ?? '');
  }

  /** Resolves a key (from the header, or a dashboard sign-in) to a principal; throws 401. */
  async authenticateKey(given: string): Promise<Principal> {
    const givenHash = hashKey(given);
    if (this.adminHash && timingSafeEqual(givenHash, this.adminHash)) return { kind: 'admin' };
    const parts = KEY_RE.exec(given);
    if (parts) {
      const keyId = parts[1] ?? '';
      const record = await this.store.getApiKey(keyId);
      if (record && timingSafeEqual(givenHash, Buffer.from(record.hash, 'hex'))) {
        return { kind: 'tenant', tenant: record.tenant, keyId, cgroupPrefix: record.cgroupPrefix };
      }
    }
    throw unauthorized('unknown or revoked API key: check the key, or ask the admin for a new one');
  }

  /**
   * A fingerprint of the admin key ('' when admin access is off), which a
   * dashboard session stores so that a new admin key ends the old one's
   * sessions (api/session.ts). scrypt, computed once: a chosen admin key may
   * be weak, and what Redis holds must not make it cheap to guess.
   */
  adminFingerprint(): Promise<string> {
    const hash = this.adminHash;
    if (!hash) return Promise.resolve('');
    this.adminPrint ??= new Promise((resolve, reject) =>
      scrypt(hash, 'egressd dashboard admin session', 16, (err, out) =>
        err ? reject(err) : resolve(out.toString('hex')),
      ),
    );
    return this.adminPrint;
  }
}

/** The tenant scope a principal sees: '' for the admin (everything). */
export function scopeOf(principal: Principal): string {
  return principal.kind === 'admin' ? '' : principal.tenant;
}
