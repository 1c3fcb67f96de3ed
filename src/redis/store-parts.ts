import type { ValueCodec } from './codec';
import type { RedisLink } from './connection';
import type { KeySpace } from './keys';
import type { ScriptRunner } from './scripts/script';

/** What every Redis store works with: the command link, its scripts, the key layout and the value format. */
export interface StoreParts {
  link: RedisLink;
  scripts: ScriptRunner;
  keys: KeySpace;
  codec: ValueCodec;
  /** The most bytes one value may take to be read at all (CONTEXT_CACHE_MAX_MESSAGE_BYTES): larger ones are counted and left, never fetched. */
  maxReadBytes: number;
}
