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
}
