import { defineScript } from './script';

/**
 * READ of a generic entry, with a size guard: the fields come back only when
 * they fit the read limit, so a value that an attacker (or a sidecar with a
 * larger limit) placed in Redis is never sent whole over the link — HSTRLEN
 * is O(1) and copies nothing. The key's type is checked first, so a key of
 * the wrong type is a reply, not an error.
 *
 * KEYS: entry
 * ARGV: max bytes (of the four fields together)
 * Reply (Buffers): {0} no such key; {-1, type} not a hash; {-2, bytes} over
 * the limit; else {1, now, v, d, x, t} (a missing field is nil; now: Redis's
 * clock in µs, which versions are judged against).
 */
const LUA = `
local kind = redis.call('TYPE', KEYS[1])['ok']
if kind == 'none' then return {0} end
if kind ~= 'hash' then return {-1, kind} end
local bytes = redis.call('HSTRLEN', KEYS[1], 'd') + redis.call('HSTRLEN', KEYS[1], 't') + redis.call('HSTRLEN', KEYS[1], 'v') + redis.call('HSTRLEN', KEYS[1], 'x')
if bytes > tonumber(ARGV[1]) then return {-2, bytes} end
local f = redis.call('HMGET', KEYS[1], 'v', 'd', 'x', 't')
local t = redis.call('TIME')
return {1, string.format('%.0f', tonumber(t[1]) * 1000000 + tonumber(t[2])), f[1], f[2], f[3], f[4]}
`;

/** The raw reply; judging the fields is entry-store.ts's. */
export type EntryReadReply =
  | { kind: 'absent' }
  | { kind: 'wrong-type'; type: string }
  | { kind: 'oversized'; bytes: number }
  | { kind: 'found'; nowUs: number; fields: (Buffer | null)[] };

export const entryRead = defineScript({
  name: 'ccEntryRead',
  lua: LUA,
  readOnly: true,
  buffers: true,
  args: ({ keys }, key: string, maxBytes: number) => ({ keys: [keys.entry(key)], argv: [maxBytes] }),
  parse: (reply): EntryReadReply => {
    const parts = reply as (Buffer | number | null)[];
    switch (Number(parts[0])) {
      case 0:
        return { kind: 'absent' };
      case -1:
        return { kind: 'wrong-type', type: String(parts[1]) };
      case -2:
        return { kind: 'oversized', bytes: Number(parts[1]) };
      default:
        return { kind: 'found', nowUs: Number(String(parts[1])), fields: parts.slice(2, 6) as (Buffer | null)[] };
    }
  },
});
