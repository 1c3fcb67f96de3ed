import { BinaryWriter } from '@bufbuild/protobuf/wire';
import { status, type ServiceError } from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Role } from '../../src/client';
import { ContextCacheService, GetResponse } from '../../src/gen/contextcache/v1/context_cache';
import { closeAllSidecars, startSidecar, type TestSidecar } from '../helpers/sidecar';
import { rejectionOf } from '../helpers/wait';

/** Sends raw request bytes to a unary method; resolves with the error status (or undefined on success). */
function rawCall(sc: TestSidecar, method: keyof typeof ContextCacheService, bytes: Uint8Array): Promise<ServiceError | undefined> {
  const definition = ContextCacheService[method];
  return new Promise((resolve) => {
    sc.client.raw.makeUnaryRequest(
      definition.path,
      (value: Buffer) => value,
      (value: Buffer) => GetResponse.decode(value),
      Buffer.from(bytes),
      (error) => resolve(error ?? undefined),
    );
  });
}

/** Issue 12's strict-input defects, each with a clear INVALID_ARGUMENT (or RESOURCE_EXHAUSTED), never INTERNAL. */
describe('strict input', () => {
  let sc: TestSidecar;
  beforeAll(async () => {
    sc = await startSidecar({ CONTEXT_CACHE_MAX_VALUE_BYTES: '32KiB', CONTEXT_CACHE_MAX_MESSAGE_BYTES: '256KiB' });
  });
  afterAll(closeAllSidecars);

  it('refuses invalid UTF-8 in a key, naming the field, so that different bytes can never name the same entry', async () => {
    for (const byte of [0xff, 0xfe]) {
      const error = await rawCall(sc, 'set', new BinaryWriter().uint32(10).bytes(new Uint8Array([0x6b, byte])).uint32(18).bytes(new Uint8Array([1])).finish());
      expect(error?.code).toBe(status.INVALID_ARGUMENT);
      expect(error?.details).toBe('key is not valid UTF-8; every string must be UTF-8 text');
    }
    expect((await sc.client.get({ key: 'k\uFFFD' })).found).toBe(false);
  });

  it('refuses invalid UTF-8 deep in a message, naming the field', async () => {
    const node = new BinaryWriter().uint32(10).string('n0').uint32(50).bytes(new Uint8Array([0xc3, 0x28])).finish();
    const error = await rawCall(sc, 'putSessionNodes', new BinaryWriter().uint32(10).string('s').uint32(18).bytes(node).finish());
    expect(error?.code).toBe(status.INVALID_ARGUMENT);
    expect(error?.details).toBe('nodes[0].content is not valid UTF-8; every string must be UTF-8 text');
  });

  it('refuses an int64 duration beyond what a number holds, and bytes that are not the message', async () => {
    const duration = new BinaryWriter().uint32(8).int64(2n ** 60n).finish();
    const tooLong = await rawCall(sc, 'set', new BinaryWriter().uint32(10).string('k').uint32(26).bytes(duration).finish());
    expect(tooLong?.code).toBe(status.INVALID_ARGUMENT);
    expect(tooLong?.details).toBe('an integer field (a duration, timestamp or version) is out of range');
    const garbage = await rawCall(sc, 'get', new Uint8Array([0x0a, 0x7f, 0x01]));
    expect(garbage?.code).toBe(status.INVALID_ARGUMENT);
    expect(garbage?.details).toMatch(/^the request does not decode as its message/);
  });

  it('refuses a metadata key "__proto__" instead of dropping it silently, and keeps other odd keys exactly', async () => {
    // Raw bytes: a JavaScript object cannot even hold the key (the client would drop it too).
    const entry = new BinaryWriter().uint32(10).string('__proto__').uint32(18).string('x').finish();
    const node = new BinaryWriter().uint32(10).string('n0').uint32(26).string('s').uint32(40).int32(1).uint32(66).bytes(entry).finish();
    const error = await rawCall(sc, 'appendNode', new BinaryWriter().uint32(10).bytes(node).finish());
    expect(error?.code).toBe(status.INVALID_ARGUMENT);
    expect(error?.details).toBe('a metadata key is "__proto__", which cannot be kept; rename it');
    await sc.client.putSessionNodes({ sessionId: 'odd', nodes: [{ id: 'n0', role: Role.ROLE_USER, metadata: { constructor: 'c', toString: 't' } }] });
    expect((await sc.client.getSessionNodes({ sessionId: 'odd' })).nodes[0]?.metadata).toEqual({ constructor: 'c', toString: 't' });
  });

  it('refuses duplicate node IDs in PutSessionNodes instead of dropping them silently', async () => {
    const nodes = [0, 1, 0].map((n) => ({ id: `n${n}`, role: Role.ROLE_USER, content: `m${n}` }));
    const error = await rejectionOf(sc.client.putSessionNodes({ sessionId: 's', nodes }));
    expect((error as ServiceError).code).toBe(status.INVALID_ARGUMENT);
    expect((error as ServiceError).details).toBe('nodes[2].id "n0" repeats nodes[0].id; node IDs are unique within a session');
  });

  it('refuses to store a session that could never be read back within the message limit', async () => {
    const sessionId = 's'.repeat(256);
    const nodes = Array.from({ length: 1200 }, (_, n) => ({ id: `node-${n}`, role: Role.ROLE_USER, content: 'x'.repeat(60) }));
    const error = await rejectionOf(sc.client.putSessionNodes({ sessionId, nodes }));
    expect((error as ServiceError).code).toBe(status.RESOURCE_EXHAUSTED);
    expect((error as ServiceError).details).toMatch(/^the session \(1200 nodes\) encodes to \d+ bytes; reading it back must fit in a message of 262144 bytes/);
    // A smaller one is stored and reads back.
    await sc.client.putSessionNodes({ sessionId, nodes: nodes.slice(0, 200) });
    expect((await sc.client.getSessionNodes({ sessionId })).nodes).toHaveLength(200);
  });
});
