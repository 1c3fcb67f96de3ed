import { Metadata, status, type ServiceError } from '@grpc/grpc-js';
import { CacheError, type CacheErrorCode } from '../errors';
import type { Logger } from '../log';

const STATUS_BY_CODE: Record<CacheErrorCode, status> = {
  E_INVALID_ARGUMENT: status.INVALID_ARGUMENT,
  E_TOO_LARGE: status.RESOURCE_EXHAUSTED,
  E_CONFLICT: status.ABORTED,
  E_NOT_FOUND: status.NOT_FOUND,
  E_LOCK_NOT_HELD: status.FAILED_PRECONDITION,
  E_LOCK_BUSY: status.ABORTED,
  E_UNAVAILABLE: status.UNAVAILABLE,
  E_SHUTTING_DOWN: status.UNAVAILABLE,
  E_DEADLINE: status.DEADLINE_EXCEEDED,
  E_UNIMPLEMENTED: status.UNIMPLEMENTED,
  // Read as a miss by the Redis layer; should one ever escape, it is lost data, not a bug of the caller.
  E_CORRUPT_VALUE: status.DATA_LOSS,
};

/**
 * The one place that decides which gRPC status a failure becomes. Domain
 * errors keep their message; anything else is a bug, logged here with its
 * cause and reported to the caller as a bare INTERNAL.
 */
export function toServiceError(error: unknown, method: string, log: Logger): Partial<ServiceError> {
  if (error instanceof CacheError) {
    return { code: STATUS_BY_CODE[error.code], details: error.message, metadata: new Metadata() };
  }
  log.error({ err: error, method }, 'unexpected error while handling a call');
  return { code: status.INTERNAL, details: 'internal error; the sidecar logged the cause', metadata: new Metadata() };
}
