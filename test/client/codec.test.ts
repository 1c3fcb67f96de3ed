import { BinaryReader, BinaryWriter } from '@bufbuild/protobuf/wire';
import { Server, ServerCredentials, type ServiceDefinition } from '@grpc/grpc-js';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { decodeBuildContextResponse, decodeGetManyResponse, decodeGetResponse, decodeGetSessionNodesResponse } from '../../src/client/codec';
import { ContextCacheClient, ContextCacheError, Status } from '../../src/client';
import { BuildContextResponse, ContextCacheService, GetManyResponse, GetResponse, GetSessionNodesResponse, Node, type EntryInfo, type Lease } from '../../src/gen/contextcache/v1/context_cache';
import { Timestamp } from '../../src/gen/google/protobuf/timestamp';
import { WireError } from '../../src/wire/protobuf';

// What the generated code writes: every shape a field can take.
const text = fc.oneof(fc.string({ unit: 'binary', maxLength: 12 }), fc.string({ unit: 'binary', maxLength: 90 }), fc.constantFrom('', 'ü', '😀', '\ufeffleading BOM', '\ufffd'));
const uint64 = fc.oneof(fc.integer({ min: 0, max: 2 ** 32 }), fc.maxSafeNat(), fc.constantFrom(0, 127, 128, 2 ** 49 - 1, 2 ** 49, Number.MAX_SAFE_INTEGER));
const uint32 = fc.integer({ min: 0, max: 2 ** 32 - 1 });
const int32 = fc.oneof(fc.integer({ min: 0, max: 4 }), fc.integer({ min: -(2 ** 31), max: 2 ** 31 - 1 }));
const date = fc.option(fc.integer({ min: -8.64e15, max: 8.64e15 }).map((ms) => new Date(ms)), { nil: undefined });

const node: fc.Arbitrary<Node> = fc.record({
  id: text,
  shortId: text,
  sessionId: text,
  parentId: text,
  role: int32,
  content: fc.oneof(text, fc.string({ unit: 'grapheme', maxLength: 400 })),
  createdAt: date,
  metadata: fc.dictionary(text, text, { maxKeys: 4 }),
  refs: fc.array(text, { maxLength: 4 }),
  tokenCount: uint32,
  tokenCountTokenizer: text,
  pinned: fc.boolean(),
  summarizesThrough: text,
});
const entryInfo: fc.Arbitrary<EntryInfo> = fc.record({ version: uint64, expiresAt: date, tags: fc.array(text, { maxLength: 4 }), source: int32, sizeBytes: uint64, waitedForFill: fc.boolean(), degraded: fc.boolean() });
const lease: fc.Arbitrary<Lease> = fc.record({ token: text, expiresAt: date });
const bytes = fc.uint8Array({ maxLength: 2000 }).map((array) => Buffer.from(array));

const buildContextResponse = fc.record({
  sessionFound: fc.boolean(),
  nodes: fc.array(fc.record({ node: fc.option(node, { nil: undefined }), reason: int32, referencedBy: text, tokenCount: uint32 }), { maxLength: 6 }),
  unresolvedShortIds: fc.array(text, { maxLength: 3 }),
  missingSessionIds: fc.array(text, { maxLength: 3 }),
  droppedNodes: uint32,
  totalChars: uint64,
  sessionVersion: uint64,
  source: int32,
  degraded: fc.boolean(),
  totalTokens: uint64,
  budgetUsed: fc.double(),
  needsSummary: fc.boolean(),
  tokenizer: text,
  uncutTokens: uint64,
});
const getSessionNodesResponse = fc.record({ found: fc.boolean(), nodes: fc.array(node, { maxLength: 6 }), info: fc.option(entryInfo, { nil: undefined }), lease: fc.option(lease, { nil: undefined }) });
const getResponse = fc.record({ found: fc.boolean(), value: bytes, info: fc.option(entryInfo, { nil: undefined }), notModified: fc.boolean(), lease: fc.option(lease, { nil: undefined }) });
const getManyResponse = fc.record({ results: fc.array(fc.record({ key: text, found: fc.boolean(), value: bytes, info: fc.option(entryInfo, { nil: undefined }) }), { maxLength: 5 }) });

/** A message's fields by number: their wire type, and what an embedded message's fields are. */
interface Field {
  wireType: 0 | 1 | 2;
  text?: true;
  message?: Schema;
}
type Schema = Record<number, Field>;
const varint: Field = { wireType: 0 };
const string: Field = { wireType: 2, text: true };
const embedded = (message: Schema): Field => ({ wireType: 2, message });

const TIMESTAMP: Schema = { 1: varint, 2: varint };
const NODE: Schema = { 1: string, 2: string, 3: string, 4: string, 5: varint, 6: string, 7: embedded(TIMESTAMP), 8: embedded({ 1: string, 2: string }), 9: string, 10: varint, 11: string, 12: varint, 13: string };
const ENTRY_INFO: Schema = { 1: varint, 2: embedded(TIMESTAMP), 3: string, 4: varint, 5: varint, 6: varint, 7: varint };
const LEASE: Schema = { 1: string, 2: embedded(TIMESTAMP) };
const CONTEXT_NODE: Schema = { 1: embedded(NODE), 2: varint, 3: string, 4: varint };
const BUILD_CONTEXT: Schema = {
  1: varint,
  2: embedded(CONTEXT_NODE),
  3: string,
  4: string,
  ...{ 5: varint, 6: varint, 7: varint, 8: varint, 9: varint, 10: varint },
  11: { wireType: 1 },
  12: varint,
  13: string,
  14: varint,
};
const SESSION_NODES: Schema = { 1: varint, 2: embedded(NODE), 3: embedded(ENTRY_INFO), 4: embedded(LEASE) };
const GET: Schema = { 1: varint, 2: { wireType: 2 }, 3: embedded(ENTRY_INFO), 4: varint, 5: embedded(LEASE) };
const GET_MANY: Schema = { 1: embedded({ 1: string, 2: varint, 3: { wireType: 2 }, 4: embedded(ENTRY_INFO) }) };

/** mulberry32: the scrambling below, reproducible from fast-check's seed. */
function randomFrom(seed: number): (below: number) => number {
  let state = seed;
  return (below) => {
    state = (state + 0x6d2b79f5) | 0;
    let t = Math.imul(state ^ (state >>> 15), state | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return Math.floor((((t ^ (t >>> 14)) >>> 0) / 4294967296) * below);
  };
}

const randomBytes = (random: (below: number) => number, length: number) => Uint8Array.from({ length }, () => random(256));

/** A field another version could have sent: unknown, a known number with another wire type, or a string of any bytes (UTF-8 or not). */
function strangeField(schema: Schema, random: (below: number) => number): Uint8Array {
  const writer = new BinaryWriter();
  const known = Object.keys(schema).map(Number);
  const kind = random(3);
  const number = kind === 0 ? 15 + random(2 ** 29 - 16) : known[random(known.length)]!;
  const texts = known.filter((n) => schema[n]!.text);
  if (kind === 2 && texts.length > 0) return writer.uint32(texts[random(texts.length)]! * 8 + 2).bytes(randomBytes(random, random(80))).finish();
  const wireType = [0, 1, 2, 5].filter((type) => kind === 0 || type !== schema[number]!.wireType)[random(kind === 0 ? 4 : 3)]!;
  writer.uint32(number * 8 + wireType);
  if (wireType === 0) {
    // 1 to 10 bytes: a varint of any 64-bit value.
    const length = 1 + random(10);
    writer.raw(Uint8Array.from({ length }, (_, i) => (i < length - 1 ? 128 : 0) | random(i === 9 ? 2 : 128)));
  } else if (wireType === 2) writer.bytes(randomBytes(random, random(20)));
  else writer.raw(randomBytes(random, wireType === 1 ? 8 : 4));
  return writer.finish();
}

/**
 * The same message as other encoders may write it: fields shuffled (embedded
 * messages' too), some written twice, strange fields among them.
 */
function scramble(message: Uint8Array, schema: Schema, random: (below: number) => number): Uint8Array {
  const fields: Uint8Array[] = [];
  const reader = new BinaryReader(message);
  while (reader.pos < reader.len) {
    const start = reader.pos;
    const [number, wireType] = reader.tag();
    const inner = schema[number]?.message;
    if (inner !== undefined && wireType === 2) fields.push(new BinaryWriter().uint32(number * 8 + 2).bytes(scramble(reader.bytes(), inner, random)).finish());
    else {
      reader.skip(wireType);
      fields.push(message.subarray(start, reader.pos));
    }
    if (random(8) === 0) fields.push(fields[fields.length - 1]!);
  }
  for (let strange = random(4); strange > 0; strange--) fields.push(strangeField(schema, random));
  for (let i = fields.length - 1; i > 0; i--) {
    const j = random(i + 1);
    [fields[i], fields[j]] = [fields[j]!, fields[i]!];
  }
  return Buffer.concat(fields);
}

interface Codec<T> {
  generated: { encode(message: T): { finish(): Uint8Array }; decode(bytes: Uint8Array): T };
  schema: Schema;
  decode(bytes: Buffer): T;
  messages: fc.Arbitrary<T>;
}

const codecs = {
  BuildContextResponse: { generated: BuildContextResponse, schema: BUILD_CONTEXT, decode: decodeBuildContextResponse, messages: buildContextResponse } as Codec<BuildContextResponse>,
  GetSessionNodesResponse: { generated: GetSessionNodesResponse, schema: SESSION_NODES, decode: decodeGetSessionNodesResponse, messages: getSessionNodesResponse } as Codec<GetSessionNodesResponse>,
  GetResponse: { generated: GetResponse, schema: GET, decode: decodeGetResponse, messages: getResponse } as Codec<GetResponse>,
  GetManyResponse: { generated: GetManyResponse, schema: GET_MANY, decode: decodeGetManyResponse, messages: getManyResponse } as Codec<GetManyResponse>,
};

const outcome = (decode: () => unknown) => {
  try {
    return decode();
  } catch (error) {
    return error;
  }
};

describe.each(Object.entries(codecs) as [string, Codec<unknown>][])('the hand-written %s decoder', (_, { generated, schema, decode, messages }) => {
  it('gives exactly what the generated decode gives, for any message in any field order, with duplicated, unknown and mistyped fields and strings of any bytes', () => {
    fc.assert(
      fc.property(messages, fc.integer(), (message, seed) => {
        const plain = Buffer.from(generated.encode(message).finish());
        expect(decode(plain)).toStrictEqual(generated.decode(plain));
        const scrambled = Buffer.from(scramble(plain, schema, randomFrom(seed)));
        expect(decode(scrambled)).toStrictEqual(generated.decode(scrambled));
      }),
      { numRuns: 300 },
    );
  });

  it('gives what the generated decode gives for messages sent one after the other (protobuf concatenation)', () => {
    fc.assert(
      fc.property(messages, messages, (first, second) => {
        const joined = Buffer.concat([generated.encode(first).finish(), generated.encode(second).finish()]);
        expect(decode(joined)).toStrictEqual(generated.decode(joined));
      }),
      { numRuns: 100 },
    );
  });

  it('throws a WireError on bytes cut short, changed or made up, or reads them as the generated decode does; it never loops', () => {
    fc.assert(
      fc.property(messages, fc.nat(), fc.uint8Array({ minLength: 1, maxLength: 6 }), fc.uint8Array({ maxLength: 40 }), (message, at, patch, noise) => {
        const plain = Buffer.from(generated.encode(message).finish());
        const cut = at % (plain.length + 1);
        const patched = Buffer.from(plain);
        patched.set(patch.subarray(0, plain.length - cut), cut);
        for (const bytes of [plain.subarray(0, cut), patched, Buffer.from(noise)]) {
          const decoded = outcome(() => decode(bytes));
          if (decoded instanceof Error) expect(decoded).toBeInstanceOf(WireError);
          else expect(decoded).toStrictEqual(generated.decode(bytes));
        }
      }),
      { numRuns: 500 },
    );
  });
});

describe('the hand-written decoders where the generated code has rules of its own', () => {
  /** A GetSessionNodesResponse of one node created at this Timestamp. */
  function createdAt(seconds: number, nanos: number): Buffer {
    const node = new BinaryWriter().uint32(58).bytes(Timestamp.encode({ seconds, nanos }).finish()).finish();
    return Buffer.from(new BinaryWriter().uint32(18).bytes(node).finish());
  }

  it('makes a Date of any Timestamp as fromTimestamp does: negative seconds and nanos, nanos beyond a second, times past what a Date holds', () => {
    fc.assert(
      fc.property(fc.oneof(fc.integer({ min: -1e13, max: 1e13 }), fc.maxSafeInteger()), fc.integer({ min: -(2 ** 31), max: 2 ** 31 - 1 }), (seconds, nanos) => {
        const bytes = createdAt(seconds, nanos);
        expect(decodeGetSessionNodesResponse(bytes)).toStrictEqual(GetSessionNodesResponse.decode(bytes));
      }),
      { numRuns: 1000 },
    );
    expect(decodeGetSessionNodesResponse(createdAt(-1, -500_000_000)).nodes[0]!.createdAt).toEqual(new Date(-1500));
    expect(decodeGetSessionNodesResponse(createdAt(1e13, 0)).nodes[0]!.createdAt!.getTime()).toBeNaN();
  });

  it.each([
    ['2^53', 2n ** 53n],
    ['2^63', 2n ** 63n],
    ['2^64 - 1', 2n ** 64n - 1n],
  ])('refuses a uint64 of %s as the generated code does (it is beyond Number.MAX_SAFE_INTEGER)', (_, version) => {
    const info = new BinaryWriter().uint32(8).uint64(version).finish();
    const bytes = Buffer.from(new BinaryWriter().uint32(26).bytes(info).finish());
    expect(() => GetResponse.decode(bytes)).toThrow('MAX_SAFE_INTEGER');
    expect(() => decodeGetResponse(bytes)).toThrow(WireError);
  });

  it('refuses Timestamp seconds outside the safe integers as the generated code does', () => {
    const bytes = createdAt(-(2 ** 60), 0);
    expect(() => GetSessionNodesResponse.decode(bytes)).toThrow('MIN_SAFE_INTEGER');
    expect(() => decodeGetSessionNodesResponse(bytes)).toThrow(WireError);
  });

  it('keeps the low 32 bits of an enum or uint32 varint of any length, as the generated code does', () => {
    // Ten bytes: 2^63 + 2^40 + 5 as a role (int32) and as a token count (uint32): the low bits are 5.
    const long = [0x85, 0x80, 0x80, 0x80, 0x80, 0x80, 0x81, 0x80, 0x80, 0x01];
    const bytes = Buffer.from([0x12, 22, 0x28, ...long, 0x50, ...long]);
    expect(decodeGetSessionNodesResponse(bytes)).toStrictEqual(GetSessionNodesResponse.decode(bytes));
    expect(decodeGetSessionNodesResponse(bytes).nodes[0]).toMatchObject({ role: 5, tokenCount: 5 });
  });

  it('sets a metadata key "__proto__" as the generated code does: not at all', () => {
    const entry = new BinaryWriter().uint32(10).string('__proto__').uint32(18).string('x').finish();
    const bytes = Buffer.from(new BinaryWriter().uint32(18).bytes(new BinaryWriter().uint32(66).bytes(entry).finish()).finish());
    const decoded = decodeGetSessionNodesResponse(bytes);
    expect(decoded).toStrictEqual(GetSessionNodesResponse.decode(bytes));
    expect(Object.getPrototypeOf(decoded.nodes[0]!.metadata)).toBe(Object.prototype);
  });

  it('replaces an embedded message met twice, as the generated code does (protobuf would merge them)', () => {
    const first = GetResponse.encode(GetResponse.fromPartial({ info: { version: 1, tags: ['a'] } })).finish();
    const second = GetResponse.encode(GetResponse.fromPartial({ info: { sizeBytes: 2 } })).finish();
    const bytes = Buffer.concat([first, second]);
    expect(decodeGetResponse(bytes)).toStrictEqual(GetResponse.decode(bytes));
    expect(decodeGetResponse(bytes).info).toMatchObject({ version: 0, tags: [], sizeBytes: 2 });
  });

  it('gives a value of its own, not a view of the response', () => {
    const bytes = Buffer.from(GetResponse.encode(GetResponse.fromPartial({ found: true, value: Buffer.from('abc') })).finish());
    const { value } = decodeGetResponse(bytes);
    bytes.fill(0);
    expect(value.toString()).toBe('abc');
  });

  it.each([
    // The generated decode ends the message at field 0 or an end-group tag, and reads on from wherever that left it.
    ['field number 0', [0x08, 0x01, 0x00, 0x10, 0x01]],
    ['an end-group tag', [0x08, 0x01, 0x0c]],
    // Groups are proto2's, never written by proto3; the generated decode skips them.
    ['a group', [0x0b, 0x0c]],
    ['a wire type that does not exist', [0x0e]],
    ['a length past the end', [0x12, 0x05, 0x0a]],
    ['a varint past 10 bytes', [0x08, ...Array<number>(10).fill(0xff), 0x01]],
    ['a tag beyond 32 bits', [0x80, 0x80, 0x80, 0x80, 0x80, 0x01]],
    // A node whose ID runs past the node's end, over the context node's next field: the generated decode makes that field the ID.
    ['a field that runs past its embedded message', [0x12, 0x07, 0x0a, 0x02, 0x0a, 0x03, 0x1a, 0x01, 0x61]],
  ])('refuses %s with a WireError', (_, wire) => {
    expect(() => decodeBuildContextResponse(Buffer.from(wire))).toThrow(WireError);
  });
});

describe('a response the client cannot decode', () => {
  let server: Server;
  let client: ContextCacheClient;
  beforeAll(async () => {
    // A server that answers Get with bytes that are no GetResponse (a length past the end).
    const get = ContextCacheService.get;
    server = new Server();
    server.addService({ get: { ...get, responseSerialize: (bytes: Buffer) => bytes } } as unknown as ServiceDefinition, {
      get: (_: unknown, callback: (error: null, bytes: Buffer) => void) => callback(null, Buffer.from([0x12, 0x05, 0x0a])),
    });
    const port = await new Promise<number>((resolve, reject) => server.bindAsync('127.0.0.1:0', ServerCredentials.createInsecure(), (error, bound) => (error ? reject(error) : resolve(bound))));
    client = new ContextCacheClient(`127.0.0.1:${port}`, { retry: false });
  });
  afterAll(async () => {
    client.close();
    await new Promise<void>((resolve) => server.tryShutdown(() => resolve()));
  });

  it('rejects the call with a ContextCacheError: INTERNAL, naming the parsing error', async () => {
    const error = await client.get({ key: 'k' }).catch((caught: unknown) => caught);
    expect(error).toBeInstanceOf(ContextCacheError);
    expect((error as ContextCacheError).code).toBe(Status.INTERNAL);
    expect((error as ContextCacheError).details).toBe('Response message parsing error: a field runs past the end');
  });
});
