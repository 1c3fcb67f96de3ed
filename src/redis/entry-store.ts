import type { EntryStore, EntryWrite, EntryWriteOutcome } from '../cache/ports';
import { CorruptValueError } from '../errors';
import type { Entry } from '../model/entry';
import { entryDelete } from './scripts/entry-delete';
import { entrySet } from './scripts/entry-set';
import { tagsInvalidate } from './scripts/tags-invalidate';
import { parseTagField } from './tags';
import type { StoreParts } from './store-parts';

export interface ReadCounters {
  hits: number;
  misses: number;
  corrupt: number;
}

/**
 * Generic entries in Redis: one hash per key (see keys.ts), written only by
 * the scripts. Values read back are untrusted: one that does not decode is
 * deleted and read as a miss (the next fill repairs it).
 */
export class RedisEntryStore implements EntryStore {
  readonly counters: ReadCounters = { hits: 0, misses: 0, corrupt: 0 };

  constructor(
    private readonly parts: StoreParts,
    private readonly onCorrupt: (key: string, error: CorruptValueError) => void,
  ) {}

  /** One round trip for all keys (a pipeline of HMGETs). */
  async getMany(keys: readonly string[]): Promise<(Entry | undefined)[]> {
    const pipeline = this.parts.link.client.pipeline();
    for (const key of keys) pipeline.hmgetBuffer(this.parts.keys.entry(key), 'v', 'd', 'x', 't');
    const replies = (await this.parts.link.command(pipeline.exec())) ?? [];
    return keys.map((key, index) => {
      const [error, fields] = replies[index] ?? [new Error('no reply')];
      if (error && /^WRONGTYPE/.test(error.message)) return this.discard(key, new CorruptValueError('not a context-cache entry (wrong Redis type)'));
      if (error) throw error;
      return this.parse(key, fields as (Buffer | null)[]);
    });
  }

  set(key: string, value: Buffer, write: EntryWrite): Promise<EntryWriteOutcome> {
    return this.parts.link.command(this.parts.scripts.run(entrySet, key, this.parts.codec.encode(value).bytes, write));
  }

  delete(keys: readonly string[]): Promise<{ existed: number; versions: number[] }> {
    return this.parts.link.command(this.parts.scripts.run(entryDelete, keys));
  }

  invalidateTags(tags: readonly string[]): Promise<string[]> {
    return this.parts.link.command(this.parts.scripts.run(tagsInvalidate, tags));
  }

  private parse(key: string, fields: (Buffer | null)[]): Entry | undefined {
    const [version, data, expiresAt, tagField] = fields;
    if (version == null || data == null) {
      this.counters.misses++;
      return undefined;
    }
    try {
      const entry: Entry = {
        value: this.parts.codec.decode(data),
        version: Number(version.toString()),
        expiresAt: Number(expiresAt?.toString() ?? '0'),
        tags: parseTagField(tagField?.toString() ?? ''),
      };
      if (!Number.isSafeInteger(entry.version) || entry.version <= 0) throw new CorruptValueError(`version "${version.toString()}" is not a number`);
      this.counters.hits++;
      return entry;
    } catch (error) {
      if (!(error instanceof CorruptValueError)) throw error;
      return this.discard(key, error);
    }
  }

  /** An unreadable value is a miss; removing it lets the next fill repair it. */
  private discard(key: string, error: CorruptValueError): undefined {
    this.counters.corrupt++;
    this.counters.misses++;
    this.onCorrupt(key, error);
    this.parts.link.client.del(this.parts.keys.entry(key)).catch(() => undefined);
    return undefined;
  }
}
