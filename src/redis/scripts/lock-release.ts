import { PUBLISH_EVENT_LUA } from '../event-wire';
import { LOCK_QUEUE_LUA } from './lib';
import { defineScript } from './script';

/**
 * RELEASE of a distributed lock on one lock master: only by its token.
 * When somebody waits, the first live waiter is woken (a message on the
 * master's lock channel naming it), in the same step: the release is the
 * wake-up, nobody polls for it. With a requeue (a grant that got no
 * majority is rolled back), the caller's waiter keeps its place instead.
 *
 * KEYS: lock, queue, deadlines
 * ARGV: token, lock channel, origin, resource, requeue waiter ('' : none),
 * its arrival, waiter_lease_ms
 * Reply: {1, head or ''} released (head: the waiter woken); {0, ''} the
 * token does not hold the key.
 */
const LUA = `${PUBLISH_EVENT_LUA}${LOCK_QUEUE_LUA}
queue_repair(KEYS[2], KEYS[3])
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return {0, ''} end
redis.call('DEL', KEYS[1])
local now = now_ms()
if ARGV[5] ~= '' then
  local lease = tonumber(ARGV[7])
  redis.call('ZADD', KEYS[2], 'NX', ARGV[6], ARGV[5])
  redis.call('HSET', KEYS[3], ARGV[5], now + lease)
  redis.call('PEXPIRE', KEYS[2], lease)
  redis.call('PEXPIRE', KEYS[3], lease)
end
local head = queue_head(KEYS[2], KEYS[3], now)
wake_head(ARGV[2], ARGV[3], now, ARGV[4], head)
return {1, head or ''}
`;

export const lockRelease = defineScript({
  name: 'ccLockRelease',
  lua: LUA,
  args: ({ keys, origin }, resource: string, token: string, requeue?: { waiter: string; arrival: string; leaseMs: number }) => ({
    keys: [keys.lock(resource), keys.lockQueue(resource), keys.lockWaiters(resource)],
    argv: [token, keys.lockChannel, origin, resource, requeue?.waiter ?? '', requeue?.arrival ?? '', requeue?.leaseMs ?? 0],
  }),
  parse: (reply): { released: boolean; woken: string } => {
    const [status, head] = reply as [number, string];
    return { released: status === 1, woken: String(head ?? '') };
  },
});
