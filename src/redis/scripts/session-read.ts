import { defineScript } from './script';

/**
 * READ of a session, atomic across its two keys, with guards: both keys'
 * types are checked first (a key of the wrong type is a reply, never an
 * error), the metadata's fields must be short, the chunk list may not be
 * longer than a bound, and the chunks' total size may not pass the byte
 * limit — judged without copying the list when MEMORY USAGE is available
 * (the chunks' bytes plus bounded overhead, so a list well over the limit is
 * refused at once), and in any case by a running total that stops at the
 * first batch over it — so a session that does not fit is never sent.
 *
 * KEYS: meta, chunks
 * ARGV: max bytes (of the chunks together), max chunks
 * Reply (Buffers): {0} a miss; {-1, reason, version or nil} not a session
 * we wrote (the version, as found, lets a discard check nothing changed); {-2,
 * reason} over a limit; else {1, now, version, expires_at, node_count,
 * chunk...} (a missing metadata field is nil; now: Redis's clock in µs,
 * which versions are judged against).
 */
const LUA = `
local kind = redis.call('TYPE', KEYS[1])['ok']
if kind == 'none' then return {0} end
if kind ~= 'hash' then return {-1, 'the metadata is a ' .. kind} end
local chunks_kind = redis.call('TYPE', KEYS[2])['ok']
if chunks_kind ~= 'list' and chunks_kind ~= 'none' then return {-1, 'the chunks are a ' .. chunks_kind, redis.call('HGET', KEYS[1], 'v')} end
for _, field in ipairs({'v', 'x', 'n'}) do
  if redis.call('HSTRLEN', KEYS[1], field) > 20 then return {-1, 'metadata field ' .. field .. ' is too long', redis.call('HGET', KEYS[1], 'v')} end
end
local max_bytes = tonumber(ARGV[1])
local count = redis.call('LLEN', KEYS[2])
if count > tonumber(ARGV[2]) then return {-2, count .. ' chunks'} end
local usage = redis.pcall('MEMORY', 'USAGE', KEYS[2], 'SAMPLES', '0')
-- Allocations round up by at most a quarter, plus a few dozen bytes per element: beyond that, the chunks are over the limit.
if type(usage) == 'number' and usage > max_bytes * 1.25 + count * 64 + 1048576 then return {-2, 'the chunks take ' .. usage .. ' bytes of memory'} end
local meta = redis.call('HMGET', KEYS[1], 'v', 'x', 'n')
local t = redis.call('TIME')
local result = {1, string.format('%.0f', tonumber(t[1]) * 1000000 + tonumber(t[2])), meta[1], meta[2], meta[3]}
local total = 0
local start = 0
while start < count do
  local batch = redis.call('LRANGE', KEYS[2], start, start + 15)
  if #batch == 0 then break end
  for _, chunk in ipairs(batch) do
    total = total + #chunk
    if total > max_bytes then return {-2, 'the chunks are over ' .. max_bytes .. ' bytes'} end
    result[#result + 1] = chunk
  end
  start = start + #batch
end
return result
`;

/** The raw reply; decoding the chunks (and judging them) is session-store.ts's. */
export type SessionReadReply =
  | { kind: 'miss' }
  | { kind: 'corrupt'; reason: string; seenVersion: Buffer | undefined }
  | { kind: 'oversized'; reason: string }
  | { kind: 'found'; nowUs: number; version: Buffer | null; expiresAt: Buffer | null; nodeCount: Buffer | null; chunks: Buffer[] };

export const sessionRead = defineScript({
  name: 'ccSessionRead',
  lua: LUA,
  readOnly: true,
  buffers: true,
  args: ({ keys }, sessionId: string, maxBytes: number, maxChunks: number) => ({
    keys: [keys.sessionMeta(sessionId), keys.sessionChunks(sessionId)],
    argv: [maxBytes, maxChunks],
  }),
  parse: (reply): SessionReadReply => {
    const parts = reply as (Buffer | number | null)[];
    const status = Number(parts[0]);
    if (status === 0) return { kind: 'miss' };
    if (status === -1) return { kind: 'corrupt', reason: String(parts[1]), seenVersion: Buffer.isBuffer(parts[2]) ? parts[2] : undefined };
    if (status < 0) return { kind: 'oversized', reason: String(parts[1]) };
    const [, now, version, expiresAt, nodeCount, ...chunks] = parts as [unknown, Buffer, Buffer | null, Buffer | null, Buffer | null, ...Buffer[]];
    return { kind: 'found', nowUs: Number(String(now)), version, expiresAt, nodeCount, chunks };
  },
});
