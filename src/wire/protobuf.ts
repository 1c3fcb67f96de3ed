import { isUtf8 } from 'node:buffer';

/**
 * The protobuf wire format, the parts our hand-written encoders and decoders
 * need (varints, length-delimited fields, google.protobuf.Timestamp), for
 * the messages the sidecar writes most: nodes and found Gets. Byte for byte
 * what the generated code writes (test/foundation/encoding.test.ts). The
 * reader also serves the client's hand-written decoders (client/codec.ts),
 * so this file imports nothing but node:buffer.
 */

/** Bytes of a varint; a negative number is sign-extended to 64 bits: always 10. */
export function varintSize(value: number): number {
  if (value < 0) return 10;
  let size = 1;
  while (value >= 128) {
    value = Math.floor(value / 128);
    size++;
  }
  return size;
}

export function writeVarint(buffer: Buffer, offset: number, value: number): number {
  if (value < 0) {
    // int32 and int64 fields carry negative numbers as 64-bit two's complement.
    let bits = BigInt.asUintN(64, BigInt(value));
    while (bits >= 128n) {
      buffer[offset++] = Number(bits & 127n) | 128;
      bits >>= 7n;
    }
    buffer[offset++] = Number(bits);
    return offset;
  }
  while (value >= 128) {
    buffer[offset++] = (value % 128) | 128;
    value = Math.floor(value / 128);
  }
  buffer[offset++] = value;
  return offset;
}

/** Size of a length-delimited field: tag, length, payload. */
export const fieldSize = (payloadBytes: number) => 1 + varintSize(payloadBytes) + payloadBytes;

export type StringField = readonly [tag: number, value: string, bytes: number];

export function stringPlan(tag: number, value: string): StringField {
  return [tag, value, Buffer.byteLength(value)];
}

export function writeString(buffer: Buffer, offset: number, [tag, value, bytes]: StringField): number {
  buffer[offset++] = tag;
  offset = writeVarint(buffer, offset, bytes);
  return offset + buffer.write(value, offset, bytes, 'utf8');
}

/**
 * An epoch-ms time as google.protobuf.Timestamp fields, and their encoded
 * size (0 for time 0: the field is left out). Seconds and nanos are
 * truncated toward zero, as the generated `toTimestamp` does.
 */
export function timestampPlan(epochMs: number): { seconds: number; nanos: number; bytes: number } {
  const seconds = Math.trunc(epochMs / 1000);
  const nanos = (epochMs % 1000) * 1_000_000;
  const bytes = epochMs === 0 ? 0 : (seconds !== 0 ? 1 + varintSize(seconds) : 0) + (nanos !== 0 ? 1 + varintSize(nanos) : 0);
  return { seconds, nanos, bytes };
}

/** An embedded google.protobuf.Timestamp under `tag`, its size (`bytes`) known. */
export function writeTimestamp(buffer: Buffer, offset: number, tag: number, seconds: number, nanos: number, bytes: number): number {
  buffer[offset++] = tag;
  offset = writeVarint(buffer, offset, bytes);
  if (seconds !== 0) {
    buffer[offset++] = 8;
    offset = writeVarint(buffer, offset, seconds);
  }
  if (nanos !== 0) {
    buffer[offset++] = 16;
    offset = writeVarint(buffer, offset, nanos);
  }
  return offset;
}

/** Thrown by the readers below: bytes that are not the message they should be. */
export class WireError extends Error {}

/**
 * Reads protobuf from a buffer, bounds-checked: every read that would pass
 * `end` throws WireError, never reads past it.
 */
export class WireReader {
  constructor(
    readonly buffer: Buffer,
    public offset: number,
    readonly end: number,
  ) {}

  /**
   * A varint as a number: exact up to 2^53; a 64-bit two's complement
   * (negative int32 and int64 values) read back as the negative number. The
   * callers range-check what they read.
   */
  varint(): number {
    const { buffer, end } = this;
    const start = this.offset;
    if (start < end && buffer[start]! < 128) return buffer[this.offset++]!;
    let value = 0;
    let scale = 1;
    // Up to 8 bytes (56 bits) in floating point: exact below 2^53, since no partial sum exceeds the value (a
    // version, microseconds since 1970, takes 8 bytes); longer ones (negative numbers: 10 bytes) with BigInt.
    for (let i = 0; i < 8; i++) {
      if (this.offset >= end) throw new WireError('a varint runs past the end');
      const byte = buffer[this.offset++]!;
      value += (byte & 127) * scale;
      if (byte < 128) return value;
      scale *= 128;
    }
    this.offset = start;
    let bits = 0n;
    for (let i = 0; i < 10; i++) {
      if (this.offset >= end) throw new WireError('a varint runs past the end');
      const byte = buffer[this.offset++]!;
      bits |= BigInt(byte & 127) << BigInt(7 * i);
      if (byte < 128) return Number(BigInt.asIntN(64, bits));
    }
    throw new WireError('a varint longer than 10 bytes');
  }

  /** An int32 or enum field: the varint's low 32 bits, signed, as every protobuf reader keeps them. */
  int32(): number {
    return this.low32Bits() | 0;
  }

  /** A uint32 field: the varint's low 32 bits. */
  uint32(): number {
    return this.low32Bits() >>> 0;
  }

  /**
   * Reads a length-delimited field's length and returns where its payload
   * ends; the reader is then at the payload's start (the caller reads it, or
   * sets `offset` to the end to skip it).
   */
  payloadEnd(): number {
    const length = this.varint();
    if (length > this.end - this.offset) throw new WireError('a field runs past the end');
    return this.offset + length;
  }

  /** A string field: UTF-8, checked (a string that is not valid UTF-8 is not ours). */
  string(): string {
    return this.text(utf8);
  }

  /**
   * A string field as the generated (protobuf-es) decoders read it: invalid
   * UTF-8 becomes U+FFFD, never an error. For the client, which must read
   * the sidecar's answers as the generated code would.
   */
  lenientString(): string {
    return this.text(lenientUtf8);
  }

  /** A double field (wire type 1): little-endian IEEE 754. */
  double(): number {
    this.advance(8);
    return this.buffer.readDoubleLE(this.offset - 8);
  }

  /** Skips a field of the given wire type (unknown fields: written by a newer version). */
  skip(wireType: number): void {
    switch (wireType) {
      case 0:
        this.varint();
        return;
      case 1:
        this.advance(8);
        return;
      case 2:
        this.offset = this.payloadEnd();
        return;
      case 5:
        this.advance(4);
        return;
      default:
        throw new WireError(`wire type ${wireType}`);
    }
  }

  /** The low 32 bits of a varint, exact for any length (varint() rounds a value beyond 2^53, losing them). */
  private low32Bits(): number {
    const start = this.offset;
    const value = this.varint();
    if (this.offset - start <= 7) return value;
    const b = this.buffer;
    return (b[start]! & 127) | ((b[start + 1]! & 127) << 7) | ((b[start + 2]! & 127) << 14) | ((b[start + 3]! & 127) << 21) | ((b[start + 4]! & 15) << 28);
  }

  private text(decode: (buffer: Buffer, start: number, end: number) => string): string {
    const end = this.payloadEnd();
    const start = this.offset;
    this.offset = end;
    return decode(this.buffer, start, end);
  }

  private advance(bytes: number): void {
    if (bytes > this.end - this.offset) throw new WireError('a field runs past the end');
    this.offset += bytes;
  }
}

interface StringSlices {
  latin1Slice(start: number, end: number): string;
  utf8Slice(start: number, end: number): string;
}

/**
 * Char codes to make short strings of, an array per length, reused: for up
 * to 16 characters (most IDs), String.fromCharCode over them beats a native
 * latin1Slice call (about half the time), and allocates nothing else.
 */
const CHAR_CODES = Array.from({ length: 17 }, (_, length) => new Array<number>(length).fill(0));

/**
 * A short string (every ID) that is all ASCII, made without the UTF-8
 * decoder; undefined for any other. Buffer's own slice methods, as
 * protobufjs uses them: `toString` adds argument checks per call.
 */
function shortAscii(buffer: Buffer, start: number, end: number): string | undefined {
  const length = end - start;
  if (length === 0) return '';
  if (length < CHAR_CODES.length) {
    const codes = CHAR_CODES[length]!;
    for (let i = 0; i < length; i++) {
      const code = buffer[start + i]!;
      if (code >= 128) return undefined;
      codes[i] = code;
    }
    return String.fromCharCode.apply(String, codes);
  }
  if (length > 64) return undefined;
  let i = start;
  while (i < end && buffer[i]! < 128) i++;
  return i === end ? (buffer as unknown as StringSlices).latin1Slice(start, end) : undefined;
}

/**
 * UTF-8 as a string, invalid sequences replaced by U+FFFD exactly as
 * TextDecoder replaces them.
 */
function lenientUtf8(buffer: Buffer, start: number, end: number): string {
  return shortAscii(buffer, start, end) ?? (buffer as unknown as StringSlices).utf8Slice(start, end);
}

/**
 * Valid UTF-8 as a string. Beyond short ASCII, the text is decoded as UTF-8
 * (V8's decoder is fast on ASCII too) and the bytes checked only if it holds
 * a replacement character, which is what invalid UTF-8 decodes to — no view
 * and no second pass per string.
 */
export function utf8(buffer: Buffer, start: number, end: number): string {
  const ascii = shortAscii(buffer, start, end);
  if (ascii !== undefined) return ascii;
  const text = (buffer as unknown as StringSlices).utf8Slice(start, end);
  if (text.includes('\ufffd') && !isUtf8(buffer.subarray(start, end))) throw new WireError('a string that is not valid UTF-8');
  return text;
}
