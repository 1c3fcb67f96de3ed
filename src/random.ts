import { randomFillSync } from 'node:crypto';

/**
 * Random tokens — lock tokens, waiter IDs, local lease tokens — as
 * base64url. They are cryptographically random, drawn from a pool that is
 * refilled 4 KiB at a time: one system call per few hundred tokens instead
 * of one per token (crypto.randomUUID keeps a pool the same way). No byte
 * of the pool is handed out twice.
 */
const POOL_BYTES = 4096;
const pool = Buffer.alloc(POOL_BYTES);
let used = POOL_BYTES;

/** `bytes` random bytes (at most 4 KiB), base64url-encoded. */
export function randomToken(bytes: number): string {
  if (!(bytes > 0 && bytes <= POOL_BYTES)) throw new RangeError(`randomToken: ${bytes} bytes`);
  if (used + bytes > POOL_BYTES) {
    randomFillSync(pool);
    used = 0;
  }
  const token = pool.toString('base64url', used, used + bytes);
  used += bytes;
  return token;
}
