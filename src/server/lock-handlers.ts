import { unimplemented } from '../errors';
import type { ContextCacheServer } from '../gen/contextcache/v1/context_cache';
import type { CallTracker } from './calls';

export type LockHandlers = Pick<ContextCacheServer, 'acquireLock' | 'extendLock' | 'releaseLock' | 'holdLock'>;

/** Distributed locks over gRPC: translate, validate, delegate. */
export function lockHandlers(deps: { calls: CallTracker }): LockHandlers {
  const { calls } = deps;
  return {
    acquireLock: calls.unary('AcquireLock', () => Promise.reject(unimplemented('AcquireLock'))),
    extendLock: calls.unary('ExtendLock', () => Promise.reject(unimplemented('ExtendLock'))),
    releaseLock: calls.unary('ReleaseLock', () => Promise.reject(unimplemented('ReleaseLock'))),
    holdLock: calls.serverStream('HoldLock', () => Promise.reject(unimplemented('HoldLock'))),
  };
}
