import { status } from '@grpc/grpc-js';
import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startRedis, type TestRedis } from '../helpers/redis';
import { closeAllSidecars, startSidecar, type TestSidecar } from '../helpers/sidecar';
import { waitFor } from '../helpers/wait';
import { failure, HoldRecorder, isFree, ms } from './lock-helpers';

/** HoldLock: a lock that lives exactly as long as its stream. */
describe('HoldLock', () => {
  let redis: TestRedis;
  let a: TestSidecar;
  let b: TestSidecar;
  const env = () => ({ REDIS_URL: redis.url, CONTEXT_CACHE_NAMESPACE: 'hold' });

  beforeAll(async () => {
    redis = await startRedis();
    a = await startSidecar(env());
    b = await startSidecar(env());
    await waitFor(() => a.sidecar.locks.ready && b.sidecar.locks.ready, 'both sidecars connected to Redis');
  });
  afterAll(async () => {
    await closeAllSidecars();
    await redis.stop();
  });

  it('holds the lock while the stream is open, for several TTL periods, extending it in the background', async () => {
    const ttlMs = 300;
    const hold = new HoldRecorder(a.client.holdLock({ resource: 'kept', ttl: ms(ttlMs) }));
    await waitFor(() => hold.first, 'the first message');
    const grantedAt = Date.now();
    expect(hold.first!.lost).toBe(false);
    expect(hold.first!.lock!.fencingToken).toBeGreaterThanOrEqual(1);
    expect((await failure(b.client.acquireLock({ resource: 'kept', ttl: ms(1000) }))).code).toBe(status.ABORTED);

    // An extension about every third of the TTL: nine of them span three TTL periods.
    await waitFor(() => hold.messages.length >= 10, 'nine extensions', 5000);
    expect(Date.now() - grantedAt).toBeGreaterThan(2.5 * ttlMs);
    const expiries = hold.messages.map((m) => m.lock!.expiresAt!.getTime());
    for (let i = 1; i < expiries.length; i++) expect(expiries[i]).toBeGreaterThan(expiries[i - 1]!);
    // Same holding throughout: same token and fencing token.
    expect(new Set(hold.messages.map((m) => m.lock!.token)).size).toBe(1);
    expect(new Set(hold.messages.map((m) => m.lock!.fencingToken)).size).toBe(1);
    expect(hold.messages.every((m) => !m.lost)).toBe(true);
    expect(await isFree(b.client, 'kept')).toBe(false);
    expect((await a.client.getStats()).locks!.held).toBeGreaterThanOrEqual(1);
    hold.cancel();
  });

  it('releases the lock soon after the client cancels, without waiting for the TTL', async () => {
    const hold = new HoldRecorder(a.client.holdLock({ resource: 'cancelled', ttl: ms(30_000) }));
    await waitFor(() => hold.first, 'the first message');
    expect(await isFree(b.client, 'cancelled')).toBe(false);
    const cancelledAt = Date.now();
    hold.cancel();
    const next = await waitFor(() => b.client.acquireLock({ resource: 'cancelled', ttl: ms(1000), waitTimeout: ms(100) }), 'the lock after cancel', 5000);
    expect(Date.now() - cancelledAt).toBeLessThan(2000);
    expect(next.fencingToken).toBeGreaterThan(hold.first!.lock!.fencingToken);
    await b.client.releaseLock({ resource: 'cancelled', token: next.token });
  });

  it('releases the lock when the holding process dies (its connection drops), without waiting for the TTL', async () => {
    // A separate client process holding the lock through a plain grpc-js client, then SIGKILLed.
    const script = `
      const grpc = require('@grpc/grpc-js');
      const loader = require('@grpc/proto-loader');
      const def = loader.loadSync('contextcache/v1/context_cache.proto', { includeDirs: ['proto'], longs: Number });
      const { ContextCache } = grpc.loadPackageDefinition(def).contextcache.v1;
      const client = new ContextCache(process.argv[1], grpc.credentials.createInsecure());
      const call = client.holdLock({ resource: 'crashed', ttl: { seconds: 30 } });
      call.on('data', (m) => console.log('HELD ' + m.lock.fencingToken));
      call.on('error', (e) => console.log('ERROR ' + e.code));
    `;
    const child = spawn(process.execPath, ['-e', script, a.address], { cwd: join(__dirname, '..', '..'), stdio: ['ignore', 'pipe', 'inherit'] });
    const exited = new Promise((resolve) => child.once('exit', resolve));
    let output = '';
    child.stdout!.on('data', (chunk: Buffer) => (output += chunk.toString()));
    try {
      await waitFor(() => /HELD \d+/.test(output), 'the child process to hold the lock', 10_000);
      expect(await isFree(b.client, 'crashed')).toBe(false);
      const killedAt = Date.now();
      child.kill('SIGKILL');
      await exited;
      await waitFor(() => isFree(b.client, 'crashed'), 'the lock of the dead process to be released', 5000);
      expect(Date.now() - killedAt).toBeLessThan(3000);
    } finally {
      child.kill('SIGKILL');
      await exited;
    }
  });

  it('waits for a busy lock up to wait_timeout, then ends with ABORTED; gets it when it frees up', async () => {
    const holder = await b.client.acquireLock({ resource: 'contended', ttl: ms(10_000) });
    const started = Date.now();
    const refused = new HoldRecorder(a.client.holdLock({ resource: 'contended', waitTimeout: ms(300) }));
    await waitFor(() => refused.status, 'the refused stream to end', 3000);
    expect(refused.status!.code).toBe(status.ABORTED);
    expect(refused.messages).toEqual([]);
    expect(Date.now() - started).toBeGreaterThanOrEqual(290);

    const waiting = new HoldRecorder(a.client.holdLock({ resource: 'contended', waitTimeout: ms(5000) }));
    await b.client.releaseLock({ resource: 'contended', token: holder.token });
    await waitFor(() => waiting.first, 'the lock after the release', 3000);
    expect(waiting.first!.lock!.fencingToken).toBeGreaterThan(holder.fencingToken);
    waiting.cancel();
  });

  it('when the lock is taken away, sends lost=true and ends with FAILED_PRECONDITION', async () => {
    const hold = new HoldRecorder(a.client.holdLock({ resource: 'stolen', ttl: ms(300) }));
    await waitFor(() => hold.first, 'the first message');
    // Somebody deletes the lock key behind the holder's back (an operator, a FLUSHDB, a failover).
    expect(await redis.command('DEL', 'cc:hold:lock:stolen')).toBe(1);
    await waitFor(() => hold.status, 'the stream to end', 3000);
    expect(hold.status!.code).toBe(status.FAILED_PRECONDITION);
    expect(hold.status!.details).toMatch(/does not hold the lock on "stolen"/);
    expect(hold.last!.lost).toBe(true);
    expect(hold.last!.lock!.token).toBe(hold.first!.lock!.token);
  });

  it('validates like AcquireLock (ttl optional here, 100 ms to 1 h)', async () => {
    const tooShort = new HoldRecorder(a.client.holdLock({ resource: 'v', ttl: ms(50) }));
    const noResource = new HoldRecorder(a.client.holdLock({ resource: '' }));
    await waitFor(() => tooShort.status && noResource.status, 'both streams to end');
    expect(tooShort.status!.code).toBe(status.INVALID_ARGUMENT);
    expect(tooShort.status!.details).toMatch(/^ttl is 50 ms/);
    expect(noResource.status!.code).toBe(status.INVALID_ARGUMENT);
    expect(noResource.status!.details).toMatch(/^resource is empty/);
  });

  it('a sidecar that shuts down ends its HoldLock streams with UNAVAILABLE and releases their locks', async () => {
    const c = await startSidecar(env());
    await waitFor(() => c.sidecar.locks.ready, 'the third sidecar connected to Redis');
    const hold = new HoldRecorder(c.client.holdLock({ resource: 'shutdown', ttl: ms(30_000) }));
    await waitFor(() => hold.first, 'the first message');
    expect(await isFree(b.client, 'shutdown')).toBe(false);
    const closing = c.close();
    await waitFor(() => hold.status, 'the stream to end', 5000);
    expect(hold.status!.code).toBe(status.UNAVAILABLE);
    await closing;
    // Released by the shutdown itself, long before the 30 s TTL.
    expect(await isFree(b.client, 'shutdown')).toBe(true);
  });
});
