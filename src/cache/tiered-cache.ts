import { conflict } from '../errors';
import { L1Cache, type Entry } from './l1';

export type Tier = 'l1' | 'l2';
/** `local`: only this sidecar's memory holds the write; `shared`: Redis and every sidecar do. */
export type WriteScope = 'local' | 'shared';

export interface ReadResult {
  entry: Entry;
  source: Tier;
}

export interface SetOptions {
  ttlMs: number;
  tags: readonly string[];
  /** Compare-and-set on the current version (0: no condition). */
  ifVersion: number;
  ifAbsent: boolean;
}

export interface WriteResult {
  entry: Entry;
  scope: WriteScope;
}

/**
 * Issues versions that grow with every write: microseconds of wall clock,
 * bumped past the last issued one, so versions keep increasing across a
 * restart of the process as long as the clock does not step back.
 */
export class VersionClock {
  private last = 0;

  next(): number {
    this.last = Math.max(this.last + 1, Date.now() * 1000);
    return this.last;
  }
}

/**
 * The generic key/value cache: the one place that decides which tier answers
 * a read and where a write goes. It knows nothing of gRPC.
 */
export class TieredCache {
  private readonly versions = new VersionClock();

  constructor(readonly l1: L1Cache) {}

  get(key: string): ReadResult | undefined {
    const entry = this.l1.get(key);
    return entry === undefined ? undefined : { entry, source: 'l1' };
  }

  getMany(keys: readonly string[]): (ReadResult | undefined)[] {
    return keys.map((key) => this.get(key));
  }

  set(key: string, value: Buffer, options: SetOptions): WriteResult {
    const current = this.l1.peek(key);
    if (options.ifAbsent && current !== undefined) {
      throw conflict(`key "${key}" exists (version ${current.version}); if_absent refused the write`);
    }
    if (options.ifVersion !== 0 && current?.version !== options.ifVersion) {
      throw conflict(
        current === undefined
          ? `key "${key}" does not exist; if_version ${options.ifVersion} refused the write`
          : `key "${key}" has version ${current.version}, not ${options.ifVersion}; if_version refused the write`,
      );
    }
    const now = Date.now();
    const entry: Entry = {
      value,
      version: this.versions.next(),
      tags: options.tags,
      expiresAt: options.ttlMs > 0 ? now + options.ttlMs : 0,
    };
    this.l1.set(key, entry, now);
    return { entry, scope: 'local' };
  }

  delete(keys: readonly string[]): { deleted: number; scope: WriteScope } {
    let deleted = 0;
    for (const key of new Set(keys)) if (this.l1.delete(key)) deleted++;
    return { deleted, scope: 'local' };
  }

  invalidateTags(tags: readonly string[]): { localEntriesRemoved: number; scope: WriteScope } {
    return { localEntriesRemoved: this.l1.invalidateTags(tags), scope: 'local' };
  }
}
