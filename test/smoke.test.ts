import { status } from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { closeAllSidecars, startSidecar, type TestSidecar } from './helpers/sidecar';
import { rejectionOf } from './helpers/wait';

describe('sidecar smoke', () => {
  let sc: TestSidecar;
  beforeAll(async () => {
    sc = await startSidecar();
  });
  afterAll(closeAllSidecars);

  it('stores and reads a value over gRPC', async () => {
    const set = await sc.client.set({ key: 'greeting', value: Buffer.from('hello'), tags: ['t1'] });
    expect(set.info?.version).toBeGreaterThan(0);
    const got = await sc.client.get({ key: 'greeting' });
    expect(got.found).toBe(true);
    expect(Buffer.from(got.value).toString()).toBe('hello');
    expect(got.info?.version).toBe(set.info?.version);
  });

  it('rejects an empty key with INVALID_ARGUMENT', async () => {
    const error = await rejectionOf(sc.client.set({ key: '', value: Buffer.from('x') }));
    expect(error.code).toBe(status.INVALID_ARGUMENT);
    expect(error.details).toMatch(/key is empty/);
  });
});
