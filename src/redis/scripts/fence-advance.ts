import { defineScript } from './script';

/**
 * SET IF GREATER of a fencing counter (see redis/fencing.ts).
 *
 * KEYS: the fence key
 * ARGV: the candidate token
 * Reply: 1 when the candidate was stored because it is greater than the
 * stored value (a missing or unreadable value counts as 0), else 0.
 */
const LUA = `
local current = tonumber(redis.call('GET', KEYS[1]) or '0') or 0
if tonumber(ARGV[1]) > current then
  redis.call('SET', KEYS[1], ARGV[1])
  return 1
end
return 0
`;

export const fenceAdvance = defineScript({
  name: 'ccFenceAdvance',
  lua: LUA,
  args: ({ keys }, resource: string, candidate: number) => ({ keys: [keys.fence(resource)], argv: [candidate] }),
  parse: (reply) => Number(reply) === 1,
});
