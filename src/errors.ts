/**
 * Domain errors. The core throws these with a stable code and a sentence fit
 * for the person who sent the request; `server/status.ts` is the one place that
 * turns a code into a gRPC status. Anything else that escapes is a bug and
 * reaches callers as a generic INTERNAL, with the cause kept for the log.
 */
export type CacheErrorCode =
  | 'E_INVALID_ARGUMENT'
  | 'E_TOO_LARGE'
  | 'E_CONFLICT'
  | 'E_NOT_FOUND'
  | 'E_LOCK_NOT_HELD'
  | 'E_LOCK_BUSY'
  | 'E_UNAVAILABLE'
  | 'E_SHUTTING_DOWN'
  | 'E_DEADLINE'
  | 'E_UNIMPLEMENTED';

export class CacheError extends Error {
  constructor(
    readonly code: CacheErrorCode,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = 'CacheError';
  }
}

export const invalidArgument = (message: string): CacheError => new CacheError('E_INVALID_ARGUMENT', message);
export const conflict = (message: string): CacheError => new CacheError('E_CONFLICT', message);
export const unavailable = (message: string): CacheError => new CacheError('E_UNAVAILABLE', message);
export const unimplemented = (what: string): CacheError =>
  new CacheError('E_UNIMPLEMENTED', `${what} is not implemented by this sidecar version yet`);
export const tooLarge = (message: string): CacheError => new CacheError('E_TOO_LARGE', message);
