import type { EntryStore, EntryWrite, EntryWriteOutcome } from '../cache/ports';
import { CorruptValueError } from '../errors';
import type { Entry } from '../model/entry';
import type { RedisLink } from './connection';
import { corruptDiscard, type SeenVersion } from './scripts/corrupt-discard';
import { entryDelete } from './scripts/entry-delete';
import { entryRead, type EntryReadReply } from './scripts/entry-read';
import { entrySet } from './scripts/entry-set';
import { tagsInvalidate } from './scripts/tags-invalidate';
import { parseTagField, TAG_SEPARATOR } from './tags';
import type { StoreParts } from './store-parts';

export interface ReadCounters {
  hits: number;
  misses: number;
  corrupt: number;
}

/**
 * The read limit when none is given: CONTEXT_CACHE_MAX_MESSAGE_BYTES's
 * default. A value larger than what a response may carry can never be
 * served, so it is not fetched.
 */

/** The latest time a Date (and so an expiry or a Timestamp) can hold, in epoch ms. */
export const MAX_TIME_MS = 8.64e15;

/**
 * How far ahead of Redis's clock (µs, read in the same script) a stored
 * version may be: versions are Redis's clock bumped past the previous one,
 * so beyond this margin (clock steps, a failover to a replica that runs
 * behind) a version was not made by our scripts — and one near 2^53 would
 * stop the key's versions from growing (cache/tiers.ts judges the bus's
 * versions the same way).
 */
export const PLAUSIBLE_AHEAD_US = 10 * 60 * 1_000_000;

/** Whether a command or script failed on a key holding the wrong kind of value. */
export function isWrongType(error: unknown): boolean {
  return /WRONGTYPE/.test((error as Error | undefined)?.message ?? '');
}

/** A field of decimal digits, as our scripts write them ('%.0f' or an integer), in [min, max]; anything else is corrupt. */
export function decimalField(bytes: Buffer | null | undefined, what: string, min: number, max: number): number {
  if (bytes === null || bytes === undefined) throw new CorruptValueError(`${what} is missing`);
  const text = bytes.toString('latin1');
  if (!/^(0|[1-9][0-9]{0,15})$/.test(text)) throw new CorruptValueError(`${what} ${JSON.stringify(text.slice(0, 40))} is not a decimal integer`);
  const value = Number(text);
  if (!Number.isSafeInteger(value) || value < min || value > max) throw new CorruptValueError(`${what} ${text} is out of range`);
  return value;
}

/** A version read from Redis: a positive safe integer, not implausibly far ahead of Redis's clock (`nowUs`, read with it). */
export function versionField(bytes: Buffer | null | undefined, what: string, nowUs: number): number {
  const max = Number.isSafeInteger(nowUs) && nowUs > 0 ? Math.min(Number.MAX_SAFE_INTEGER, nowUs + PLAUSIBLE_AHEAD_US) : Number.MAX_SAFE_INTEGER;
  return decimalField(bytes, what, 1, max);
}

/**
 * The size a stored value (codec.ts's format) decodes to, read from its
 * header without decoding it: the payload's length, or for a snappy payload
 * the uncompressed length its preamble (a varint) announces — so that a
 * small compressed value that would inflate past the limit is refused
 * before anything is allocated. 0 when the header does not parse (decoding
 * then reports what is wrong). Belongs in codec.ts, which owns the format.
 */
export function decodedLength(bytes: Buffer): number {
  if (bytes.byteLength < 3) return 0;
  if ((bytes[2]! & 0b1) === 0) return bytes.byteLength - 3;
  let length = 0;
  for (let i = 3, shift = 0; i < bytes.byteLength && shift <= 28; i++, shift += 7) {
    const byte = bytes[i]!;
    length += (byte & 0x7f) * 2 ** shift;
    if ((byte & 0x80) === 0) return length;
  }
  return 0;
}

/** A key of ours and the Redis type it must have. */
export type TypedKey = readonly [key: string, type: 'hash' | 'list' | 'string' | 'zset'];

/**
 * Runs a write script on `link`; when it fails with WRONGTYPE — a key it
 * touches holds another kind of value, which none of our scripts writes —
 * removes those of `expected` (all under the namespace: ours) whose type is
 * wrong, reports them, and runs the write once more. The error stands when
 * no key was of the wrong type, or when the second attempt fails too.
 * `write` makes a new call each time.
 */
export async function writeRepairingTypes<T>(
  link: RedisLink,
  write: () => Promise<T>,
  expected: () => readonly TypedKey[] | Promise<readonly TypedKey[]>,
  onRemoved: (keys: string[]) => void,
  /** The script's name, for traces. */
  operation: string,
): Promise<T> {
  try {
    return await link.command(write(), operation);
  } catch (error) {
    if (!isWrongType(error)) throw error;
    const removed = await removeWrongTypes(link, await expected());
    if (removed.length === 0) throw error;
    onRemoved(removed);
    return link.command(write(), operation);
  }
}

/** Removes the keys whose type is neither the expected one nor none (UNLINK: a large value is freed off Redis's main thread); returns them. */
export async function removeWrongTypes(link: RedisLink, expected: readonly TypedKey[]): Promise<string[]> {
  if (expected.length === 0) return [];
  const replies = await link.batch(expected.map(([key]) => ({ key, queue: (p) => p.type(key) })), 'TYPE');
  const wrong = expected.filter(([, type], index) => {
    const answer = replies[index]!;
    return 'reply' in answer && answer.reply !== 'none' && answer.reply !== type;
  });
  if (wrong.length === 0) return [];
  // One UNLINK per key: the keys may live in different cluster slots.
  await link.batch(wrong.map(([key]) => ({ key, queue: (p) => p.unlink(key) })), 'UNLINK');
  return wrong.map(([key]) => key);
}

/**
 * Generic entries in Redis: one hash per key (see keys.ts), written only by
 * the scripts. Values read back are untrusted: one that does not decode —
 * any field missing or malformed, a key of another type — is deleted and
 * read as a miss (the next fill repairs it); one over the read limit is a
 * miss too, and is not fetched. Writes that meet a key of the wrong type
 * remove it and try once more.
 */
export class RedisEntryStore implements EntryStore {
  readonly counters: ReadCounters = { hits: 0, misses: 0, corrupt: 0 };

  constructor(
    private readonly parts: StoreParts,
    private readonly onCorrupt: (key: string, error: CorruptValueError) => void,
  ) {}

  /** One round trip for all keys (a pipeline of guarded reads, entry-read.ts). */
  async getMany(keys: readonly string[]): Promise<(Entry | undefined)[]> {
    const { link, scripts, maxReadBytes } = this.parts;
    const replies = await scripts.runEach(entryRead, keys.map((key) => [key, maxReadBytes] as [string, number]), link);
    return keys.map((key, index) => {
      const answer = replies[index]!;
      if ('reply' in answer) return this.judge(key, answer.reply);
      if (isWrongType(answer.error)) return this.discard(key, new CorruptValueError('not a context-cache entry (wrong Redis type)'));
      throw answer.error;
    });
  }

  set(key: string, value: Buffer, write: EntryWrite): Promise<EntryWriteOutcome> {
    const data = this.parts.codec.encode(value).bytes;
    const { keys } = this.parts;
    return writeRepairingTypes(
      this.parts.link,
      () => this.parts.scripts.run(entrySet, key, data, write),
      () => [
        [keys.entry(key), 'hash'],
        [keys.lease({ kind: 'entry', id: key }), 'string'],
        ...write.tags.map((tag): TypedKey => [keys.tag(tag, keys.bucket(key)), 'zset']),
        ...write.tags.map((tag): TypedKey => [keys.tagStamp(tag, keys.bucket(key)), 'string']),
      ],
      (removed) => this.removed(key, removed),
      entrySet.name,
    );
  }

  /**
   * One Delete script per bucket the keys fall in (one on a single server):
   * on a Cluster each bucket is a slot of its own. Versions come back in the
   * order of `keys`.
   */
  async delete(keys: readonly string[]): Promise<{ existed: number; versions: number[] }> {
    const space = this.parts.keys;
    const groups = new Map<number, string[]>();
    for (const key of keys) {
      const bucket = space.bucket(key);
      let group = groups.get(bucket);
      if (group === undefined) groups.set(bucket, (group = []));
      group.push(key);
    }
    const outcomes = await Promise.all(
      [...groups.values()].map((group) =>
        writeRepairingTypes(
          this.parts.link,
          () => this.parts.scripts.run(entryDelete, group),
          () => group.flatMap((key): TypedKey[] => [
            [space.entry(key), 'hash'],
            [space.lease({ kind: 'entry', id: key }), 'string'],
          ]),
          (removed) => this.removed(group[0] ?? '', removed),
          entryDelete.name,
        ).then((outcome) => ({ group, outcome })),
      ),
    );
    const versionOf = new Map<string, number>();
    let existed = 0;
    for (const { group, outcome } of outcomes) {
      existed += outcome.existed;
      group.forEach((key, index) => versionOf.set(key, outcome.versions[index]!));
    }
    return { existed, versions: keys.map((key) => versionOf.get(key)!) };
  }

  /**
   * One script per bucket (one on a single server; CLUSTER_BUCKETS on a
   * Cluster, sent at once, so each shard runs its buckets' short scripts in
   * turn and none is blocked for long). The keys removed, from every bucket.
   */
  async invalidateTags(tags: readonly string[]): Promise<string[]> {
    const space = this.parts.keys;
    const removed = await Promise.all(
      space.bucketList.map((bucket) =>
        writeRepairingTypes(
          this.parts.link,
          () => this.parts.scripts.run(tagsInvalidate, tags, bucket),
          async () => {
            // The script also reads the entries its tag sets name: those must be hashes too.
            const members = await this.parts.link.batch(tags.map((tag) => ({ key: space.tag(tag, bucket), queue: (p) => p.zrange(space.tag(tag, bucket), '0', '-1') })), 'ZRANGE');
            const entryKeys = new Set(members.flatMap((answer) => ('reply' in answer ? (answer.reply as string[]) : [])));
            return [
              ...tags.map((tag): TypedKey => [space.tag(tag, bucket), 'zset']),
              ...tags.map((tag): TypedKey => [space.tagStamp(tag, bucket), 'string']),
              ...[...entryKeys].map((key): TypedKey => [space.entry(key), 'hash']),
            ];
          },
          (keys) => this.removed(tags[0] ?? '', keys),
          tagsInvalidate.name,
        ),
      ),
    );
    return removed.flat();
  }

  private judge(key: string, reply: EntryReadReply): Entry | undefined {
    switch (reply.kind) {
      case 'absent':
        this.counters.misses++;
        return undefined;
      case 'wrong-type':
        return this.discard(key, new CorruptValueError(`not a context-cache entry (a Redis ${reply.type})`));
      case 'oversized':
        return this.oversized(key, `the entry takes ${reply.bytes} bytes in Redis`);
      case 'found':
        return this.parse(key, reply.fields, reply.nowUs);
    }
  }

  private parse(key: string, fields: (Buffer | null)[], nowUs: number): Entry | undefined {
    const [version, data, expiresAt, tagField] = fields;
    try {
      // The key exists (the script saw a hash), so each field our script writes must be there.
      if (data == null) throw new CorruptValueError('the value field is missing');
      const decoded = decodedLength(data);
      if (decoded > this.parts.maxReadBytes) return this.oversized(key, `the value decodes to ${decoded} bytes`);
      const entry: Entry = {
        version: versionField(version, 'version', nowUs),
        expiresAt: decimalField(expiresAt, 'expiry', 0, MAX_TIME_MS),
        tags: tagsOf(tagField),
        value: this.parts.codec.decode(data),
      };
      this.counters.hits++;
      return entry;
    } catch (error) {
      if (!(error instanceof CorruptValueError)) throw error;
      return this.discard(key, error, version ?? undefined);
    }
  }

  /**
   * An unreadable value is a miss; removing it lets the next fill repair it
   * — unless a writer replaced it meanwhile (corrupt-discard.ts).
   */
  private discard(key: string, error: CorruptValueError, seen?: SeenVersion): undefined {
    this.counters.corrupt++;
    this.counters.misses++;
    this.onCorrupt(key, error);
    const { keys, scripts, link } = this.parts;
    link.command(scripts.run(corruptDiscard, [keys.entry(key)], seen), corruptDiscard.name).catch(() => undefined);
    return undefined;
  }

  /**
   * A value over the read limit is counted as corrupt and read as a miss,
   * but left in place: it could be the legitimate value of a sidecar (another
   * version, or another configuration) with a larger limit, which still
   * reads it; the next write of the key replaces it anyway.
   */
  private oversized(key: string, what: string): undefined {
    this.counters.corrupt++;
    this.counters.misses++;
    this.onCorrupt(key, new CorruptValueError(`${what}, over the read limit of ${this.parts.maxReadBytes} bytes; not fetched, left in place`));
    return undefined;
  }

  private removed(name: string, keys: string[]): void {
    this.counters.corrupt += keys.length;
    this.onCorrupt(name, new CorruptValueError(`${keys.join(', ')} held the wrong Redis type; removed before the write was retried`));
  }
}

/** The tag field as entry-set.ts writes it: '' or tags between separators, none empty. */
function tagsOf(field: Buffer | null | undefined): string[] {
  if (field === null || field === undefined) throw new CorruptValueError('the tag field is missing');
  const text = field.toString('utf8');
  if (text === '') return [];
  if (text.length < 3 || !text.startsWith(TAG_SEPARATOR) || !text.endsWith(TAG_SEPARATOR)) throw new CorruptValueError('the tag field is not a list of tags between separators');
  const tags = parseTagField(text);
  if (tags.some((tag) => tag === '')) throw new CorruptValueError('the tag field holds an empty tag');
  return tags;
}
