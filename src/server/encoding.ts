import { BinaryReader } from '@bufbuild/protobuf/wire';
import { GetResponse } from '../gen/contextcache/v1/context_cache';
import type { ContextItem } from '../context/build-context';
import type { Entry, Tier } from '../model/entry';
import type { NodeRecord } from '../model/node';
import { encodedNode, encodeNodes } from '../wire/node';
import { fieldSize, timestampPlan, varintSize, writeString, writeTimestamp, writeVarint } from '../wire/protobuf';
import { PRE_ENCODED, UNDECODABLE } from './calls';
import { entryInfo, INCLUSION, sourceToProto } from './mapping';

/**
 * The encodings of `nodes`, each computed once (wire/node.ts keeps them): one
 * array of views, so that sizing and writing a response look each node up
 * once.
 */
function encodingsOf(nodes: readonly NodeRecord[]): Buffer[] {
  encodeNodes(nodes);
  const encodings = new Array<Buffer>(nodes.length);
  for (let index = 0; index < nodes.length; index++) encodings[index] = encodedNode(nodes[index]!);
  return encodings;
}

/** Responses up to this size are written into the shared buffer (see ResponseWriter); larger ones into their own. */
const SHARED_RESPONSE_MAX = 4 * 1024 * 1024;
let shared = Buffer.allocUnsafeSlow(64 * 1024);

/**
 * A large response (a session's nodes, a context), sized by the handler and
 * written only when grpc-js serializes it (`acceptPreEncoded`), into one
 * buffer shared by every call. grpc-js copies a serialized message into a
 * framed buffer of its own (the 5-byte gRPC header, then the message)
 * within the same synchronous step that called the serializer, so the
 * shared buffer is free again before anything else runs. A context of
 * 200 nodes is some 85 KiB: one buffer of that size per call, which V8
 * counts as external memory, was what set off most of the sidecar's full
 * garbage collections while it served contexts from L1.
 * test/foundation/encoding.test.ts holds grpc-js to the copy.
 */
export class ResponseWriter {
  constructor(
    readonly size: number,
    private readonly write: (buffer: Buffer) => void,
  ) {}

  /** The response in a buffer of its own. */
  toBuffer(): Buffer {
    const buffer = Buffer.allocUnsafe(this.size);
    this.write(buffer);
    return buffer;
  }

  /** The response in the shared buffer: valid until the next response is written (in a buffer of its own when too large to share). */
  serialize(): Buffer {
    if (this.size > SHARED_RESPONSE_MAX) return this.toBuffer();
    if (this.size > shared.length) shared = Buffer.allocUnsafeSlow(Math.min(SHARED_RESPONSE_MAX, 2 ** Math.ceil(Math.log2(this.size))));
    const view = shared.subarray(0, this.size);
    this.write(view);
    return view;
  }
}

/**
 * GetSessionNodesResponse: `head` (its other fields, encoded as generated)
 * followed by `repeated Node nodes = 2`, each node's kept encoding copied
 * once into one buffer. Protobuf allows it: fields may come in any order.
 */
export function encodeSessionNodes(head: Uint8Array, nodes: readonly NodeRecord[]): ResponseWriter {
  const encodings = encodingsOf(nodes);
  let total = head.length;
  for (const bytes of encodings) total += fieldSize(bytes.length);
  return new ResponseWriter(total, (buffer) => {
    buffer.set(head, 0);
    let offset = head.length;
    for (const bytes of encodings) {
      buffer[offset++] = 18;
      offset = writeVarint(buffer, offset, bytes.length);
      buffer.set(bytes, offset);
      offset += bytes.length;
    }
  });
}

/**
 * BuildContextResponse: `head` followed by `repeated ContextNode nodes = 2`
 * — `{ Node node = 1; InclusionReason reason = 2; string referenced_by = 3;
 * uint32 token_count = 4; }` — written straight into one buffer: a context
 * served from L1 allocates two arrays, nothing per node, and its bytes go
 * into the shared response buffer (the hot path of BuildContext; its
 * garbage is what made its tail).
 */
export function encodeContextItems(head: Uint8Array, items: readonly ContextItem[]): ResponseWriter {
  const nodes = new Array<NodeRecord>(items.length);
  for (let index = 0; index < items.length; index++) nodes[index] = items[index]!.node;
  const encodings = encodingsOf(nodes);
  let total = head.length;
  for (let index = 0; index < items.length; index++) total += fieldSize(contextNodeBytes(items[index]!, encodings[index]!.length));
  return new ResponseWriter(total, (buffer) => {
    buffer.set(head, 0);
    let offset = head.length;
    for (let index = 0; index < items.length; index++) {
      const item = items[index]!;
      const node = encodings[index]!;
      buffer[offset++] = 18;
      offset = writeVarint(buffer, offset, contextNodeBytes(item, node.length));
      buffer[offset++] = 10;
      offset = writeVarint(buffer, offset, node.length);
      buffer.set(node, offset);
      offset += node.length;
      // Reasons are 1-4: one byte each, never the default 0.
      buffer[offset++] = 16;
      buffer[offset++] = INCLUSION[item.reason];
      if (item.referencedBy !== '') offset = writeString(buffer, offset, [26, item.referencedBy, Buffer.byteLength(item.referencedBy)]);
      if (item.tokens !== 0) {
        buffer[offset++] = 32;
        offset = writeVarint(buffer, offset, item.tokens);
      }
    }
  });
}

/** The size of one ContextNode's payload, its node's encoding `nodeBytes` long. */
function contextNodeBytes(item: ContextItem, nodeBytes: number): number {
  return fieldSize(nodeBytes) + 2 + (item.referencedBy === '' ? 0 : fieldSize(Buffer.byteLength(item.referencedBy))) + (item.tokens === 0 ? 0 : 1 + varintSize(item.tokens));
}

/** What a found Get answers with: the entry, which tier read it, and how. */
export interface FoundRead {
  entry: Entry;
  source: Tier;
  degraded: boolean;
}

/**
 * The GetResponse of a found entry, written straight into one buffer (the
 * value copied once): a Get served from L1 is the sidecar's most frequent
 * call, and the generated writer costs several times as much (a
 * BinaryWriter, its chunks and a fork per embedded message). Byte for byte
 * what `GetResponse.encode` writes with `entryInfo` (test/foundation/encoding.test.ts);
 * entries the fast path does not expect (a negative expiry, unsafe numbers)
 * go through the generated encoder.
 */
export function encodeGetFound(read: FoundRead, waitedForFill: boolean, notModified: boolean): Buffer {
  const { entry } = read;
  const { version, expiresAt, tags } = entry;
  const sizeBytes = entry.value.byteLength;
  if (expiresAt < 0 || !Number.isSafeInteger(expiresAt) || !Number.isSafeInteger(version) || version < 0) {
    return Buffer.from(GetResponse.encode({ found: true, value: notModified ? Buffer.alloc(0) : entry.value, info: entryInfo(entry, read, waitedForFill), notModified, lease: undefined }).finish());
  }
  const { seconds, nanos, bytes: timestampBytes } = timestampPlan(expiresAt);
  let infoBytes = 0;
  if (version !== 0) infoBytes += 1 + varintSize(version);
  if (expiresAt !== 0) infoBytes += fieldSize(timestampBytes);
  const tagBytes = tags.map((tag) => Buffer.byteLength(tag));
  for (const bytes of tagBytes) infoBytes += fieldSize(bytes);
  infoBytes += 2; // source: always l1 or l2, never 0
  if (sizeBytes !== 0) infoBytes += 1 + varintSize(sizeBytes);
  if (waitedForFill) infoBytes += 2;
  if (read.degraded) infoBytes += 2;
  const valueBytes = notModified ? 0 : sizeBytes;
  const total = 2 + (valueBytes > 0 ? fieldSize(valueBytes) : 0) + fieldSize(infoBytes) + (notModified ? 2 : 0);
  const buffer = Buffer.allocUnsafe(total);
  let offset = 0;
  buffer[offset++] = 8;
  buffer[offset++] = 1;
  if (valueBytes > 0) {
    buffer[offset++] = 18;
    offset = writeVarint(buffer, offset, valueBytes);
    buffer.set(entry.value, offset);
    offset += valueBytes;
  }
  buffer[offset++] = 26;
  offset = writeVarint(buffer, offset, infoBytes);
  if (version !== 0) {
    buffer[offset++] = 8;
    offset = writeVarint(buffer, offset, version);
  }
  if (expiresAt !== 0) offset = writeTimestamp(buffer, offset, 18, seconds, nanos, timestampBytes);
  tags.forEach((tag, index) => {
    offset = writeString(buffer, offset, [26, tag, tagBytes[index]!]);
  });
  buffer[offset++] = 32;
  buffer[offset++] = sourceToProto(read.source);
  if (sizeBytes !== 0) {
    buffer[offset++] = 40;
    offset = writeVarint(buffer, offset, sizeBytes);
  }
  if (waitedForFill) {
    buffer[offset++] = 48;
    buffer[offset++] = 1;
  }
  if (read.degraded) {
    buffer[offset++] = 56;
    buffer[offset++] = 1;
  }
  if (notModified) {
    buffer[offset++] = 32;
    buffer[offset++] = 1;
  }
  return buffer;
}

type MethodDefinitions = Record<string, { responseSerialize: (value: never) => Buffer }>;

/**
 * The service definition with the response serializer of every method whose
 * handler declared pre-encoded responses (`{ preEncoded: true }` on the call
 * tracker) passing Buffers through, writing a ResponseWriter's response into
 * the shared buffer — and encoding anything else as generated.
 */
export function acceptPreEncoded<S extends MethodDefinitions>(service: S, implementation: Record<keyof S, object>): S {
  const copy: Record<string, unknown> = { ...service };
  for (const method of Object.keys(service) as (keyof S & string)[]) {
    if (!(PRE_ENCODED in implementation[method])) continue;
    const definition = service[method]!;
    const serialize = definition.responseSerialize as (value: unknown) => Buffer;
    copy[method] = {
      ...definition,
      responseSerialize: (value: unknown) => (value instanceof ResponseWriter ? value.serialize() : Buffer.isBuffer(value) ? value : serialize(value)),
    };
  }
  return copy as S;
}

/** Strict UTF-8: a string field that is not valid UTF-8 fails the decode instead of turning into U+FFFD (so keys cannot collide). */
const fatalUtf8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

class InvalidUtf8 extends Error {}

function strictDecodeUtf8(bytes: Uint8Array): string {
  try {
    return fatalUtf8.decode(bytes);
  } catch {
    throw new InvalidUtf8('invalid UTF-8');
  }
}

/** The path of the first string holding U+FFFD in a leniently decoded message: where the invalid UTF-8 was. */
function replacementPath(value: unknown, path: string): string | undefined {
  if (typeof value === 'string') return value.includes('\uFFFD') ? path : undefined;
  if (value === null || typeof value !== 'object' || value instanceof Uint8Array || value instanceof Date) return undefined;
  for (const [key, item] of Object.entries(value)) {
    const found = replacementPath(item, Array.isArray(value) ? `${path}[${key}]` : path === '' ? snake(key) : `${path}.${snake(key)}`);
    if (found !== undefined) return found;
  }
  return undefined;
}

const snake = (name: string) => name.replace(/[A-Z]/g, (letter) => `_${letter.toLowerCase()}`);

type RequestDefinitions = Record<string, { requestDeserialize: (value: Buffer) => unknown }>;

/**
 * A map entry whose key is "__proto__" (field 1, 9 bytes): decoded into a
 * plain object it would set the prototype and vanish, so a node's metadata
 * would silently lose it. Such a request is refused instead.
 */
const PROTO_KEY = Buffer.from([0x0a, 0x09, ...Buffer.from('__proto__')]);

/**
 * The service definition with every request decoded strictly: invalid UTF-8
 * in any string field, an int64 beyond what a JavaScript number holds, or
 * bytes that are not the message all become an UndecodableRequest (answered
 * INVALID_ARGUMENT naming the field where it can), never an INTERNAL from
 * inside grpc-js.
 */
export function decodeStrictly<S extends RequestDefinitions>(service: S): S {
  const copy: Record<string, unknown> = { ...service };
  for (const method of Object.keys(service)) {
    const definition = service[method]!;
    const decode = definition.requestDeserialize as (value: Buffer | BinaryReader) => unknown;
    copy[method] = {
      ...definition,
      requestDeserialize: (bytes: Buffer): unknown => {
        if (bytes.includes(PROTO_KEY)) return { [UNDECODABLE]: 'a metadata key is "__proto__", which cannot be kept; rename it' };
        try {
          return decode(new BinaryReader(bytes, strictDecodeUtf8));
        } catch (error) {
          if (error instanceof InvalidUtf8) {
            let field: string | undefined;
            try {
              field = replacementPath(decode(bytes), '');
            } catch {
              field = undefined;
            }
            return { [UNDECODABLE]: `${field ?? 'a string field'} is not valid UTF-8; every string must be UTF-8 text` };
          }
          const reason = (error as Error).message ?? String(error);
          return { [UNDECODABLE]: /MAX_SAFE_INTEGER|larger than/i.test(reason) ? 'an integer field (a duration, timestamp or version) is out of range' : `the request does not decode as its message (${reason})` };
        }
      },
    };
  }
  return copy as S;
}
