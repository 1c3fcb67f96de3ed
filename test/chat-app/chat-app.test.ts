import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { ContextCacheClient } from '../../src/client';
import { ChatApp, connectSidecar } from '../../examples/chat-app/app';
import { AppThread } from '../../examples/chat-app/app-thread';
import { createChecker, faultsOf, GroundTruth } from '../../examples/chat-app/checker';
import { CONTEXT_READS, CountingPool, freshSchemaName, sumOf } from '../../examples/chat-app/db';
import { runWorkload, seedHistory, type WorkloadOptions } from '../../examples/chat-app/load';
import { ChatStore } from '../../examples/chat-app/store';
import { freePort, startRedis, type TestRedis } from '../helpers/redis';
import { startSidecar, type TestSidecar } from '../helpers/sidecar';

/**
 * The chat app of examples/chat-app on the real PostgreSQL of this machine
 * (DATABASE_URL overrides) and two real sidecars on a real Redis, at small
 * scale: every turn's context is checked against what was written, in both
 * modes, across a Redis restart and a sidecar restart.
 */

/** A sidecar on a fixed port, so that a restarted one is found where its clients look. */
class RestartableSidecar {
  private current: TestSidecar | undefined;
  constructor(
    readonly address: string,
    private readonly env: Record<string, string>,
  ) {}
  async start(): Promise<void> {
    this.current = await startSidecar({ ...this.env, CONTEXT_CACHE_LISTEN: this.address });
  }
  async restart(): Promise<void> {
    await this.current?.close();
    await this.start();
  }
  async close(): Promise<void> {
    await this.current?.close();
    this.current = undefined;
  }
}

const MAX_CHARS = 6_000;
const workload = (seed: number, durationMs: number): WorkloadOptions => ({
  users: 50,
  durationMs,
  maxTurnsPerUser: 1_000,
  thinkMs: [20, 150],
  seed,
  maxChars: MAX_CHARS,
  history: { sessionsPerUser: 2, messages: [4, 30] },
});

let redis: TestRedis;
const sidecars: RestartableSidecar[] = [];
const clients: ContextCacheClient[] = [];
const pools: CountingPool[] = [];
const stores: ChatStore[] = [];

async function freshStore(): Promise<ChatStore> {
  const pool = new CountingPool({ schema: freshSchemaName('chat_test'), maxConnections: 6 });
  pools.push(pool);
  const store = new ChatStore(pool);
  stores.push(store);
  await store.createSchema();
  return store;
}

beforeAll(async () => {
  redis = await startRedis();
  for (let i = 0; i < 2; i++) {
    const sidecar = new RestartableSidecar(`127.0.0.1:${await freePort()}`, { REDIS_URL: redis.url });
    await sidecar.start();
    sidecars.push(sidecar);
    clients.push(connectSidecar(sidecar.address));
  }
});

afterAll(async () => {
  clients.forEach((client) => client.close());
  for (const sidecar of sidecars) await sidecar.close();
  for (const store of stores) await store.dropSchema().catch(() => undefined);
  for (const pool of pools) await pool.close();
  await redis?.stop();
});

describe('chat app on PostgreSQL', () => {
  it('builds every context of 50 users complete and in order, straight from PostgreSQL and through two sidecars, and the sidecars take the reads off PostgreSQL', async () => {
    const runMode = async (mode: 'direct' | 'sidecar') => {
      const store = await freshStore();
      const truth = new GroundTruth();
      const options = workload(1, 3_000);
      const sessionsOf = await seedHistory(store, truth, options);
      const apps = mode === 'direct' ? [new ChatApp({ store, mode, maxChars: MAX_CHARS })] : clients.map((cache) => new ChatApp({ store, mode, cache, maxChars: MAX_CHARS }));
      const run = await runWorkload({ ...options, apps, truth, sessionsOf });
      apps.forEach((app) => app.close());
      return { run, readsPerTurn: sumOf(store.db.snapshot(), CONTEXT_READS) / run.samples.length };
    };
    const direct = await runMode('direct');
    const cached = await runMode('sidecar');
    for (const { run } of [direct, cached]) {
      expect(run.firstErrors).toEqual([]);
      expect(run.checker.failures).toEqual([]);
      expect(faultsOf(run.checker.totals)).toBe(0);
      // Enough checked turns even on a loaded machine (the run is bounded in time: ~300 turns on a quiet one).
      expect(run.checker.totals.turns).toBeGreaterThan(10);
      // Every context holds at least the message of its turn.
      expect(run.checker.totals.messagesExpected).toBeGreaterThanOrEqual(run.checker.totals.turns);
    }
    expect(cached.run.samples.filter((sample) => sample.hit).length).toBeGreaterThan(cached.run.samples.length / 3);
    expect(cached.readsPerTurn).toBeLessThan(direct.readsPerTurn);
  });

  it('keeps every context complete and every second device in sync across a Redis restart and a sidecar restart', async () => {
    const store = await freshStore();
    const truth = new GroundTruth();
    const apps = clients.map((cache) => new ChatApp({ store, mode: 'sidecar', cache, maxChars: MAX_CHARS }));
    const options = workload(2, 6_000);
    const sessionsOf = await seedHistory(store, truth, options);
    const restarts: string[] = [];
    const run = await runWorkload({
      ...options,
      apps,
      truth,
      sessionsOf,
      deviceClients: clients,
      events: [
        {
          at: 0.25,
          run: async () => {
            await redis.restart();
            restarts.push('redis');
          },
        },
        {
          at: 0.6,
          run: async () => {
            await sidecars[1]!.restart();
            restarts.push('sidecar');
          },
        },
      ],
    });
    apps.forEach((app) => app.close());

    expect(run.firstErrors).toEqual([]);
    expect(run.checker.failures).toEqual([]);
    expect(faultsOf(run.checker.totals)).toBe(0);
    expect(restarts).toEqual(['redis', 'sidecar']);
    expect(run.checker.totals.turns).toBeGreaterThan(50);
    // The second devices saw every message written to the conversations they followed, most of them live.
    expect(run.sync!.messages).toBeGreaterThan(100);
    // Across the restarts too: a stream that reconnected to a sidecar before its first subscription is sent a Resync when it turns coherent.
    expect(run.sync!.missing).toBe(0);
    expect(run.sync!.live).toBeGreaterThan(run.sync!.messages / 2);
    expect(run.sync!.live + run.sync!.recovered + run.sync!.missing).toBe(run.sync!.messages);
  });

  it('sees a message the cache missed (a failed write-through) as a gap in the path and builds the context whole', async () => {
    const store = await freshStore();
    const app = new ChatApp({ store, mode: 'sidecar', cache: clients[0]!, maxChars: 0 });
    const sessionId = await app.startConversation('user-gap');
    const first = await app.postMessage({ sessionId, parentId: '', role: 'user', content: 'first' });
    // Written to PostgreSQL only, as when the sidecar did not answer the AppendNode and nobody repaired it.
    const missed = await store.insertMessage({ sessionId, parentId: first.id, role: 'assistant', content: 'the answer the cache never heard of' });
    const next = await app.postMessage({ sessionId, parentId: missed.id, role: 'user', content: 'and then?' });

    const context = await app.buildContext(sessionId, next.id);
    expect(context.conversation.map((message) => message.content)).toEqual(['first', 'the answer the cache never heard of', 'and then?']);
    expect(app.stats().repairs).toBe(1);
    // Repaired in the cache too, in the background: the next build is a hit.
    expect(await app.fillsSettled()).toBe(true);
    const again = await app.buildContext(sessionId, next.id);
    expect(again.hit).toBe(true);
    expect(again.conversation).toHaveLength(3);
    app.close();
  });

  it('runs the app in a worker thread as in this one: onCommitted runs in the calling thread before the write-through, errors come back as errors, and its pool, near cache and thread are read by request', async () => {
    const store = await freshStore();
    const app = new AppThread({ mode: 'sidecar', schema: store.db.schema, maxConnections: 2, maxChars: 0, sidecarAddress: sidecars[0]!.address });
    try {
      await app.ready;
      const sessionId = await app.startConversation('user-thread');
      const seen: string[] = [];
      let started!: () => void;
      const watching = new Promise<void>((resolve) => (started = resolve));
      const watch = clients[1]!.watchResumable({ sessionIds: [sessionId] }, (message) => {
        if (message.event?.$case === 'started') started();
        if (message.event?.$case === 'nodeAppended') seen.push('appended');
      });
      try {
        await watching;
        const hook = async () => {
          seen.push('committed');
          // Long enough for an append made meanwhile to reach the watch: none must be.
          await new Promise((resolve) => setTimeout(resolve, 200));
          seen.push('hook done');
        };
        const message = await app.postMessage({ sessionId, parentId: '', role: 'user', content: 'from the calling thread' }, { onCommitted: hook });
        await expect.poll(() => seen).toEqual(['committed', 'hook done', 'appended']);

        const context = await app.buildContext(sessionId, message.id);
        expect(context.conversation.map((m) => m.content)).toEqual(['from the calling thread']);
        expect(context.conversation[0]!.createdAt).toBeInstanceOf(Date);
        expect(context.buildMs).toBeGreaterThan(0);
      } finally {
        watch.close();
      }
      await expect(app.postMessage({ sessionId: 'no-such-session', parentId: '', role: 'user', content: 'lost' })).rejects.toThrow('session no-such-session does not exist');
      expect((await app.queryCounts()).count.write).toBe(3);
      expect((await app.stats()).contexts).toBe(1);
      expect((await app.nearCacheStats())?.maxBytes).toBeGreaterThan(0);
      expect((await app.sidecarStats())?.sidecarId).not.toBe('');
      expect((await app.threadLoad()).heapUsedBytes).toBeGreaterThan(0);
    } finally {
      await app.close();
    }
    await expect(app.stats()).rejects.toThrow('closed');
  });

  it('counts a context that lacks a message, has one out of order, or one from another branch', () => {
    const truth = new GroundTruth();
    const at = (n: number) => new Date(1_000 + n);
    const message = (id: string, parentId: string, depth: number) => ({ id, shortId: `s${id}`, sessionId: 's', parentId, depth, role: 'user' as const, content: `c${id}`, refs: [], createdAt: at(depth) });
    const [a, b, c, other] = [message('a', '', 0), message('b', 'a', 1), message('c', 'b', 2), message('x', 'a', 1)];
    [a, b, c, other].forEach((m) => truth.record(m));
    const checker = createChecker();
    const context = (conversation: (typeof a)[]) => ({ references: [], conversation, droppedNodes: 0, totalChars: 0 });
    expect(checker.check(truth, 'c', 0, context([a, b, c]), 'whole')).toBe(0);
    expect(checker.check(truth, 'c', 0, context([a, c]), 'gap')).toBe(1);
    expect(checker.check(truth, 'c', 0, context([b, a, c]), 'swapped')).toBe(1);
    expect(checker.check(truth, 'c', 0, context([a, other, b, c]), 'branch')).toBe(1);
    expect(checker.check(truth, 'c', 0, context([a, b, { ...c, content: 'stale' }]), 'content')).toBe(1);
    expect(checker.totals).toMatchObject({ turns: 5, missingMessages: 1, outOfOrder: 1, unexpected: 1, wrongContent: 1 });
  });
});

