import { status } from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ContextCacheError } from '../../src/client';
import { startRedis, type TestRedis } from '../helpers/redis';
import { closeAllSidecars, startSidecar, type TestSidecar } from '../helpers/sidecar';
import { rejectionOf, waitFor } from '../helpers/wait';

describe('a fencing counter planted beyond 2^53', () => {
  let redis: TestRedis;
  let sc: TestSidecar;
  beforeAll(async () => {
    redis = await startRedis();
    sc = await startSidecar({ REDIS_URL: redis.url, CONTEXT_CACHE_NAMESPACE: 'fence' });
    await waitFor(() => sc.sidecar.locks.ready, 'locks ready');
  });
  afterAll(async () => {
    await closeAllSidecars();
    await redis.stop();
  });

  it('is reported as corrupt data naming the key, not as a lock that is busy forever; deleting it repairs the resource', async () => {
    await redis.command('SET', 'cc:fence:fence:r', '99999999999999999999');
    const error = (await rejectionOf(sc.client.acquireLock({ resource: 'r', ttl: { seconds: 5, nanos: 0 } }))) as ContextCacheError;
    expect(error.code).toBe(status.DATA_LOSS);
    expect(error.details).toBe('the fencing counter cc:fence:fence:r in Redis holds "99999999999999999999", not a number below 2^53: something else wrote it; delete the key to repair it');
    // The lock taken for the attempt was given back: the next caller is not blocked by it.
    await redis.command('DEL', 'cc:fence:fence:r');
    const lock = await sc.client.acquireLock({ resource: 'r', ttl: { seconds: 5, nanos: 0 } });
    expect(lock.fencingToken).toBeGreaterThan(0);
  });
});
