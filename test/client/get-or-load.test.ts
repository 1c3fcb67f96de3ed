import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { InterceptingCall } from '@grpc/grpc-js';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ContextCacheClient, Status } from '../../src/client';
import { startProxy } from '../helpers/proxy';
import { sidecarsOnRedis } from '../helpers/fixtures';
import { startSidecar, type TestSidecar } from '../helpers/sidecar';
import { rejectionOf } from '../helpers/wait';

const MiB = 1024 * 1024;
const slowDatabase = <T>(value: T) => new Promise<T>((resolve) => setTimeout(() => resolve(value), 150));

describe('get-or-load across sidecars', () => {
  const fixture = sidecarsOnRedis(2, { CONTEXT_CACHE_NAMESPACE: 'load' });
  let a: TestSidecar;
  let b: TestSidecar;
  const clients: ContextCacheClient[] = [];
  const client = (address: string, near = true) => {
    const made = new ContextCacheClient(address, near ? { nearCache: { maxBytes: 8 * MiB } } : {});
    clients.push(made);
    return made;
  };
  beforeAll(() => void ([a, b] = fixture.sidecars));
  afterAll(() => clients.forEach((made) => made.close()));

  it('runs one loader for 100 concurrent callers on four clients of two sidecars; every caller gets its value', async () => {
    const callers = [client(a.address), client(a.address, false), client(b.address), client(b.address, false)];
    await Promise.all(callers.map((made) => made.ready()));
    let loads = 0;
    const loader = async () => {
      loads++;
      return slowDatabase('from the database');
    };
    const values = await Promise.all(Array.from({ length: 100 }, (_, i) => callers[i % 4]!.getOrLoad('hot', loader, { ttlMs: 60_000, tags: ['hot'] })));
    expect(loads).toBe(1);
    expect(values.every((value) => value.toString() === 'from the database')).toBe(true);
    expect(callers.reduce((sum, made) => sum + made.loadStats().filled, 0)).toBe(1);
    // The fill is cached for everyone, with its tag.
    expect((await b.client.get({ key: 'hot' })).info?.tags).toEqual(['hot']);
    expect(await callers[3]!.getOrLoad('hot', loader)).toEqual(Buffer.from('from the database'));
    expect(loads).toBe(1);
  });

  it('a fill refused because the key was written meanwhile returns the loaded value and leaves the newer one cached', async () => {
    const loading = client(a.address);
    const value = await loading.getOrLoad('raced', async () => {
      await b.client.set({ key: 'raced', value: Buffer.from('newer') });
      return 'loaded before the write';
    });
    expect(value.toString()).toBe('loaded before the write');
    expect(loading.loadStats().staleFills).toBe(1);
    expect(Buffer.from((await a.client.get({ key: 'raced' })).value).toString()).toBe('newer');
  });

  it('with staleRetries, a session fill refused because of an append meanwhile is loaded and filled again, with the append', async () => {
    const loading = client(a.address, false);
    const database = [{ id: 'w1', role: 2, content: 'question' }];
    let loads = 0;
    const nodes = await loading.getOrLoadSession('warm-s', async () => {
      loads++;
      const loaded = [...database];
      if (loads === 1) {
        // Another pod commits an answer and writes it through while this load is on its way: the first fill is refused.
        database.push({ id: 'w2', parentId: 'w1', role: 3, content: 'answer' } as (typeof database)[number]);
        await b.client.appendNode({ node: { ...database[1]!, sessionId: 'warm-s' } });
      }
      return loaded;
    }, { staleRetries: 1 });
    expect(loads).toBe(2);
    expect(nodes.map((node) => node.id)).toEqual(['w1', 'w2']);
    expect(loading.loadStats()).toMatchObject({ staleFills: 1, filled: 1 });
    expect((await b.client.getSessionNodes({ sessionId: 'warm-s' })).nodes.map((node) => node.id)).toEqual(['w1', 'w2']);
    // Without retries the refused fill's value is returned as it was, uncached.
    const once = client(a.address, false);
    const first = await once.getOrLoadSession('warm-once', async () => {
      await b.client.appendNode({ node: { id: 'x2', sessionId: 'warm-once', parentId: 'x1', role: 3, content: 'answer' } });
      return [{ id: 'x1', role: 2, content: 'question' }];
    });
    expect(first.map((node) => node.id)).toEqual(['x1']);
    expect(once.loadStats()).toMatchObject({ staleFills: 1, filled: 0 });
    expect((await b.client.getSessionNodes({ sessionId: 'warm-once' })).found).toBe(false);
  });

  it('a loader that fails rejects its callers with its own error', async () => {
    const loading = client(b.address);
    const error = await rejectionOf(loading.getOrLoad('failing', async () => Promise.reject(new Error('database down')), { leaseTtlMs: 200 }));
    expect(error.message).toBe('database down');
  });

  it('loads a session once for 40 callers across both sidecars', async () => {
    const callers = [client(a.address), client(b.address)];
    let loads = 0;
    const nodes = await Promise.all(
      Array.from({ length: 40 }, (_, i) =>
        callers[i % 2]!.getOrLoadSession('load-s', async () => {
          loads++;
          return slowDatabase([
            { id: 'm1', role: 2, content: 'question' },
            { id: 'm2', parentId: 'm1', role: 3, content: 'answer' },
          ]);
        }),
      ),
    );
    expect(loads).toBe(1);
    expect(nodes.every((list) => list.map((node) => [node.id, node.sessionId]).join() === 'm1,load-s,m2,load-s')).toBe(true);
  });

  it('buildContext with loadSession fills the session and the sessions its references live in, then builds again', async () => {
    const app = client(b.address);
    const database: Record<string, { id: string; shortId?: string; parentId?: string; role: number; content: string; refs?: string[] }[]> = {
      'ctx-main': [
        { id: 'q1', shortId: 'q1aaa', role: 2, content: 'see r1bbb', refs: ['r1bbb'] },
        { id: 'q2', parentId: 'q1', role: 3, content: 'ok' },
      ],
      'ctx-ref': [{ id: 'r1', shortId: 'r1bbb', role: 2, content: 'the referenced fact' }],
    };
    // The referenced session was cached once, so the sidecar's index knows which session r1bbb lives in.
    await a.client.putSessionNodes({ sessionId: 'ctx-ref', nodes: database['ctx-ref'] });
    await a.client.invalidateSession({ sessionId: 'ctx-ref' });
    const loaded: string[] = [];
    const built = await app.buildContext(
      { sessionId: 'ctx-main', includeRefs: true },
      {
        loadSession: async (sessionId) => {
          loaded.push(sessionId);
          return database[sessionId] ?? [];
        },
      },
    );
    expect(built.sessionFound).toBe(true);
    expect(loaded.sort()).toEqual(['ctx-main', 'ctx-ref']);
    expect(built.missingSessionIds).toEqual([]);
    expect(built.nodes.map((n) => n.node!.id)).toEqual(['r1', 'q1', 'q2']);
    // Everything is cached now: no loader runs the second time.
    await app.buildContext({ sessionId: 'ctx-main', includeRefs: true }, { loadSession: async () => Promise.reject(new Error('not called')) });
  });
});

describe('a client people can ship', () => {
  const fixture = sidecarsOnRedis(1, { CONTEXT_CACHE_NAMESPACE: 'ship' });

  it('retries idempotent calls on UNAVAILABLE, with backoff, and never writes, fills or lease grants', async () => {
    let attempts = 0;
    const counting = new ContextCacheClient('127.0.0.1:1', {
      retry: { attempts: 3, initialBackoffMs: 5, maxBackoffMs: 20 },
      interceptors: [
        (options, next) => {
          attempts++;
          return new InterceptingCall(next(options));
        },
      ],
    });
    try {
      const read = await rejectionOf(counting.get({ key: 'k' }));
      expect(read).toMatchObject({ code: Status.UNAVAILABLE, codeName: 'UNAVAILABLE', method: 'get' });
      expect(attempts).toBe(3);
      attempts = 0;
      await rejectionOf(counting.set({ key: 'k', value: Buffer.from('v') }));
      expect(attempts).toBe(1);
      attempts = 0;
      await rejectionOf(counting.get({ key: 'k', leaseOnMiss: true }));
      expect(attempts).toBe(1);
      attempts = 0;
      await rejectionOf(counting.delete({ keys: ['k'] }));
      expect(attempts).toBe(3);
    } finally {
      counting.close();
    }
  });

  it('gives every call a deadline: a sidecar that never answers fails the call with DEADLINE_EXCEEDED', async () => {
    const address = fixture.sidecars[0]!.address;
    const proxy = await startProxy(Number(address.slice(address.lastIndexOf(':') + 1)));
    proxy.cut('blackhole');
    const hung = new ContextCacheClient(`127.0.0.1:${proxy.port}`, { deadlineMs: 300 });
    try {
      const started = Date.now();
      const error = await rejectionOf(hung.getStats());
      expect(error).toMatchObject({ code: Status.DEADLINE_EXCEEDED });
      expect(Date.now() - started).toBeLessThan(3000);
    } finally {
      hung.close();
      await proxy.close();
    }
  });

  it('rejects with a typed error naming the method, the status and the sidecar\'s sentence', async () => {
    const error = await rejectionOf(fixture.sidecars[0]!.client.set({ key: '', value: Buffer.from('v') }));
    expect(error).toMatchObject({ name: 'ContextCacheError', code: Status.INVALID_ARGUMENT, codeName: 'INVALID_ARGUMENT', method: 'set', details: 'key is empty; keys are 1 to 1024 bytes of UTF-8' });
    expect(error.message).toBe('set failed with INVALID_ARGUMENT: key is empty; keys are 1 to 1024 bytes of UTF-8');
  });

  it('dials a sidecar on a Unix socket, near cache included', async () => {
    const path = join(mkdtempSync(join(tmpdir(), 'cc-client-')), 'sidecar.sock');
    const sc = await startSidecar({ CONTEXT_CACHE_LISTEN: `unix:${path}` });
    const overSocket = new ContextCacheClient(`unix:${path}`, { nearCache: { maxBytes: 1 << 20 } });
    try {
      await overSocket.ready();
      await overSocket.set({ key: 'u', value: Buffer.from('over a socket') });
      const read = await overSocket.get({ key: 'u' });
      expect(read.fromNearCache).toBe(true);
      expect(read.value.toString()).toBe('over a socket');
    } finally {
      overSocket.close();
      await sc.close();
    }
  });

  it('refuses an address or option it cannot use, with a sentence', () => {
    expect(() => new ContextCacheClient('')).toThrow(/address is empty/);
    expect(() => new ContextCacheClient('http://127.0.0.1:50051')).toThrow(/is not one the client dials/);
    expect(() => new ContextCacheClient('127.0.0.1:50051', { deadlineMs: -1 })).toThrow(/deadlineMs is -1/);
    expect(() => new ContextCacheClient('127.0.0.1:50051', { retry: { attempts: 0 } })).toThrow(/retry.attempts is 0/);
  });
});
