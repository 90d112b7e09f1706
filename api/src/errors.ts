/**
 * Errors that the API answers with: an HTTP status, a stable code and a
 * message that says what to change. The error middleware turns them into
 * `{"error": {"code", "message"}}`; anything else thrown is a bug (500).
 */
import { EgressdError } from '../../daemon/src/errors.js';

export interface FieldIssue {
  /** Field path, for example `rules[3].port`; '' for the body itself. */
  path: string;
  message: string;
}

export class ApiError extends EgressdError {
  /** Seconds for the `Retry-After` header (every 503 gets 1 unless it says otherwise). */
  readonly retryAfter: number | undefined;

  constructor(
    readonly status: number,
    code: string,
    message: string,
    readonly details?: FieldIssue[],
    options?: { cause?: unknown; retryAfter?: number },
  ) {
    super(code, message, options);
    this.name = 'ApiError';
    this.retryAfter = options?.retryAfter ?? (status === 503 ? 1 : undefined);
  }
}

/** The seed's texts, verbatim. */
export const RULES_REQUIRED = 'rules required for allowlist/denylist mode';
export const COMPUTER_NOT_FOUND = 'computer not found';

export const computerNotFound = () => new ApiError(404, 'computer_not_found', COMPUTER_NOT_FOUND);

/** Redis could not be reached (or answered that it cannot serve): 503, retry later. Nothing was changed. */
export class StoreUnavailableError extends ApiError {
  constructor(cause: unknown, code = 'store_unavailable', message?: string) {
    super(
      503,
      code,
      message ?? `the policy store (Redis) is unavailable, retry shortly: ${causeText(cause)}`,
      undefined,
      { cause },
    );
    this.name = 'StoreUnavailableError';
  }
}

/**
 * A change was sent to Redis but no answer came (the command timed out, or
 * the connection was lost before the reply): it may or may not have taken
 * effect. Still a 503 (a StoreUnavailableError, so whoever treats "Redis is
 * away" as transient does the same here), with a code of its own and a
 * message that says how to find out: `change` names what was being changed,
 * `advice` what to GET and what is safe to repeat.
 */
export class StoreOutcomeUnknownError extends StoreUnavailableError {
  constructor(cause: unknown, change: string, advice: string) {
    super(
      cause,
      'store_outcome_unknown',
      `the policy store (Redis) did not confirm ${change} (${causeText(cause)}): it may or may not have taken effect. ${advice}`,
    );
    this.name = 'StoreOutcomeUnknownError';
  }
}

function causeText(cause: unknown): string {
  return cause instanceof Error ? cause.message : String(cause);
}
