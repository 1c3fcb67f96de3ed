import { status } from '@grpc/grpc-js';
import { beforeAll, describe, expect, it } from 'vitest';
import { InclusionReason, Source } from '../../src/client';
import { sidecarsOnRedis } from '../helpers/fixtures';
import { node, session } from '../helpers/nodes';
import type { TestSidecar } from '../helpers/sidecar';
import { rejectionOf, waitFor } from '../helpers/wait';

/** Chat-like sentences, different per node. */
const sentence = (n: number) => `Message ${n}: the sidecar keeps the conversation in memory and in Redis, so the next prompt is built in a millisecond (${n * 7} ms saved).`;

describe('token budgets through real sidecars', () => {
  const fixture = sidecarsOnRedis(2, { CONTEXT_CACHE_NAMESPACE: 'tok', CONTEXT_CACHE_TOKENIZER: 'cl100k_base' });
  let a: TestSidecar;
  let b: TestSidecar;
  beforeAll(() => void ([a, b] = fixture.sidecars));

  it('cut the conversation at the node that no longer fits, with the counts of the chosen tokenizer', async () => {
    await a.client.putSessionNodes({ sessionId: 't1', nodes: session('t1', 12, (n) => ({ content: sentence(n) })) });
    // Counted, not cut: the namespace's default tokenizer unless one is named.
    const counted = await b.client.buildContext({ sessionId: 't1', tokenizer: 'o200k_base' });
    expect(counted.tokenizer).toBe('o200k_base');
    const tokens = counted.nodes.map((n) => n.tokenCount);
    expect(tokens.every((count) => count > 10 && count < 60)).toBe(true);
    expect(counted.totalTokens).toBe(tokens.reduce((sum, count) => sum + count, 0));
    const viaDefault = await b.client.buildContext({ sessionId: 't1', maxTokens: 100_000 });
    expect(viaDefault.tokenizer).toBe('cl100k_base');

    // A budget of the newest five nodes' tokens keeps exactly those five.
    const newestFive = tokens.slice(-5).reduce((sum, count) => sum + count, 0);
    for (const [maxTokens, kept] of [
      [newestFive, 5],
      [newestFive - 1, 4],
    ] as const) {
      const built = await b.client.buildContext({ sessionId: 't1', maxTokens, tokenizer: 'o200k_base' });
      expect(built.nodes.map((n) => n.node?.id)).toEqual(counted.nodes.slice(-kept).map((n) => n.node?.id));
      expect(built.totalTokens).toBe(tokens.slice(-kept).reduce((sum, count) => sum + count, 0));
      expect(built.droppedNodes).toBe(12 - kept);
      expect(built.budgetUsed).toBeCloseTo(built.totalTokens / maxTokens, 10);
      expect(built.needsSummary).toBe(true);
    }
  });

  it('keep pinned nodes and put the newest summary in place of what the budget drops', async () => {
    const nodes = [
      node('t2', 0, { role: 1, content: 'You are a helpful assistant for a cache sidecar.', pinned: true }),
      ...session('t2', 8, (n) => ({ content: sentence(n) })).slice(1),
      node('t2', 8, { content: 'Summary: the user asked about sidecars and Redis; the assistant explained L1 and L2.', summarizesThrough: 't2/n7' }),
      node('t2', 9, { content: sentence(9) }),
      node('t2', 10, { content: sentence(10) }),
    ];
    await a.client.putSessionNodes({ sessionId: 't2', nodes });
    const all = await b.client.buildContext({ sessionId: 't2', maxTokens: 100_000 });
    expect(all.nodes.map((n) => n.node?.id)).not.toContain('t2/n8');
    // The counts as the sidecar's own counter makes them (held to the library's test vectors in tokenizer.test.ts).
    const counts = await b.sidecar.tokenCounter.count('cl100k_base', nodes.map((n) => n.content!));
    const byId = new Map(nodes.map((n, index) => [n.id!, counts[index]!]));
    const budget = byId.get('t2/n0')! + byId.get('t2/n8')! + byId.get('t2/n9')! + byId.get('t2/n10')! + byId.get('t2/n7')!;
    const built = await b.client.buildContext({ sessionId: 't2', maxTokens: budget });
    expect(built.nodes.map((n) => [n.node?.id, n.reason])).toEqual([
      ['t2/n0', InclusionReason.INCLUSION_REASON_CONVERSATION],
      ['t2/n8', InclusionReason.INCLUSION_REASON_SUMMARY],
      ['t2/n7', InclusionReason.INCLUSION_REASON_CONVERSATION],
      ['t2/n9', InclusionReason.INCLUSION_REASON_CONVERSATION],
      ['t2/n10', InclusionReason.INCLUSION_REASON_CONVERSATION],
    ]);
    expect(built.nodes[0]?.node?.pinned).toBe(true);
    expect(built.nodes[1]?.node?.summarizesThrough).toBe('t2/n7');
    expect(built.totalTokens).toBe(budget);
    // The pinned system prompt survives even a budget it alone exceeds.
    const tiny = await b.client.buildContext({ sessionId: 't2', maxTokens: 1 });
    expect(tiny.nodes.map((n) => n.node?.id)).toEqual(['t2/n0', 't2/n10']);
    expect(tiny.budgetUsed).toBeGreaterThan(1);
  });

  it('use the app’s token_count as given, and carry counts through Redis so another sidecar counts nothing', async () => {
    const long = (n: number) => `${sentence(n)} `.repeat(12);
    await a.client.putSessionNodes({ sessionId: 't3', nodes: session('t3', 30, (n) => ({ content: long(n), ...(n === 29 && { tokenCount: 4242 }) })) });
    const onA = await a.client.buildContext({ sessionId: 't3', maxTokens: 1_000_000 });
    expect(onA.nodes.at(-1)?.tokenCount).toBe(4242);
    expect(onA.nodes.at(-1)?.node?.tokenCount).toBe(4242);
    // A wrote the counts back (in the background): a read of the session from Redis shows them.
    await waitFor(async () => (await a.sidecar.redis!.sessions.getMany(['t3']))[0]?.nodes.every((n) => n.tokenCount !== undefined || n.tokens?.cl100k_base !== undefined), 'the counts in Redis');

    const countedBefore = b.sidecar.tokenCounter.counters.texts;
    const onB = await b.client.buildContext({ sessionId: 't3', maxTokens: 1_000_000 });
    expect(onB.source).toBe(Source.SOURCE_L2);
    expect(onB.nodes.map((n) => n.tokenCount)).toEqual(onA.nodes.map((n) => n.tokenCount));
    expect(b.sidecar.tokenCounter.counters.texts).toBe(countedBefore);
  });

  it('append the summary the signal asked for: needs_summary turns off once it stands in', async () => {
    await a.client.putSessionNodes({ sessionId: 't4', nodes: session('t4', 6, (n) => ({ content: sentence(n) })) });
    const before = await a.client.buildContext({ sessionId: 't4', headNodeId: 't4/n5', maxTokens: 200 });
    expect(before.needsSummary).toBe(true);
    expect(before.uncutTokens).toBeGreaterThan(140);
    await a.client.appendNode({ node: node('t4', 6, { content: 'Summary of messages 0 to 5.', summarizesThrough: 't4/n5' }) });
    const after = await b.client.buildContext({ sessionId: 't4', headNodeId: 't4/n6', maxTokens: 200 });
    expect(after.needsSummary).toBe(false);
    expect(after.uncutTokens).toBeLessThan(20);
  });

  it('refuse bad input with INVALID_ARGUMENT and a sentence naming the field', async () => {
    await a.client.putSessionNodes({ sessionId: 't5', nodes: session('t5', 3) });
    const cases: [string, Promise<unknown>, RegExp][] = [
      ['max_tokens over the cap', a.client.buildContext({ sessionId: 't5', maxTokens: 10_000_001 }), /max_tokens is 10000001; the limit is 10000000/],
      ['an unknown tokenizer', a.client.buildContext({ sessionId: 't5', tokenizer: 'gpt2' }), /tokenizer "gpt2" is not a known tokenizer; use one of o200k_base, cl100k_base/],
      ['a threshold over 1', a.client.buildContext({ sessionId: 't5', maxTokens: 10, summaryThreshold: 1.5 }), /summary_threshold is 1.5/],
      ['a summary of a node off its path', a.client.putSessionNodes({ sessionId: 't6', nodes: [node('t6', 0), node('t6', 1, { parentId: '' }), node('t6', 2, { parentId: 't6/n1', summarizesThrough: 't6/n0' })] }), /nodes\[2\]\.summarizes_through "t6\/n0" is not on its path \(the chain of its parent_id\)/],
      ['a summary of a later node', a.client.putSessionNodes({ sessionId: 't6', nodes: [node('t6', 0, { parentId: '', summarizesThrough: 't6/n1' }), node('t6', 1, { parentId: '' })] }), /nodes\[0\]\.summarizes_through "t6\/n1" is not one of the nodes before it in the session/],
      ['an appended summary of a node not in the cached session', a.client.appendNode({ node: node('t5', 3, { summarizesThrough: 't5/missing' }) }), /node\.summarizes_through "t5\/missing" is not on its path/],
      ['a summary of itself', a.client.appendNode({ node: node('t5', 3, { summarizesThrough: 't5/n3' }) }), /names the node itself/],
      ['a pinned summary', a.client.appendNode({ node: node('t5', 3, { summarizesThrough: 't5/n1', pinned: true }) }), /both pinned and a summary/],
      ['token_count over the cap', a.client.appendNode({ node: node('t5', 3, { tokenCount: 20_000_000 }) }), /token_count is 20000000; the limit is 10000000 tokens/],
      ['an unknown token_count_tokenizer', a.client.appendNode({ node: node('t5', 3, { tokenCount: 5, tokenCountTokenizer: 'p50k_base' }) }), /token_count_tokenizer "p50k_base" is not a known tokenizer/],
    ];
    for (const [what, call, message] of cases) {
      const error = await rejectionOf(call);
      expect(error.code, what).toBe(status.INVALID_ARGUMENT);
      expect(error.details, what).toMatch(message);
    }
    // A valid appended summary of the cached session is accepted.
    expect((await a.client.appendNode({ node: node('t5', 3, { summarizesThrough: 't5/n1' }) })).appendedToCachedSession).toBe(true);
  });
});
