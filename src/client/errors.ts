import { Metadata, status, type ServiceError } from '@grpc/grpc-js';

/** gRPC status codes, as `ContextCacheError.code` carries them. */
export { status as Status };

/** The name of a status code, e.g. "UNAVAILABLE" for 14. */
export function statusName(code: number): string {
  return (status as unknown as Record<number, string>)[code] ?? `CODE_${code}`;
}

/**
 * Every failed call rejects with this: the gRPC status code (e.g.
 * `Status.UNAVAILABLE` while the sidecar shuts down, `Status.ABORTED` for a
 * refused conditional write or a stale lease), its name, the sidecar's
 * message, which names the field or rule at fault, and the method that
 * failed. It has the shape of grpc-js's ServiceError, so code written
 * against that keeps working.
 */
export class ContextCacheError extends Error {
  readonly code: status;
  /** The status code's name, e.g. "DEADLINE_EXCEEDED". */
  readonly codeName: string;
  /** The sidecar's message (the status details). */
  readonly details: string;
  readonly metadata: Metadata;
  /** The RPC that failed, e.g. "get"; undefined when not known. */
  readonly method: string | undefined;

  constructor(error: Partial<ServiceError> & { message?: string }, method?: string) {
    const code = error.code ?? status.UNKNOWN;
    const details = error.details ?? '';
    super(details !== '' ? `${method ?? 'call'} failed with ${statusName(code)}: ${details}` : (error.message ?? 'call failed'), { cause: error });
    this.name = 'ContextCacheError';
    this.code = code;
    this.codeName = statusName(code);
    this.details = details;
    this.metadata = error.metadata ?? new Metadata();
    this.method = method;
  }
}

/** Whatever a call rejected with, as a ContextCacheError. */
export function toContextCacheError(error: unknown, method?: string): ContextCacheError {
  if (error instanceof ContextCacheError) return error;
  if (typeof error === 'object' && error !== null && 'code' in error) return new ContextCacheError(error as ServiceError, method);
  return new ContextCacheError({ code: status.UNKNOWN, details: error instanceof Error ? error.message : String(error) }, method);
}
