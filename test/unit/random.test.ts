import { describe, expect, it } from 'vitest';
import { randomToken } from '../../src/random';

describe('random tokens', () => {
  it('are of the length asked for, base64url, and never repeat across refills of the pool', () => {
    const seen = new Set<string>();
    // 16 bytes each: 256 tokens per 4 KiB pool, so this crosses about 40 refills, and one partly used pool.
    for (let i = 0; i < 10_000; i++) {
      const token = randomToken(i % 3 === 0 ? 12 : 16);
      expect(token).toMatch(i % 3 === 0 ? /^[A-Za-z0-9_-]{16}$/ : /^[A-Za-z0-9_-]{22}$/);
      seen.add(token);
    }
    expect(seen.size).toBe(10_000);
  });

  it('refuses sizes the pool cannot give', () => {
    expect(() => randomToken(0)).toThrow(RangeError);
    expect(() => randomToken(4097)).toThrow(RangeError);
  });
});
