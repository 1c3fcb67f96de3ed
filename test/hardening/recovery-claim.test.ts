import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../../src/config';
import { createLogger } from '../../src/log';
import { linkOptions, RedisLink } from '../../src/redis/connection';
import { KeySpace } from '../../src/redis/keys';
import { NamespaceRecovery, type RecoveryTiming } from '../../src/redis/recovery';
import { startRedis, type TestRedis } from '../helpers/redis';
import { waitFor } from '../helpers/wait';

/**
 * The claim that makes one sidecar flush the namespace after Redis lost data
 * or a master was replaced (src/redis/recovery.ts), on a real Redis, with
 * the failures a failover brings: a claimer whose reply was lost, a claimer
 * that fails or dies in the middle of its flush. In every case exactly the
 * flushes needed happen, and every sidecar ends up knowing it is done.
 */
const timing: RecoveryTiming = { claimMs: 400, doneMs: 60_000, retryBaseMs: 20, retryMaxMs: 100, maxAttempts: 200 };
const log = createLogger('silent');

let redis: TestRedis;
const links: RedisLink[] = [];
let serial = 0;

beforeAll(async () => {
  redis = await startRedis();
});

afterAll(async () => {
  await Promise.all(links.map((link) => link.close()));
  await redis?.stop();
});

async function link(): Promise<RedisLink> {
  const config = loadConfig({ REDIS_URL: redis.url, CONTEXT_CACHE_NAMESPACE: 'rc' });
  const created = new RedisLink('commands', config.redis!, linkOptions(config), log);
  links.push(created);
  created.start();
  await waitFor(() => created.connected, 'the link to connect');
  return created;
}

const keys = new KeySpace('rc');
const identity = () => `state-${++serial}`;

describe('the recovery claim', () => {
  it('makes exactly one of many sidecars flush, and the others learn it is done', async () => {
    const shared = await link();
    let flushes = 0;
    const recoveries = Array.from({ length: 5 }, (_, index) =>
      new NamespaceRecovery(shared, keys, `sidecar-${index}`, async () => {
        flushes++;
        await new Promise((resolve) => setTimeout(resolve, 50));
      }, log, timing),
    );
    const id = identity();
    const outcomes = await Promise.all(recoveries.map((recovery) => recovery.recover(id)));
    expect(outcomes.filter((outcome) => outcome === 'flushed')).toHaveLength(1);
    expect(outcomes.filter((outcome) => outcome === 'done-elsewhere')).toHaveLength(4);
    expect(flushes).toBe(1);
    expect(await redis.command('GET', keys.recovery(id))).toEqual(Buffer.from('done'));
    // Seen again later (another check of the same state of Redis): nothing more to do.
    expect(await recoveries[0]!.recover(id)).toBe('done-elsewhere');
    expect(flushes).toBe(1);
  });

  it('flushes when its claim went through but the reply was lost (it finds its own ID)', async () => {
    const id = identity();
    // What a lost reply leaves: the claim taken in Redis, the claimer unaware of it.
    await redis.command('SET', keys.recovery(id), 'sidecar-a', 'PX', 60_000);
    let flushes = 0;
    const a = new NamespaceRecovery(await link(), keys, 'sidecar-a', async () => void flushes++, log, timing);
    const b = new NamespaceRecovery(await link(), keys, 'sidecar-b', async () => void flushes++, log, timing);
    const [outcomeA, outcomeB] = await Promise.all([a.recover(id), b.recover(id)]);
    expect(outcomeA).toBe('flushed');
    expect(outcomeB).toBe('done-elsewhere');
    expect(flushes).toBe(1);
  });

  it('retries after a failed flush, and another sidecar takes over when the claimer dies mid-flush', async () => {
    const id = identity();
    let failures = 2;
    const flushedBy: string[] = [];
    const failing = new NamespaceRecovery(await link(), keys, 'sidecar-failing', async () => {
      if (failures-- > 0) throw new Error('injected: the promoted replica is still settling');
      flushedBy.push('sidecar-failing');
    }, log, timing);
    expect(await failing.recover(id)).toBe('flushed');
    expect(failing.counts.failed).toBe(2);
    expect(flushedBy).toEqual(['sidecar-failing']);

    const id2 = identity();
    let settledDying = false;
    const dying = new NamespaceRecovery(await link(), keys, 'sidecar-dying', () => new Promise<void>(() => undefined), log, timing);
    // It claims, then hangs for good in its flush (as a sidecar killed mid-flush): its claim is never refreshed.
    void dying.recover(id2, () => (settledDying = true));
    await waitFor(async () => (await redis.command('GET', keys.recovery(id2)))?.toString() === 'sidecar-dying', 'the dying sidecar to claim');
    expect(settledDying).toBe(false);
    let settledSurvivor = false;
    const survivor = new NamespaceRecovery(await link(), keys, 'sidecar-survivor', async () => void flushedBy.push('sidecar-survivor'), log, timing);
    const started = Date.now();
    expect(await survivor.recover(id2, () => (settledSurvivor = true))).toBe('flushed');
    // It dropped its own L1 at once (after its first look), not after the claim lapsed.
    expect(settledSurvivor).toBe(true);
    expect(Date.now() - started).toBeGreaterThanOrEqual(timing.claimMs / 2);
    expect(flushedBy).toEqual(['sidecar-failing', 'sidecar-survivor']);
    dying.close();
  });

  it('keeps a long flush claimed by refreshing it page by page', async () => {
    const id = identity();
    let flushes = 0;
    const slow = new NamespaceRecovery(await link(), keys, 'sidecar-slow', async (refresh) => {
      flushes++;
      for (let page = 0; page < 6; page++) {
        await new Promise((resolve) => setTimeout(resolve, timing.claimMs / 3));
        await refresh();
      }
    }, log, timing);
    const other = new NamespaceRecovery(await link(), keys, 'sidecar-other', async () => void flushes++, log, timing);
    const slowDone = slow.recover(id);
    await waitFor(async () => (await redis.command('GET', keys.recovery(id)))?.toString() === 'sidecar-slow', 'the slow sidecar to claim');
    // The flush lasts several claim periods; the other sidecar keeps looking and never takes over.
    expect(await other.recover(id)).toBe('done-elsewhere');
    expect(await slowDone).toBe('flushed');
    expect(flushes).toBe(1);
  });
});
