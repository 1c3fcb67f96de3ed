import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { afterAll, describe, expect, it } from 'vitest';
import { MAX_EXACT_RUN, WorkerTokenCounter } from '../../src/context/token-counter';
import { TOKENIZERS, type TokenizerName } from '../../src/model/tokenizer';
import { rejectionOf } from '../helpers/wait';

const resolveModule = createRequire(__filename).resolve;

/**
 * The library's own published test vectors (data/TestPlans.txt in the
 * gpt-tokenizer package, which its test suite checks its encoder against):
 * blocks of "EncodingName: …", "Sample: …", "Encoded: [token ids]".
 */
function testVectors(encoding: TokenizerName): { sample: string; tokens: number }[] {
  const text = readFileSync(resolveModule('gpt-tokenizer/data/TestPlans.txt'), 'utf8');
  return text
    .split('\n\n')
    .map((block) => block.split('\n'))
    .filter(([name, sample, encoded]) => name === `EncodingName: ${encoding}` && sample?.startsWith('Sample: ') && encoded?.startsWith('Encoded: '))
    .map(([, sample, encoded]) => ({ sample: sample!.slice('Sample: '.length), tokens: (JSON.parse(encoded!.slice('Encoded: '.length)) as number[]).length }));
}

describe('token counting (gpt-tokenizer in a worker thread)', () => {
  const counter = new WorkerTokenCounter();
  afterAll(() => counter.close());

  it.each(TOKENIZERS)('counts every sample of the library’s published test vectors exactly with %s', async (tokenizer) => {
    const vectors = testVectors(tokenizer);
    expect(vectors.length).toBeGreaterThan(50);
    const counts = await counter.count(tokenizer, vectors.map((vector) => vector.sample));
    expect(counts).toEqual(vectors.map((vector) => vector.tokens));
  });

  it('loads nothing before the first count, and counts each text of a batch in order', async () => {
    const fresh = new WorkerTokenCounter();
    try {
      expect(fresh.counters.workerStarts).toBe(0);
      const texts = ['hello world', '', 'hello world hello world'];
      const counts = await fresh.count('cl100k_base', texts);
      expect(fresh.counters.workerStarts).toBe(1);
      expect(counts[1]).toBe(0);
      expect(counts[2]).toBe(2 * counts[0]!);
    } finally {
      await fresh.close();
    }
  });

  it('counts the text of special tokens as ordinary text, as the model sees a message', async () => {
    const [special, spelled] = await counter.count('o200k_base', ['<|endoftext|>', '<|endoftext|> <|im_start|>']);
    // As a special token it would be one token; as text it is several, and nothing throws.
    expect(special).toBeGreaterThan(1);
    expect(spelled).toBeGreaterThan(special!);
  });

  it('counts a run without whitespace longer than the exact bound in linear time, within 1 % of the exact count', async () => {
    const exactCount = (await import('gpt-tokenizer/encoding/cl100k_base')).countTokens;
    const cjk = '我非常渴望与人工智能一起工作，这是一个关于数据库和缓存的问题。';
    const run = cjk.repeat(Math.ceil((6 * MAX_EXACT_RUN) / cjk.length));
    const exact = exactCount(run);
    const started = performance.now();
    const [counted] = await counter.count('cl100k_base', [run]);
    const [longer] = await counter.count('cl100k_base', [run.repeat(20)]);
    expect(Math.abs(counted! - exact) / exact).toBeLessThan(0.01);
    // Twenty times the text, about twenty times the tokens: no quadratic blow-up (that would take minutes).
    expect(longer! / counted!).toBeGreaterThan(19.5);
    expect(performance.now() - started).toBeLessThan(5_000);
  });

  it('splits a long run only between the two halves of an emoji, never inside one', async () => {
    const emoji = '😀'.repeat(3 * MAX_EXACT_RUN);
    const [whole] = await counter.count('o200k_base', [emoji]);
    const [one] = await counter.count('o200k_base', ['😀']);
    expect(whole).toBe(3 * MAX_EXACT_RUN * one!);
  });

  it('refuses to count after close, with UNAVAILABLE', async () => {
    const closing = new WorkerTokenCounter();
    await closing.count('cl100k_base', ['warm']);
    await closing.close();
    await closing.close();
    const error = await rejectionOf(closing.count('cl100k_base', ['late']));
    expect(error.message).toMatch(/shutting down/);
  });
});
