/**
 * The one error vocabulary of the sidecar. The core and the Redis layer throw
 * these with a stable code and a sentence fit for the person who sent the
 * request; `server/status.ts` is the one place that turns a code into a gRPC
 * status. Anything else that escapes is a bug and reaches callers as a
 * generic INTERNAL, with the cause kept for the log.
 *
 * Every domain error is made by a factory below, so the same failure reads
 * the same wherever it is raised.
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
  | 'E_UNIMPLEMENTED'
  /** A value read from Redis that this version cannot read; the Redis layer turns it into a miss. */
  | 'E_CORRUPT_VALUE';

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

/** Whether `error` is a domain error, optionally of one code. */
export function isCacheError(error: unknown, code?: CacheErrorCode): error is CacheError {
  return error instanceof CacheError && (code === undefined || error.code === code);
}

/** A resource, key or session for a message: quoted, and cut short when long. */
export function quoted(name: string): string {
  return JSON.stringify(name.length > 80 ? `${name.slice(0, 80)}…` : name);
}

// Requests.
export const invalidArgument = (message: string): CacheError => new CacheError('E_INVALID_ARGUMENT', message);
export const tooLarge = (message: string): CacheError => new CacheError('E_TOO_LARGE', message);
export const notFound = (message: string): CacheError => new CacheError('E_NOT_FOUND', message);
export const conflict = (message: string): CacheError => new CacheError('E_CONFLICT', message);

// Availability.
export const unavailable = (message: string, cause?: unknown): CacheError => new CacheError('E_UNAVAILABLE', message, { cause });
export const shuttingDown = (): CacheError => new CacheError('E_SHUTTING_DOWN', 'the sidecar is shutting down; retry on another instance or after it restarts');
export const deadlinePassed = (message: string): CacheError => new CacheError('E_DEADLINE', message);
export const unimplemented = (what: string): CacheError => new CacheError('E_UNIMPLEMENTED', `${what} is not implemented by this sidecar version yet`);

/** A value in Redis that does not decode; never reaches a caller (it is a miss). */
export class CorruptValueError extends CacheError {
  constructor(reason: string) {
    super('E_CORRUPT_VALUE', `unreadable cached value: ${reason}`);
    this.name = 'CorruptValueError';
  }
}

// Conditional writes.
export const staleLease = (): CacheError =>
  conflict('the lease is stale: the key was written or invalidated after it was granted, or it expired and another caller took it; read again instead of filling');

export function ifAbsentRefused(key: string, version: number): CacheError {
  return conflict(`key "${key}" exists (version ${version}); if_absent refused the write`);
}

/** `current`: the key's version now, 0 when it does not exist. */
export function ifVersionRefused(key: string, current: number, expected: number): CacheError {
  return conflict(
    current === 0
      ? `key "${key}" does not exist; if_version ${expected} refused the write`
      : `key "${key}" has version ${current}, not ${expected}; if_version refused the write`,
  );
}

export function memoryTierFull(what: 'value' | 'session', maxBytes: number): CacheError {
  return tooLarge(`the ${what} does not fit in this sidecar's memory tier (${maxBytes} bytes) and Redis is not reachable, so it cannot be stored`);
}

// Locks.
export function lockNotHeld(resource: string): CacheError {
  return new CacheError('E_LOCK_NOT_HELD', `the token does not hold the lock on ${quoted(resource)}: it expired, was released, or belongs to another holder`);
}

export function lockBusy(resource: string, waitMs: number): CacheError {
  return new CacheError(
    'E_LOCK_BUSY',
    waitMs === 0
      ? `the lock on ${quoted(resource)} is held by another holder; set wait_timeout to wait for it`
      : `the lock on ${quoted(resource)} is still held by another holder after waiting ${waitMs} ms (wait_timeout)`,
  );
}

export const fenceRaced = (): CacheError =>
  new CacheError('E_LOCK_BUSY', 'another holder took a fencing token of this resource at the same time (its lock and this one overlapped); try again');

/** A fencing counter in Redis that no token can exceed (beyond 2^53, or not a number): every grant would fail as a race, forever. */
export const corruptFence = (key: string, value: string): CacheError =>
  new CacheError('E_CORRUPT_VALUE', `the fencing counter ${key} in Redis holds "${value.slice(0, 40)}", not a number below 2^53: something else wrote it; delete the key to repair it`);

export const noMajority = (cause?: unknown): CacheError =>
  unavailable('Redis is unavailable: mutual exclusion cannot be decided without a majority of Redis masters', cause);
