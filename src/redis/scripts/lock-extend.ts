import { defineScript } from './script';

/**
 * EXTEND of a distributed lock on one lock master: a new TTL, only by its token.
 *
 * KEYS: lock
 * ARGV: token, ttl_ms
 * Reply: 1 extended, 0 the token does not hold the key.
 */
export const lockExtend = defineScript({
  name: 'ccLockExtend',
  lua: `
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
`,
  args: ({ keys }, resource: string, token: string, ttlMs: number) => ({ keys: [keys.lock(resource)], argv: [token, ttlMs] }),
  parse: (reply): boolean => Number(reply) === 1,
});
