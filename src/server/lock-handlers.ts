import type { ServerUnaryCall, ServerWritableStream } from '@grpc/grpc-js';
import { CacheError, invalidArgument } from '../errors';
import type { AcquireLockResponse, ContextCacheServer } from '../gen/contextcache/v1/context_cache';
import type { Duration } from '../gen/google/protobuf/duration';
import { quoted, type DistributedLocks, type Hold, type LockGrant } from '../locks/distributed-locks';
import type { Logger } from '../log';
import { endStream, type CallTracker } from './calls';
import { toServiceError } from './status';
import type { RequestValidator } from './validation';

export type LockHandlers = Pick<ContextCacheServer, 'acquireLock' | 'extendLock' | 'releaseLock' | 'holdLock'>;

export interface LockHandlerDeps {
  calls: CallTracker;
  locks: DistributedLocks;
  validate: RequestValidator;
  log: Logger;
}

const MIN_TTL_MS = 100;
const MAX_TTL_MS = 3_600_000;
const MAX_WAIT_MS = 3_600_000;
/** HoldLockRequest.ttl when unset. */
const HOLD_DEFAULT_TTL_MS = 10_000;
/** Kept free at the end of the caller's deadline to answer in. */
const DEADLINE_MARGIN_MS = 20;
const MAX_TOKEN_BYTES = 256;

interface Wait {
  /** How long to keep trying: wait_timeout, cut short by the call's deadline. */
  ms: number;
  /** Whether the deadline, not wait_timeout, set `ms`: giving up is then DEADLINE_EXCEEDED, not ABORTED. */
  cutByDeadline: boolean;
}

/** Distributed locks over gRPC: translate, validate, delegate to DistributedLocks. */
export function lockHandlers({ calls, locks, validate, log }: LockHandlerDeps): LockHandlers {
  /** A lock TTL: 100 ms to 1 h; required unless there is a default. */
  const ttl = (duration: Duration | undefined, fallbackMs?: number): number => {
    const ms = validate.duration(duration, 'ttl', MAX_TTL_MS);
    if (ms === 0) {
      if (fallbackMs !== undefined) return fallbackMs;
      throw invalidArgument('ttl is required: how long the lock lasts unless extended, 100 ms to 1 h');
    }
    if (ms < MIN_TTL_MS) throw invalidArgument(`ttl is ${ms} ms; locks last 100 ms to 1 h`);
    return ms;
  };

  const wait = (duration: Duration | undefined, deadline: Date | number): Wait => {
    const requested = validate.duration(duration, 'wait_timeout', MAX_WAIT_MS);
    const deadlineMs = deadline instanceof Date ? deadline.getTime() : deadline;
    const left = Number.isFinite(deadlineMs) ? Math.max(0, deadlineMs - Date.now() - DEADLINE_MARGIN_MS) : Number.POSITIVE_INFINITY;
    return { ms: Math.min(requested, left), cutByDeadline: left < requested };
  };

  const token = (value: string): string => {
    if (value === '') throw invalidArgument('token is empty; pass the token that AcquireLock returned');
    if (Buffer.byteLength(value) > MAX_TOKEN_BYTES) throw invalidArgument(`token is longer than ${MAX_TOKEN_BYTES} bytes; pass the token that AcquireLock returned`);
    return value;
  };

  /** A lock that stayed busy because the deadline cut the wait short is a passed deadline. */
  const busyAsDeadline = (error: unknown, resource: string, w: Wait): unknown =>
    w.cutByDeadline && error instanceof CacheError && error.code === 'E_LOCK_BUSY'
      ? new CacheError('E_DEADLINE', `the call's deadline passed while the lock on ${quoted(resource)} was still held by another holder`)
      : error;

  return {
    acquireLock: calls.unary('AcquireLock', async (request, call) => {
      const resource = validate.key(request.resource, 'resource');
      const ttlMs = ttl(request.ttl);
      const w = wait(request.waitTimeout, call.getDeadline());
      try {
        return lockResponse(await locks.acquire(resource, ttlMs, w.ms, cancellation(call)));
      } catch (error) {
        throw busyAsDeadline(error, resource, w);
      }
    }),

    extendLock: calls.unary('ExtendLock', async (request) => {
      const resource = validate.key(request.resource, 'resource');
      const held = token(request.token);
      const expiresAt = await locks.extend(resource, held, ttl(request.ttl));
      return { expiresAt: new Date(expiresAt) };
    }),

    releaseLock: calls.unary('ReleaseLock', async (request) => {
      const resource = validate.key(request.resource, 'resource');
      await locks.release(resource, token(request.token));
      return {};
    }),

    holdLock: calls.serverStream('HoldLock', async (call) => {
      const { request } = call;
      const resource = validate.key(request.resource, 'resource');
      const ttlMs = ttl(request.ttl, HOLD_DEFAULT_TTL_MS);
      const w = wait(request.waitTimeout, call.getDeadline());
      // The stream's end, whatever ends it (cancel, dead connection, deadline, shutdown, our own status), releases the lock.
      const gone = new AbortController();
      let hold: Hold | undefined;
      const end = () => {
        gone.abort();
        void hold?.release();
      };
      call.once('cancelled', end);
      call.once('finish', end);
      call.once('close', end);

      try {
        hold = await locks.hold(resource, ttlMs, w.ms, gone.signal);
      } catch (error) {
        throw busyAsDeadline(error, resource, w);
      }
      if (gone.signal.aborted) {
        await hold.release();
        return;
      }
      const open = () => !call.cancelled && !call.writableEnded;
      call.write({ lock: lockResponse(hold.grant), lost: false });
      hold.keep({
        extended: (grant) => {
          if (open()) call.write({ lock: lockResponse(grant), lost: false });
        },
        lost: (grant, error) => {
          if (!open()) return;
          call.write({ lock: lockResponse(grant), lost: true });
          const reason = error.code === 'E_LOCK_NOT_HELD' ? error : new CacheError(error.code, `the lock on ${quoted(resource)} may be lost: ${error.message}`);
          endStream(call as ServerWritableStream<unknown, unknown>, toServiceError(reason, 'HoldLock', log));
        },
      });
    }),
  };
}

function lockResponse(grant: LockGrant): AcquireLockResponse {
  return { token: grant.token, fencingToken: grant.fence, expiresAt: new Date(grant.expiresAt) };
}

/** Aborts when the caller cancels or its deadline passes, so that a wait for a lock ends with it. */
function cancellation(call: ServerUnaryCall<unknown, unknown>): AbortSignal {
  const controller = new AbortController();
  if (call.cancelled) controller.abort();
  else call.once('cancelled', () => controller.abort());
  return controller.signal;
}
