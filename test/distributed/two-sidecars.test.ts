import { beforeAll, describe, expect, it } from 'vitest';
import { Source, WriteScope, KeyChange, type WatchResponse } from '../../src/client';
import { sidecarsOnRedis } from '../helpers/fixtures';
import { type TestSidecar } from '../helpers/sidecar';

async function nextEvent(iterator: AsyncIterator<WatchResponse>, accept: (r: WatchResponse) => boolean): Promise<WatchResponse> {
  for (;;) {
    const { value, done } = await iterator.next();
    if (done) throw new Error('watch stream ended');
    if (accept(value)) return value;
  }
}

describe('two sidecars on one Redis', () => {
  const fixture = sidecarsOnRedis(2, { CONTEXT_CACHE_NAMESPACE: 'two' });
  let a: TestSidecar;
  let b: TestSidecar;
  beforeAll(() => void ([a, b] = fixture.sidecars));

  it('a write on A is read by B from L2, then from L1', async () => {
    const set = await a.client.set({ key: 'k1', value: Buffer.from('v1') });
    expect(set.scope).toBe(WriteScope.WRITE_SCOPE_SHARED);
    const first = await b.client.get({ key: 'k1' });
    expect(first.found).toBe(true);
    expect(first.info?.source).toBe(Source.SOURCE_L2);
    expect(first.info?.version).toBe(set.info?.version);
    const second = await b.client.get({ key: 'k1' });
    expect(second.info?.source).toBe(Source.SOURCE_L1);
  });

  it('a write on A drops the copy in B and reaches a watcher on B', async () => {
    await a.client.set({ key: 'k2', value: Buffer.from('old') });
    await b.client.get({ key: 'k2' });
    expect((await b.client.get({ key: 'k2' })).info?.source).toBe(Source.SOURCE_L1);

    const watch = b.client.watch({ keyPrefixes: ['k2'] });
    const events = watch[Symbol.asyncIterator]();
    const started = await nextEvent(events, () => true);
    expect(started.event?.$case).toBe('started');

    const written = await a.client.set({ key: 'k2', value: Buffer.from('new') });
    const event = await nextEvent(events, (r) => r.event?.$case === 'keyInvalidated');
    expect(event.event?.$case === 'keyInvalidated' && event.event.value).toMatchObject({ key: 'k2', change: KeyChange.KEY_CHANGE_SET, version: written.info?.version });
    expect(event.originSidecarId).toBe(a.sidecar.sidecarId);
    const after = await b.client.get({ key: 'k2' });
    expect(Buffer.from(after.value).toString()).toBe('new');
    watch.cancel();
  });
});
