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
