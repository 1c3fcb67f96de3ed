import { defineScript } from './script';

/**
 * READ of a session, atomic across its two keys.
 *
 * KEYS: meta, chunks
 * Reply (Buffers): {} for a miss, else {version, expires_at, node_count, chunk...}.
 */
const LUA = `
local meta = redis.call('HMGET', KEYS[1], 'v', 'x', 'n')
if not meta[1] then return {} end
local result = {meta[1], meta[2] or '0', meta[3] or '0'}
for _, chunk in ipairs(redis.call('LRANGE', KEYS[2], 0, -1)) do result[#result + 1] = chunk end
return result
`;

/** The raw reply; decoding the chunks (and judging them) is session-store.ts's. */
export interface SessionReadReply {
  version: Buffer;
  expiresAt: Buffer;
  nodeCount: Buffer;
  chunks: Buffer[];
}

export const sessionRead = defineScript({
  name: 'ccSessionRead',
  lua: LUA,
  readOnly: true,
  buffers: true,
  args: ({ keys }, sessionId: string) => ({ keys: [keys.sessionMeta(sessionId), keys.sessionChunks(sessionId)], argv: [] }),
  parse: (reply): SessionReadReply | undefined => {
    const parts = reply as Buffer[];
    if (parts.length === 0) return undefined;
    return { version: parts[0]!, expiresAt: parts[1]!, nodeCount: parts[2]!, chunks: parts.slice(3) };
  },
});
