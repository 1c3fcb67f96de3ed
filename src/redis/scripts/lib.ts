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
