/**
 * Errors that the API answers with: an HTTP status, a stable code and a
 * message that says what to change. The error middleware turns them into
 * `{"error": {"code", "message"}}`; anything else thrown is a bug (500).
 */
import { EgressdError, type FieldIssue, type PolicyError } from '../policy/errors.js';
import type { StoreUnavailableError } from '../store/errors.js';

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

/** The seed's text, verbatim. */
export const COMPUTER_NOT_FOUND = 'computer not found';

export const computerNotFound = () => new ApiError(404, 'computer_not_found', COMPUTER_NOT_FOUND);

/** An invalid policy or computer id answers 400 with its code, message and field details. */
export function invalidPolicy(err: PolicyError): ApiError {
  return new ApiError(400, err.code, err.message, err.details, { cause: err });
}

/** The store's outage errors answer 503 with Retry-After: 1 (nothing, or maybe something, was changed; retry). */
export function storeUnavailable(err: StoreUnavailableError): ApiError {
  return new ApiError(503, err.code, err.message, undefined, { cause: err });
}
