/**
 * Errors that reach an operator: a stable code and a message that says what
 * to change. Anything thrown past start-up checks that is not an EgressdError
 * is a bug.
 */
export class EgressdError extends Error {
  constructor(
    readonly code: string,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = 'EgressdError';
  }
}

/** One field's problem: where, and what to change. */
export interface FieldIssue {
  /** Field path, for example `rules[3].port`; '' for the body itself. */
  path: string;
  message: string;
}

/**
 * A policy (or a computer id) that is not valid (schema.ts): the code, the
 * message, and each field's problem when the schema found them. The API
 * answers it with 400 and all three.
 */
export class PolicyError extends EgressdError {
  constructor(
    code: string,
    message: string,
    readonly details?: FieldIssue[],
  ) {
    super(code, message);
    this.name = 'PolicyError';
  }
}
