import { defineScript } from './script';

/**
 * DISCARD of a value found corrupt, only if it is still the value that was
 * read: its hash's version field ('v') must be what the reader saw (or still
 * be missing, if it was). Between the read and the discard a writer may have
 * replaced the corrupt value with a good one — every write sets a new
 * version — and an unconditional delete would throw that write away.
 *
 * KEYS: the hash holding 'v' (an entry, or a session's metadata), then the
 * value's other keys (a session's chunks)
 * ARGV: '1' and the version as read, or '0' when the field was missing
 * Reply: 1 removed, 0 left (it changed meanwhile).
 */
const LUA = `
local current = false
if redis.call('TYPE', KEYS[1])['ok'] == 'hash' then current = redis.call('HGET', KEYS[1], 'v') end
if ARGV[1] == '1' then
  if current ~= ARGV[2] then return 0 end
elseif current then
  return 0
end
redis.call('UNLINK', unpack(KEYS))
return 1
`;

/** The version field as the reader saw it: its raw bytes, or undefined when the field was missing. */
export type SeenVersion = Buffer | string | undefined;

export const corruptDiscard = defineScript({
  name: 'ccCorruptDiscard',
  lua: LUA,
  args: (_context, keys: string[], seen: SeenVersion) => ({ keys, argv: seen === undefined ? ['0', ''] : ['1', seen] }),
  parse: (reply) => Number(reply) === 1,
});
