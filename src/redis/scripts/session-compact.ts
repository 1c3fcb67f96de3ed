import { defineScript } from './script';

/**
 * COMPACT: rewrites a session's chunks as one compressed chunk of its nodes
 * — many append chunks after a read, or the nodes with their token counts
 * after a count — only if the session is still at the version that was
 * read (the nodes are the same, so the version does not change). The node
 * count is set with it: a session read from L1 holds a retried append once,
 * its chunks may hold it twice.
 *
 * KEYS: meta, chunks
 * ARGV: version, chunk, node_count
 * Reply: 1 compacted, 0 skipped (the session changed meanwhile).
 */
const LUA = `
if redis.call('HGET', KEYS[1], 'v') ~= ARGV[1] then return 0 end
local ttl = redis.call('PTTL', KEYS[2])
redis.call('DEL', KEYS[2])
redis.call('RPUSH', KEYS[2], ARGV[2])
if ttl > 0 then redis.call('PEXPIRE', KEYS[2], ttl) end
redis.call('HSET', KEYS[1], 'n', ARGV[3])
return 1
`;

export const sessionCompact = defineScript({
  name: 'ccSessionCompact',
  lua: LUA,
  args: ({ keys }, sessionId: string, version: number, chunk: Buffer, nodeCount: number) => ({ keys: [keys.sessionMeta(sessionId), keys.sessionChunks(sessionId)], argv: [version, chunk, nodeCount] }),
  parse: (reply) => Number(reply) === 1,
});
