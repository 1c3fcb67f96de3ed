import type { ServerWritableStream } from '@grpc/grpc-js';
import { CacheError, deadlinePassed, isCacheError, quoted } from '../errors';
import type { ContextCacheServer } from '../gen/contextcache/v1/context_cache';
import type { DistributedLocks } from '../locks/distributed-locks';
import type { Hold } from '../locks/hold';
import type { Logger } from '../log';
import { endStream, onCallEnd, type CallTracker } from './calls';
import { lockToProto } from './mapping';
import { toServiceError } from './status';
import { LIMITS, type LockWait, type RequestValidator } from './validation';

export type LockHandlers = Pick<ContextCacheServer, 'acquireLock' | 'extendLock' | 'releaseLock' | 'holdLock'>;

export interface LockHandlerDeps {
  calls: CallTracker;
  locks: DistributedLocks;
  validate: RequestValidator;
  log: Logger;
}

/** A lock that stayed busy because the deadline cut the wait short is a passed deadline. */
function busyAsDeadline(error: unknown, resource: string, wait: LockWait): unknown {
  return wait.cutByDeadline && isCacheError(error, 'E_LOCK_BUSY')
    ? deadlinePassed(`the call's deadline passed while the lock on ${quoted(resource)} was still held by another holder`)
    : error;
}

/** Distributed locks over gRPC: validate, delegate to DistributedLocks, translate. */
export function lockHandlers({ calls, locks, validate, log }: LockHandlerDeps): LockHandlers {
  return {
    acquireLock: calls.unary('AcquireLock', async (request, call) => {
      const resource = validate.key(request.resource, 'resource');
      const ttlMs = validate.lockTtl(request.ttl);
      const wait = validate.lockWait(request.waitTimeout, call);
      try {
        return lockToProto(await locks.acquire(resource, ttlMs, wait.ms, call.signal));
      } catch (error) {
        throw busyAsDeadline(error, resource, wait);
      }
    }),

    extendLock: calls.unary('ExtendLock', async (request) => {
      const resource = validate.key(request.resource, 'resource');
      const token = validate.lockToken(request.token);
      const expiresAt = await locks.extend(resource, token, validate.lockTtl(request.ttl));
      return { expiresAt: new Date(expiresAt) };
    }),

    releaseLock: calls.unary('ReleaseLock', async (request) => {
      const resource = validate.key(request.resource, 'resource');
      await locks.release(resource, validate.lockToken(request.token));
      return {};
    }),

    holdLock: calls.serverStream('HoldLock', async (call, context) => {
      const { request } = call;
      const resource = validate.key(request.resource, 'resource');
      const ttlMs = validate.lockTtl(request.ttl, LIMITS.holdDefaultTtlMs);
      const wait = validate.lockWait(request.waitTimeout, context);
      // The stream's end, whatever ends it (cancel, dead connection, deadline, shutdown, our own status), releases the lock.
      let hold: Hold | undefined;
      onCallEnd(context, () => void hold?.release());

      try {
        hold = await locks.hold(resource, ttlMs, wait.ms, context.signal);
      } catch (error) {
        throw busyAsDeadline(error, resource, wait);
      }
      if (context.signal.aborted) {
        await hold.release();
        return;
      }
      const open = () => !call.cancelled && !call.writableEnded;
      call.write({ lock: lockToProto(hold.grant), lost: false });
      hold.keep({
        extended: (grant) => {
          if (open()) call.write({ lock: lockToProto(grant), lost: false });
        },
        lost: (grant, error) => {
          if (!open()) return;
          call.write({ lock: lockToProto(grant), lost: true });
          const reason = error.code === 'E_LOCK_NOT_HELD' ? error : new CacheError(error.code, `the lock on ${quoted(resource)} may be lost: ${error.message}`);
          endStream(call as ServerWritableStream<unknown, unknown>, toServiceError(reason, 'HoldLock', log));
        },
      });
    }),
  };
}
