import { describe, expect, it } from 'vitest';
import { WatchResponse } from '../../src/gen/contextcache/v1/context_cache';
import { frame } from '../../src/server/watch';

describe('Watch frames: one pre-encoded body, a per-stream sequence in front', () => {
  const body = Buffer.from(WatchResponse.encode({ sequence: 0, time: undefined, originSidecarId: 'sidecar-a', resumeToken: undefined, event: { $case: 'resync', value: { reason: 1 } } }).finish());

  it.each([1, 127, 128, 300, 16_383, 16_384, 2 ** 31, 2 ** 32 + 5, Number.MAX_SAFE_INTEGER])('decodes as the same message with sequence %d', (sequence) => {
    const decoded = WatchResponse.decode(frame(sequence, body));
    expect(decoded.sequence).toBe(sequence);
    expect(decoded.originSidecarId).toBe('sidecar-a');
    expect(decoded.event).toEqual({ $case: 'resync', value: expect.objectContaining({ reason: 1 }) });
  });
});
