import { PUBLISH_EVENT_LUA } from '../event-wire';
import { LOCK_QUEUE_LUA } from './lib';
import { defineScript } from './script';

/**
 * LEAVE of a waiter that gives up (its wait ran out, its caller went away):
 * it leaves the queue, and if the lock is free the next live waiter is
 * woken, so that the one behind a leaver does not wait for a poll.
 *
 * KEYS: lock, queue, deadlines
 * ARGV: waiter, lock channel, origin, resource
 * Reply: the waiter woken, or ''.
 */
const LUA = `${PUBLISH_EVENT_LUA}${LOCK_QUEUE_LUA}
queue_repair(KEYS[2], KEYS[3])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[3], ARGV[1])
if redis.call('EXISTS', KEYS[1]) == 1 then return '' end
local now = now_ms()
local head = queue_head(KEYS[2], KEYS[3], now)
wake_head(ARGV[2], ARGV[3], now, ARGV[4], head)
return head or ''
`;

export const lockLeave = defineScript({
  name: 'ccLockLeave',
  lua: LUA,
  args: ({ keys, origin }, resource: string, waiter: string) => ({
    keys: [keys.lock(resource), keys.lockQueue(resource), keys.lockWaiters(resource)],
    argv: [waiter, keys.lockChannel, origin, resource],
  }),
  parse: (reply): string => String(reply ?? ''),
});
