import { BinaryReader } from '@bufbuild/protobuf/wire';
import { GetResponse } from '../gen/contextcache/v1/context_cache';
import type { Entry, Tier } from '../model/entry';
import { fieldSize, timestampPlan, varintSize, writeString, writeTimestamp, writeVarint } from '../wire/protobuf';
import { PRE_ENCODED, UNDECODABLE } from './calls';
import { entryInfo, sourceToProto } from './mapping';

/**
 * `head` (a message's other fields, encoded as usual) followed by
 * `repeated <message> = fieldNumber`, each item made of `parts` (already
 * encoded fields), in one allocation.
 */
export function withRepeated(head: Uint8Array, fieldNumber: number, items: readonly (readonly Uint8Array[])[]): Buffer {
  const tag = (fieldNumber << 3) | 2;
  let total = head.length;
  const lengths = items.map((parts) => {
    let length = 0;
    for (const part of parts) length += part.length;
    total += 1 + varintSize(length) + length;
    return length;
  });
  const buffer = Buffer.allocUnsafe(total);
  buffer.set(head, 0);
  let offset = head.length;
  items.forEach((parts, index) => {
    buffer[offset++] = tag;
    offset = writeVarint(buffer, offset, lengths[index]!);
    for (const part of parts) {
      buffer.set(part, offset);
      offset += part.length;
    }
  });
  return buffer;
}

/** The tag and length of an embedded message field, to be followed by `length` bytes of it. */
export function lengthPrefix(fieldNumber: number, length: number): Buffer {
  const head = Buffer.allocUnsafe(1 + varintSize(length));
  head[0] = (fieldNumber << 3) | 2;
  writeVarint(head, 1, length);
  return head;
}

const NO_FIELD = Buffer.alloc(0);

/** A varint field (enums, integers ≥ 0); 0 is left out, as proto3 does. */
export function varintField(fieldNumber: number, value: number): Buffer {
  if (value === 0) return NO_FIELD;
  const buffer = Buffer.allocUnsafe(1 + varintSize(value));
  buffer[0] = fieldNumber << 3;
  writeVarint(buffer, 1, value);
  return buffer;
}

/** A string field; empty strings are left out, as proto3 does. */
export function stringField(fieldNumber: number, value: string): Buffer {
  if (value === '') return NO_FIELD;
  const bytes = Buffer.byteLength(value);
  const buffer = Buffer.allocUnsafe(1 + varintSize(bytes) + bytes);
  buffer[0] = (fieldNumber << 3) | 2;
  buffer.write(value, writeVarint(buffer, 1, bytes), 'utf8');
  return buffer;
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
 * tracker) passing Buffers through — and encoding anything else as generated.
 */
export function acceptPreEncoded<S extends MethodDefinitions>(service: S, implementation: Record<keyof S, object>): S {
  const copy: Record<string, unknown> = { ...service };
  for (const method of Object.keys(service) as (keyof S & string)[]) {
    if (!(PRE_ENCODED in implementation[method])) continue;
    const definition = service[method]!;
    const serialize = definition.responseSerialize as (value: unknown) => Buffer;
    copy[method] = { ...definition, responseSerialize: (value: unknown) => (Buffer.isBuffer(value) ? value : serialize(value)) };
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
