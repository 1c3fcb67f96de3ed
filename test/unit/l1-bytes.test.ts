import { describe, expect, it } from 'vitest';
import { nodeSize, stringBytes } from '../../src/model/node';
import { nodeRecord } from '../helpers/fakes';

describe('L1 accounting in real bytes', () => {
  it('counts a string as V8 holds it plus its UTF-8 encoding', () => {
    expect(stringBytes('')).toBe(0);
    expect(stringBytes('a'.repeat(1000))).toBe(16 + 1000 + 1000);
    // An emoji is two UTF-16 units and four UTF-8 bytes.
    expect(stringBytes('😀'.repeat(500))).toBe(16 + 2 * 1000 + 2000);
    // A CJK character is one UTF-16 unit and three UTF-8 bytes.
    expect(stringBytes('字'.repeat(1000))).toBe(16 + 2000 + 3000);
  });

  it('makes emoji content cost more than ASCII of the same length, as it does in memory', () => {
    const ascii = nodeSize({ ...nodeRecord('s', 0), content: 'a'.repeat(10_000) });
    const emoji = nodeSize({ ...nodeRecord('s', 0), content: '😀'.repeat(5_000) });
    expect(emoji / ascii).toBeGreaterThan(1.9);
  });
});
