import { defineScript } from './script';

/**
 * COMPACT: rewrites a session's many append chunks as one compressed chunk,
 * only if the session is still at the version that was read (the content is
 * the same, so the version does not change).
 *
 * KEYS: meta, chunks
 * ARGV: version, chunk
 * Reply: 1 compacted, 0 skipped (the session changed meanwhile).
 */
const LUA = `
if redis.call('HGET', KEYS[1], 'v') ~= ARGV[1] then return 0 end
local ttl = redis.call('PTTL', KEYS[2])
redis.call('DEL', KEYS[2])
redis.call('RPUSH', KEYS[2], ARGV[2])
if ttl > 0 then redis.call('PEXPIRE', KEYS[2], ttl) end
return 1
`;

export const sessionCompact = defineScript({
  name: 'ccSessionCompact',
  lua: LUA,
  args: ({ keys }, sessionId: string, version: number, chunk: Buffer) => ({ keys: [keys.sessionMeta(sessionId), keys.sessionChunks(sessionId)], argv: [version, chunk] }),
  parse: (reply) => Number(reply) === 1,
});
