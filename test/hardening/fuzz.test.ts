import { status, type ServiceError } from '@grpc/grpc-js';
import fc from 'fast-check';
import Redis from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ContextCacheService } from '../../src/gen/contextcache/v1/context_cache';
import * as messages from '../../src/gen/contextcache/v1/context_cache';
import { startRedis, type TestRedis } from '../helpers/redis';
import { closeAllSidecars, startSidecar, type TestSidecar } from '../helpers/sidecar';
import { waitFor } from '../helpers/wait';

type Method = keyof typeof ContextCacheService;
const unary = (Object.keys(ContextCacheService) as Method[]).filter((method) => !ContextCacheService[method].responseStream);

/** A sample request of each method, as a starting point for mutations. */
const samples: Partial<Record<Method, Uint8Array>> = {
  get: messages.GetRequest.encode({ key: 'k', leaseOnMiss: true, ifVersionNot: 0, leaseTtl: { seconds: 1, nanos: 0 }, leaseWait: undefined }).finish(),
  set: messages.SetRequest.encode({ key: 'k', value: Buffer.from('v'), ttl: { seconds: 60, nanos: 0 }, tags: ['t'], leaseToken: '', ifVersion: 0, ifAbsent: false }).finish(),
  putSessionNodes: messages.PutSessionNodesRequest.encode({
    sessionId: 's',
    nodes: [
      { id: 'n0', shortId: 'a', sessionId: 's', parentId: '', role: 1, content: 'hello', createdAt: new Date(0), metadata: { m: 'v' }, refs: ['b'], tokenCount: 3, tokenCountTokenizer: 'o200k_base', pinned: true, summarizesThrough: '' },
      { id: 'n1', shortId: 'c', sessionId: 's', parentId: 'n0', role: 2, content: 'sum', createdAt: new Date(0), metadata: {}, refs: [], tokenCount: 0, tokenCountTokenizer: '', pinned: false, summarizesThrough: 'n0' },
    ],
    leaseToken: '',
    ttl: undefined,
  }).finish(),
  buildContext: messages.BuildContextRequest.encode({
    sessionId: 's',
    headNodeId: 'n0',
    maxNodes: 5,
    maxChars: 100,
    includeRefs: true,
    extraRefs: ['a'],
    maxRefDepth: 2,
    maxTokens: 50,
    tokenizer: 'cl100k_base',
    summaryThreshold: 0.5,
  }).finish(),
  acquireLock: messages.AcquireLockRequest.encode({ resource: 'r', ttl: { seconds: 1, nanos: 0 }, waitTimeout: undefined }).finish(),
};

function rawCall(sc: TestSidecar, method: Method, bytes: Uint8Array): Promise<ServiceError | undefined> {
  const definition = ContextCacheService[method];
  return new Promise((resolve) => {
    sc.client.raw.makeUnaryRequest(
      definition.path,
      (value: Buffer) => value,
      (value: Buffer) => value,
      Buffer.from(bytes),
      { deadline: new Date(Date.now() + 5000) },
      (error) => resolve(error ?? undefined),
    );
  });
}

/** Random bytes, or a valid request with some bytes changed, cut or appended. */
const requestBytes = (method: Method) => {
  const sample = samples[method];
  const random = fc.uint8Array({ maxLength: 300 });
  if (sample === undefined) return random;
  const mutated = fc
    .tuple(fc.array(fc.tuple(fc.nat(sample.length - 1), fc.integer({ min: 0, max: 255 })), { maxLength: 6 }), fc.nat(sample.length), fc.uint8Array({ maxLength: 8 }))
    .map(([flips, cut, tail]) => {
      const bytes = Uint8Array.from(sample);
      for (const [at, value] of flips) bytes[at] = value;
      return Uint8Array.from([...bytes.subarray(0, cut), ...tail]);
    });
  return fc.oneof(random, mutated);
};

describe('fuzzing the sidecar (fast-check)', () => {
  let redis: TestRedis;
  let sc: TestSidecar;
  beforeAll(async () => {
    redis = await startRedis();
    sc = await startSidecar({ REDIS_URL: redis.url, CONTEXT_CACHE_NAMESPACE: 'fuzz' });
    await waitFor(() => sc.sidecar.tiers.mode === 'coherent', 'coherent');
  });
  afterAll(async () => {
    await closeAllSidecars();
    await redis.stop();
  });

  it('answers random and mutated request bytes on every unary RPC with a named status and a sentence, never INTERNAL or UNKNOWN', async () => {
    for (const method of unary) {
      await fc.assert(
        fc.asyncProperty(requestBytes(method), async (bytes) => {
          const error = await rawCall(sc, method, bytes);
          if (error === undefined) return true;
          return ![status.INTERNAL, status.UNKNOWN].includes(error.code) && (error.details ?? '').length > 10;
        }),
        { numRuns: 40, seed: 1 },
      );
    }
    expect((await sc.client.getStats()).namespace).toBe('fuzz');
  }, 60_000);

  it('survives random Pub/Sub messages on its channel: still coherent, still answering', async () => {
    const message = fc.oneof(
      fc.string({ maxLength: 200 }),
      fc.json({ maxDepth: 3 }),
      fc.record({ o: fc.string(), e: fc.constantFrom('k', 'g', 's', 'n', 'f', 'x'), k: fc.array(fc.string()), v: fc.oneof(fc.string(), fc.array(fc.string())), s: fc.string(), i: fc.string(), p: fc.string(), g: fc.anything() }).map((m) => JSON.stringify(m)),
    );
    await fc.assert(
      fc.asyncProperty(message, async (raw) => {
        await redis.command('PUBLISH', 'cc:fuzz:events', raw);
        return true;
      }),
      { numRuns: 300, seed: 2 },
    );
    await waitFor(() => sc.sidecar.tiers.mode === 'coherent', 'coherent after the flood', 10_000);
    await sc.client.set({ key: 'after', value: Buffer.from('ok') });
    expect(Buffer.from((await sc.client.get({ key: 'after' })).value).toString()).toBe('ok');
  }, 60_000);

  it('reads random values planted in Redis under entry and session keys as misses or values, never INTERNAL', async () => {
    const direct = new Redis(redis.url);
    try {
      const header = Buffer.from([0xcc, 0x01, 0x00]);
      const chunk = fc.oneof(
        fc.uint8Array({ maxLength: 64 }).map((bytes) => Buffer.from(bytes)),
        fc.anything({ maxDepth: 3 }).map((value) => Buffer.concat([header, Buffer.from(JSON.stringify([value]) ?? 'null')])),
        fc.array(fc.record({ id: fc.string(), shortId: fc.string(), sessionId: fc.constant('fz'), parentId: fc.string(), role: fc.oneof(fc.integer(), fc.double()), content: fc.oneof(fc.string(), fc.integer()), createdAt: fc.oneof(fc.integer(), fc.double()), metadata: fc.anything({ maxDepth: 1 }), refs: fc.oneof(fc.array(fc.string()), fc.string()) }), { maxLength: 3 }).map((nodes) => Buffer.concat([header, Buffer.from(JSON.stringify(nodes))])),
      );
      const field = fc.oneof(fc.string({ maxLength: 24 }), fc.integer().map(String), fc.constantFrom('1e300', '-5', '9007199254740993', ''));
      await fc.assert(
        fc.asyncProperty(fc.record({ v: field, x: field, t: field, d: chunk }), fc.record({ v: field, x: field, n: field }), fc.array(chunk, { maxLength: 4 }), async (entry, meta, chunks) => {
          await direct.del('cc:fuzz:e:fz', 'cc:fuzz:s:{fz}', 'cc:fuzz:s:{fz}:c');
          await direct.hset('cc:fuzz:e:fz', entry);
          await direct.hset('cc:fuzz:s:{fz}', meta);
          if (chunks.length > 0) await direct.rpush('cc:fuzz:s:{fz}:c', ...chunks);
          for (const call of [() => sc.client.get({ key: 'fz' }), () => sc.client.getSessionNodes({ sessionId: 'fz' }), () => sc.client.buildContext({ sessionId: 'fz', includeRefs: true })]) {
            try {
              await call();
            } catch (error) {
              if ([status.INTERNAL, status.UNKNOWN].includes((error as ServiceError).code)) return false;
            }
          }
          return true;
        }),
        { numRuns: 150, seed: 3 },
      );
    } finally {
      direct.disconnect();
    }
  }, 60_000);
});
