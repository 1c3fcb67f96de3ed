import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import * as client from '../../src/client';
import { ContextCacheError, Status } from '../../src/client';
import { closeAllSidecars, startSidecar, type TestSidecar } from '../helpers/sidecar';
import { rejectionOf } from '../helpers/wait';

describe('the TypeScript client', () => {
  let sc: TestSidecar;
  beforeAll(async () => {
    sc = await startSidecar();
  });
  afterAll(closeAllSidecars);

  it('exports by name what an app needs, and not the generated module', () => {
    expect(Object.keys(client).sort()).toEqual(
      ['ContextCacheClient', 'ContextCacheError', 'InclusionReason', 'KeyChange', 'LinkState', 'RedisMode', 'RedisNodeRole', 'ResumingWatch', 'ResyncReason', 'Role', 'SessionChange', 'Source', 'Status', 'WriteScope'].sort(),
    );
  });

  it('rejects a failed call with a ContextCacheError carrying the status code and the message', async () => {
    const error = await rejectionOf(sc.client.get({ key: '' }));
    expect(error).toBeInstanceOf(ContextCacheError);
    expect((error as ContextCacheError).code).toBe(Status.INVALID_ARGUMENT);
    expect((error as ContextCacheError).details).toBe('key is empty; keys are 1 to 1024 bytes of UTF-8');
  });

  it('rejects the iteration of a failed stream with a ContextCacheError', async () => {
    const stream = sc.client.watch({ keyPrefixes: [''] });
    const error = await rejectionOf(
      (async () => {
        for await (const message of stream) void message;
      })(),
    );
    expect(error).toBeInstanceOf(ContextCacheError);
    expect((error as ContextCacheError).code).toBe(Status.INVALID_ARGUMENT);
    expect((error as ContextCacheError).details).toContain('key_prefixes[0] is empty');
  });
});
