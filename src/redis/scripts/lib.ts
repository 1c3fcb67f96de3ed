/**
 * Lua shared by the write scripts.
 *
 * `next_version`: the version of a write is Redis's clock in microseconds,
 * bumped past the previous version of the same key, so versions of a key
 * grow across all sidecars without a shared counter (and without touching a
 * key in another cluster slot). Returns the version as a decimal string (Lua
 * numbers would print 16 digits in exponent form) and Redis's clock in
 * milliseconds.
 */
export const NEXT_VERSION_LUA = `
local function next_version(current)
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
  local prev = tonumber(current or '0') or 0
  if prev >= now then now = prev + 1 end
  return string.format('%.0f', now), tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
`;

/**
 * A fill lease's token as handed to the caller is `<mutex token>.<grant
 * time>` (cache/leases.ts writes it): the Mutex key holds the first part;
 * the second is Redis's clock (µs) read just before the grant, compared with
 * tag invalidation stamps. `lease_holds` is the one lease check of every
 * fill script: the token still holds the lease, so nothing was written or
 * invalidated since it was granted (every write deletes the lease key).
 */
export const LEASE_LUA = `
local function lease_base(token)
  return string.match(token, '^(.+)%.%d+$') or token
end
local function lease_granted_at(token)
  return tonumber(string.match(token, '%.(%d+)$') or '0') or 0
end
local function lease_holds(lease_key, token)
  return redis.call('GET', lease_key) == lease_base(token)
end
`;

/**
 * The wait queue of a distributed lock (lock-acquire, lock-release,
 * lock-leave): a sorted set of waiter IDs scored by arrival (µs) and a hash
 * of each waiter's deadline (Redis ms), which every attempt of the waiter
 * pushes on. A waiter that stops asking (its sidecar died) is dropped once
 * its deadline passes, so it delays the others by at most its lease.
 * `queue_head` drops such waiters from the front (a bounded number per
 * call) and returns the first live one, or nil. Every script calls
 * `queue_repair` first: queue keys of another Redis type are removed (a
 * deadline that is not a number counts as passed). `now_ms` is Redis's clock.
 */
export const LOCK_QUEUE_LUA = `
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000), string.format('%.0f', tonumber(t[1]) * 1000000 + tonumber(t[2]))
end
-- Untrusted like any value in Redis: a queue key of another type is not ours, and would stop the lock for good.
local function queue_repair(queue, deadlines)
  local queue_type = redis.call('TYPE', queue)['ok']
  if queue_type ~= 'zset' and queue_type ~= 'none' then redis.call('DEL', queue) end
  local deadlines_type = redis.call('TYPE', deadlines)['ok']
  if deadlines_type ~= 'hash' and deadlines_type ~= 'none' then redis.call('DEL', deadlines) end
end
local function queue_head(queue, deadlines, now)
  for _ = 1, 64 do
    local head = redis.call('ZRANGE', queue, 0, 0)[1]
    if not head then return nil end
    local deadline = tonumber(redis.call('HGET', deadlines, head) or '0') or 0
    if deadline >= now then return head end
    redis.call('ZREM', queue, head)
    redis.call('HDEL', deadlines, head)
  end
  return redis.call('ZRANGE', queue, 0, 0)[1]
end
local function wake_head(channel, origin, now, resource, head)
  if head then publish_event(channel, origin, now, {e = 'w', r = resource, i = head}) end
end
`;
