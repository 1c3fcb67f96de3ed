import type * as Snappy from 'snappy';
import { CorruptValueError } from '../errors';

/**
 * The byte format of values in Redis: a 3-byte header, then the payload.
 *
 *   byte 0  magic 0xCC (a value we did not write is recognised as such)
 *   byte 1  format version (1)
 *   byte 2  flags: bit 0 = payload is snappy-compressed
 *
 * Values at or above the threshold are compressed when that makes them
 * smaller; a value that does not shrink is stored as it is.
 */
/** snappy (a native addon, ~8 MiB of RSS) is loaded on the first value that needs it: an L1-only sidecar never does. */
let snappy: typeof Snappy | undefined;
const codecLibrary = (): typeof Snappy => (snappy ??= require('snappy') as typeof Snappy);

const MAGIC = 0xcc;
const FORMAT_VERSION = 1;
const FLAG_SNAPPY = 0b1;
const HEADER_BYTES = 3;

export interface Encoded {
  bytes: Buffer;
  compressed: boolean;
}

export class ValueCodec {
  /** Bytes before and after encoding, for the compression ratio. */
  readonly totals = { rawBytes: 0, storedBytes: 0 };

  constructor(readonly compressionThreshold: number) {}

  encode(value: Buffer): Encoded {
    let payload = value;
    let flags = 0;
    if (value.byteLength >= this.compressionThreshold) {
      const compressed = codecLibrary().compressSync(value);
      if (compressed.byteLength < value.byteLength) {
        payload = compressed;
        flags |= FLAG_SNAPPY;
      }
    }
    const bytes = Buffer.allocUnsafe(HEADER_BYTES + payload.byteLength);
    bytes[0] = MAGIC;
    bytes[1] = FORMAT_VERSION;
    bytes[2] = flags;
    payload.copy(bytes, HEADER_BYTES);
    this.totals.rawBytes += value.byteLength;
    this.totals.storedBytes += bytes.byteLength;
    return { bytes, compressed: flags !== 0 };
  }

  /**
   * The payload, in memory of its own (exact size, not a slice of a reply
   * or of Buffer's pool): what is decoded is kept — in L1, and as the
   * encodings of a session's nodes — so it must keep nothing else alive.
   */
  decode(bytes: Buffer): Buffer {
    if (bytes.byteLength < HEADER_BYTES) throw new CorruptValueError(`${bytes.byteLength} bytes is shorter than the header`);
    if (bytes[0] !== MAGIC) throw new CorruptValueError('not written by context-cache (bad magic byte)');
    if (bytes[1] !== FORMAT_VERSION) throw new CorruptValueError(`format version ${bytes[1]} is not supported`);
    const flags = bytes[2]!;
    if ((flags & ~FLAG_SNAPPY) !== 0) throw new CorruptValueError(`unknown flags ${flags}`);
    const payload = bytes.subarray(HEADER_BYTES);
    if ((flags & FLAG_SNAPPY) === 0) {
      const own = Buffer.allocUnsafeSlow(payload.length);
      payload.copy(own);
      return own;
    }
    try {
      return codecLibrary().uncompressSync(payload) as Buffer;
    } catch (error) {
      throw new CorruptValueError(`snappy payload does not decompress (${(error as Error).message})`);
    }
  }

  /** Stored bytes per raw byte over everything encoded so far; 1 before the first write. */
  get ratio(): number {
    return this.totals.rawBytes === 0 ? 1 : this.totals.storedBytes / this.totals.rawBytes;
  }
}
