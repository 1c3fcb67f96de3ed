import { PUBLISH_EVENT_LUA } from '../event-wire';
import { LOCK_QUEUE_LUA } from './lib';
import { defineScript } from './script';

/**
 * ACQUIRE of a distributed lock on one lock master, in arrival order: the
 * key is taken only when it is free and nobody waits ahead of the caller
 * (the queue is empty, or its head is this waiter). Otherwise a waiter
 * (waiter ID given) joins the queue — keeping its place if it is in it
 * already — and its deadline is pushed to now + lease; a caller that tries
 * once (no waiter ID) is just refused, so it never overtakes a waiter.
 *
 * With a fencing clock (one lock master), the fencing counter advances in
 * the same step: max(counter + 1, clock), so a grant is one round trip.
 * With several masters it is '' and redis/fencing.ts advances the counter
 * by majority afterwards.
 *
 * KEYS: lock, queue, deadlines, fence
 * ARGV: token, ttl_ms, waiter_id ('' : try once), arrival (µs; '' : Redis's
 * clock now), waiter_lease_ms, fencing clock (µs; '' : no fence here)
 * Reply: {1, fence or ''} granted; {0, pttl, arrival} busy (pttl: what is
 * left of the holder's TTL, negative when the key is free but others wait
 * first; arrival: the waiter's place, '' when not queued); {-3, counter}
 * the fencing counter is not a number (nothing was taken).
 */
const LUA = `${PUBLISH_EVENT_LUA}${LOCK_QUEUE_LUA}
queue_repair(KEYS[2], KEYS[3])
local now, now_us = now_ms()
local waiter = ARGV[3]
local head = queue_head(KEYS[2], KEYS[3], now)
if redis.call('EXISTS', KEYS[1]) == 1 or (head and head ~= waiter) then
  if waiter == '' then return {0, redis.call('PTTL', KEYS[1]), ''} end
  local arrival = redis.call('ZSCORE', KEYS[2], waiter)
  if not arrival then
    arrival = ARGV[4] ~= '' and ARGV[4] or now_us
    redis.call('ZADD', KEYS[2], arrival, waiter)
  end
  local lease = tonumber(ARGV[5])
  redis.call('HSET', KEYS[3], waiter, now + lease)
  redis.call('PEXPIRE', KEYS[2], lease)
  redis.call('PEXPIRE', KEYS[3], lease)
  return {0, redis.call('PTTL', KEYS[1]), string.format('%.0f', tonumber(arrival))}
end
local fence = ''
if ARGV[6] ~= '' then
  local raw = redis.call('GET', KEYS[4])
  local current = tonumber(raw or '0')
  if current == nil or current < 0 or current > 9007199254740991 or current ~= math.floor(current) then return {-3, raw} end
  local candidate = math.max(current + 1, tonumber(ARGV[6]))
  fence = string.format('%.0f', candidate)
  redis.call('SET', KEYS[4], fence)
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
if head then
  redis.call('ZREM', KEYS[2], waiter)
  redis.call('HDEL', KEYS[3], waiter)
end
return {1, fence}
`;

export type LockAttemptReply =
  | { kind: 'granted'; fence: number | undefined }
  | { kind: 'busy'; pttlMs: number; arrival: string }
  | { kind: 'corrupt-fence'; value: string };

export const lockAcquire = defineScript({
  name: 'ccLockAcquire',
  lua: LUA,
  args: ({ keys }, resource: string, token: string, ttlMs: number, waiter: string, arrival: string, waiterLeaseMs: number, fencingClockUs: string) => ({
    keys: [keys.lock(resource), keys.lockQueue(resource), keys.lockWaiters(resource), keys.fence(resource)],
    argv: [token, ttlMs, waiter, arrival, waiterLeaseMs, fencingClockUs],
  }),
  parse: (reply): LockAttemptReply => {
    const [status, first, second] = reply as [number, string | number | null, string | undefined];
    if (status === 1) return { kind: 'granted', fence: first === '' || first === null ? undefined : Number(first) };
    if (status === -3) return { kind: 'corrupt-fence', value: String(first) };
    return { kind: 'busy', pttlMs: Number(first), arrival: String(second ?? '') };
  },
});
