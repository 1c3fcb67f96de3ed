import { describe, expect, it } from 'vitest';
import { CountBoundedMap } from '../../src/cache/bounded';

describe('CountBoundedMap', () => {
  it('holds at most its bound, dropping the oldest insertion; a changed value counts as a new insertion, the same value does not', () => {
    const map = new CountBoundedMap<string, string>(3);
    map.set('a', 's1');
    map.set('b', 's1');
    map.set('c', 's1');
    map.set('a', 's1'); // unchanged: 'a' stays the oldest
    map.set('b', 's2'); // changed: 'b' is now the newest
    map.set('d', 's1');
    expect(map.size).toBe(3);
    expect([map.get('a'), map.get('b'), map.get('c'), map.get('d')]).toEqual([undefined, 's2', 's1', 's1']);
    map.set('e', 's1');
    expect([map.get('c'), map.get('b'), map.get('e')]).toEqual([undefined, 's2', 's1']);
    expect(map.delete('b')).toBe(true);
    expect(map.size).toBe(2);
  });
});
