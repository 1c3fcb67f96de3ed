import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { buildContext, type BuildContextRequest, type ContextItem } from '../../src/context/build-context';
import { applyBudget } from '../../src/prompt/context-rules';
import type { NodeRecord } from '../../src/model/node';
import { coreOnFakes, fakeTokens, FakeRedis, nodeRecord } from '../helpers/fakes';

/** `words` words of content: as many tokens under the fake o200k_base. */
const words = (n: number, tag = 'w') => Array.from({ length: n }, (_, i) => `${tag}${i}`).join(' ');

/** A linear conversation of nodes with the given sizes in words; extras per index. */
function chat(sessionId: string, sizes: number[], extra: (n: number) => Partial<NodeRecord> = () => ({})): NodeRecord[] {
  return sizes.map((size, n) => nodeRecord(sessionId, n, { content: words(size, `n${n}w`), ...extra(n) }));
}

const request = (sessionId: string, overrides: Partial<BuildContextRequest> = {}): BuildContextRequest => ({
  sessionId,
  headNodeId: '',
  maxNodes: 0,
  maxChars: 0,
  includeRefs: false,
  extraRefs: [],
  maxRefDepth: 0,
  tokenizer: 'o200k_base',
  ...overrides,
});

const ids = (items: { node: NodeRecord }[]) => items.map((item) => item.node.id.split('/')[1]);
const reasons = (items: ContextItem[]) => items.map((item) => `${item.node.id.split('/')[1]}:${item.reason}`);

describe('token budgets', () => {
  it('cut at the newest node that no longer fits, oldest dropped first, and report the tokens', async () => {
    const core = coreOnFakes({ redis: false });
    await core.sessions.put('s', chat('s', [10, 10, 10, 10, 10]), '');
    const exact = await buildContext(core.sessions, request('s', { maxTokens: 30 }));
    expect(ids(exact.items)).toEqual(['n2', 'n3', 'n4']);
    expect(exact.items.map((item) => item.tokens)).toEqual([10, 10, 10]);
    expect([exact.totalTokens, exact.droppedNodes, exact.budgetUsed]).toEqual([30, 2, 1]);
    const justUnder = await buildContext(core.sessions, request('s', { maxTokens: 29 }));
    expect(ids(justUnder.items)).toEqual(['n3', 'n4']);
    expect(justUnder.totalTokens).toBe(20);
    expect(justUnder.uncutTokens).toBe(50);
  });

  it('combine with node and character budgets: the tightest wins', async () => {
    const core = coreOnFakes({ redis: false });
    const nodes = chat('s', [10, 10, 10, 10, 10]);
    const chars = nodes.map((node) => node.content.length);
    await core.sessions.put('s', nodes, '');
    // Tokens allow 4 nodes, nodes 3, characters 2.
    expect(ids((await buildContext(core.sessions, request('s', { maxTokens: 40, maxNodes: 3 }))).items)).toEqual(['n2', 'n3', 'n4']);
    expect(ids((await buildContext(core.sessions, request('s', { maxTokens: 40, maxNodes: 3, maxChars: chars[3]! + chars[4]! }))).items)).toEqual(['n3', 'n4']);
    expect(ids((await buildContext(core.sessions, request('s', { maxTokens: 10, maxNodes: 3 }))).items)).toEqual(['n4']);
  });

  it('are counted once per node and tokenizer: a second context counts nothing, another tokenizer counts again', async () => {
    const core = coreOnFakes({ redis: false });
    await core.sessions.put('s', chat('s', [3, 4, 5]), '');
    const first = await buildContext(core.sessions, request('s', { maxTokens: 100 }));
    expect(core.tokenCounter.counted).toHaveLength(3);
    await buildContext(core.sessions, request('s', { maxTokens: 100 }));
    expect(core.tokenCounter.counted).toHaveLength(3);
    const cl100k = await buildContext(core.sessions, request('s', { maxTokens: 100, tokenizer: 'cl100k_base' }));
    expect(core.tokenCounter.counted).toHaveLength(6);
    expect([first.totalTokens, cl100k.totalTokens]).toEqual([12, 24]);
    expect(cl100k.tokenizer).toBe('cl100k_base');
  });

  it('counts nothing when neither max_tokens nor a tokenizer is asked for', async () => {
    const core = coreOnFakes({ redis: false });
    await core.sessions.put('s', chat('s', [3, 4]), '');
    const built = await buildContext(core.sessions, request('s', { tokenizer: undefined, maxChars: 1000 }));
    expect(core.tokenCounter.callCount()).toBe(0);
    expect([built.totalTokens, built.tokenizer, built.items.map((item) => item.tokens)]).toEqual([0, undefined, [0, 0]]);
  });

  it('use the app’s own counts as given, for their tokenizer only, and count the rest', async () => {
    const core = coreOnFakes({ redis: false });
    const nodes = chat('s', [5, 5, 5], (n) => (n === 0 ? { tokenCount: 1000 } : n === 1 ? { tokenCount: 7, tokenCountTokenizer: 'cl100k_base' } : {}));
    await core.sessions.put('s', nodes, '');
    const o200k = await buildContext(core.sessions, request('s', { maxTokens: 100 }));
    expect(o200k.items.map((item) => item.tokens)).toEqual([5, 5]);
    expect(o200k.droppedNodes).toBe(1); // the app's 1,000 tokens do not fit
    expect(core.tokenCounter.counted.map((c) => c.text)).toEqual([nodes[1]!.content, nodes[2]!.content]);
    const cl100k = await buildContext(core.sessions, request('s', { maxTokens: 2000, tokenizer: 'cl100k_base' }));
    expect(cl100k.items.map((item) => item.tokens)).toEqual([1000, 7, 10]);
  });

  it('share one count among concurrent contexts of the same session', async () => {
    const core = coreOnFakes({ redis: false });
    await core.sessions.put('s', chat('s', [3, 3, 3]), '');
    const held = core.tokenCounter.holdNext();
    const both = Promise.all([buildContext(core.sessions, request('s', { maxTokens: 9 })), buildContext(core.sessions, request('s', { maxTokens: 6 }))]);
    await held.reached;
    held.release();
    const [all, two] = await both;
    expect([all.totalTokens, two.totalTokens]).toEqual([9, 6]);
    expect(core.tokenCounter.callCount()).toBe(1);
  });

  it('fail the context with the counter’s error when counting is not possible', async () => {
    const core = coreOnFakes({ redis: false });
    await core.sessions.put('s', chat('s', [3]), '');
    core.tokenCounter.failNext();
    await expect(buildContext(core.sessions, request('s', { maxTokens: 9 }))).rejects.toThrow(/injected failure/);
    expect((await buildContext(core.sessions, request('s', { maxTokens: 9 }))).totalTokens).toBe(3);
  });

  it('are written back to the shared tier for large sessions, so another sidecar reading it counts nothing', async () => {
    const redis = new FakeRedis();
    const a = coreOnFakes({ redis, origin: 'a' });
    const b = coreOnFakes({ redis, origin: 'b' });
    const big = chat('big', Array.from({ length: 40 }, () => 100)); // 40 × ~600 characters: past the write-back bound
    const small = chat('small', [5, 5]);
    await a.sessions.put('big', big, '');
    await a.sessions.put('small', small, '');
    const built = await buildContext(a.sessions, request('big', { maxTokens: 1000 }));
    await buildContext(a.sessions, request('small', { maxTokens: 1000 }));
    expect(a.shared.sessions.callCount('storeTokenCounts')).toBe(1);
    expect(redis.session('big')!.nodes.every((node) => node.tokens?.o200k_base === 100)).toBe(true);
    expect(redis.session('small')!.nodes.some((node) => node.tokens !== undefined)).toBe(false);

    const onB = await buildContext(b.sessions, request('big', { maxTokens: 1000 }));
    expect(onB.source).toBe('l2');
    expect(b.tokenCounter.callCount()).toBe(0);
    expect(ids(onB.items)).toEqual(ids(built.items));
  });
});

describe('pinned nodes', () => {
  it('survive every budget — nodes, characters, tokens — and are counted first', async () => {
    const core = coreOnFakes({ redis: false });
    await core.sessions.put('s', chat('s', [20, 10, 10, 10, 10], (n) => ({ pinned: n === 0 })), '');
    expect(ids((await buildContext(core.sessions, request('s', { maxTokens: 40 }))).items)).toEqual(['n0', 'n3', 'n4']);
    expect(ids((await buildContext(core.sessions, request('s', { maxNodes: 2 }))).items)).toEqual(['n0', 'n4']);
    expect(ids((await buildContext(core.sessions, request('s', { maxChars: 5 }))).items)).toEqual(['n0', 'n4']);
    // Pinned alone past the budget: kept, and budget_used says so.
    const over = await buildContext(core.sessions, request('s', { maxTokens: 15 }));
    expect(ids(over.items)).toEqual(['n0', 'n4']);
    expect(over.budgetUsed).toBe(2);
    expect(over.needsSummary).toBe(true);
  });

  it('are kept among references too', () => {
    const conversation = chat('s', [10, 10]);
    const ref = (n: number, pinned: boolean): ContextItem => ({ node: nodeRecord('r', n, { content: words(10), pinned }), reason: 'reference', referencedBy: 's-1', tokens: 0 });
    const kept = applyBudget(conversation, [ref(0, false), ref(1, true)], { maxNodes: 0, maxChars: 0, maxTokens: 20 }, (node) => fakeTokens('o200k_base', node.content));
    expect(ids(kept.references)).toEqual(['n1']);
    expect(ids(kept.conversation)).toEqual(['n1']);
    expect(kept.dropped).toBe(2);
  });
});

describe('summary nodes', () => {
  // sys (pinned) → n1 … n6 → S (summarizes through n6) → n8 … n10
  const sizes = [5, 10, 10, 10, 10, 10, 10, 8, 10, 10, 10];
  const withSummary = (through = 's/n6') => chat('s', sizes, (n) => (n === 0 ? { pinned: true } : n === 7 ? { summarizesThrough: through } : {}));

  it('are left out while everything they cover fits', async () => {
    const core = coreOnFakes({ redis: false });
    await core.sessions.put('s', withSummary(), '');
    const all = await buildContext(core.sessions, request('s', { maxTokens: 200 }));
    expect(ids(all.items)).toEqual(['n0', 'n1', 'n2', 'n3', 'n4', 'n5', 'n6', 'n8', 'n9', 'n10']);
    expect(all.droppedNodes).toBe(0);
  });

  it('stand in for the nodes the budget drops, where they were, with their own reason', async () => {
    const core = coreOnFakes({ redis: false });
    await core.sessions.put('s', withSummary(), '');
    // 5 (pinned) + 8 (summary) + 50 of the newest ordinary nodes = 63 tokens.
    const built = await buildContext(core.sessions, request('s', { maxTokens: 63 }));
    expect(reasons(built.items)).toEqual(['n0:conversation', 'n7:summary', 'n5:conversation', 'n6:conversation', 'n8:conversation', 'n9:conversation', 'n10:conversation']);
    expect([built.totalTokens, built.droppedNodes]).toEqual([63, 4]);
    // Room for one node less: the summary still goes in, the oldest kept node gives way.
    const tighter = await buildContext(core.sessions, request('s', { maxTokens: 62 }));
    expect(ids(tighter.items)).toEqual(['n0', 'n7', 'n6', 'n8', 'n9', 'n10']);
  });

  it('the newest one covering the dropped range is chosen', async () => {
    const core = coreOnFakes({ redis: false });
    // S1 at n4 covers n1–n3; S2 at n8 covers n1–n7 (S1 included).
    const nodes = chat('s', [5, 10, 10, 10, 3, 10, 10, 10, 4, 10, 10], (n) => (n === 0 ? { pinned: true } : n === 4 ? { summarizesThrough: 's/n3' } : n === 8 ? { summarizesThrough: 's/n7' } : {}));
    await core.sessions.put('s', nodes, '');
    const built = await buildContext(core.sessions, request('s', { maxTokens: 40 }));
    expect(reasons(built.items)).toEqual(['n0:conversation', 'n8:summary', 'n7:conversation', 'n9:conversation', 'n10:conversation']);
    // Only n1 dropped: both cover it; the newest wins.
    const loose = await buildContext(core.sessions, request('s', { maxTokens: 79 }));
    expect(reasons(loose.items).filter((r) => r.endsWith('summary'))).toEqual(['n8:summary']);
  });

  it('that names a node not on its path counts as an ordinary node', async () => {
    const core = coreOnFakes({ redis: false });
    await core.sessions.put('s', withSummary('s/elsewhere'), '');
    const built = await buildContext(core.sessions, request('s', { maxTokens: 43 }));
    expect(reasons(built.items)).toEqual(['n0:conversation', 'n7:conversation', 'n8:conversation', 'n9:conversation', 'n10:conversation']);
  });

  it('set needs_summary from the uncut context past the threshold, with the newest summary in place of what it covers', async () => {
    const core = coreOnFakes({ redis: false });
    await core.sessions.put('plain', chat('plain', [10, 10, 10]), '');
    const plain = await buildContext(core.sessions, request('plain', { maxTokens: 40 }));
    expect([plain.uncutTokens, plain.budgetUsed, plain.needsSummary]).toEqual([30, 0.75, true]);
    expect((await buildContext(core.sessions, request('plain', { maxTokens: 40, summaryThreshold: 0.8 }))).needsSummary).toBe(false);
    expect((await buildContext(core.sessions, request('plain', { maxTokens: 43 }))).needsSummary).toBe(false);

    await core.sessions.put('s', withSummary(), '');
    // Uncut: 5 pinned + 8 summary + 30 after it = 43, although everything (95) is past the budget.
    const summarized = await buildContext(core.sessions, request('s', { maxTokens: 100 }));
    expect([summarized.uncutTokens, summarized.totalTokens, summarized.needsSummary]).toEqual([43, 95, false]);
    expect((await buildContext(core.sessions, request('s', { maxTokens: 60 }))).needsSummary).toBe(true);
  });

  it('never appear with all they cover, and pinned nodes always appear (any conversation, any budget)', () => {
    const tokens = (node: NodeRecord) => fakeTokens('o200k_base', node.content);
    const scenario = fc.record({
      sizes: fc.array(fc.integer({ min: 0, max: 30 }), { minLength: 1, maxLength: 25 }),
      pins: fc.array(fc.boolean(), { maxLength: 25 }),
      summaries: fc.array(fc.tuple(fc.nat(24), fc.nat(24)), { maxLength: 4 }),
      budget: fc.record({ maxNodes: fc.nat(15), maxChars: fc.oneof(fc.constant(0), fc.nat(3000)), maxTokens: fc.nat(300) }),
      refs: fc.array(fc.integer({ min: 0, max: 20 }), { maxLength: 3 }),
    });
    fc.assert(
      fc.property(scenario, ({ sizes, pins, summaries, budget, refs }) => {
        const nodes = chat('p', sizes);
        pins.forEach((pinned, n) => nodes[n] && pinned && (nodes[n]!.pinned = true));
        for (const [at, through] of summaries) {
          const node = nodes[at];
          if (node && !node.pinned && through < at) node.summarizesThrough = nodes[through]!.id;
        }
        const references = refs.map((size, r): ContextItem => ({ node: nodeRecord('q', r, { content: words(size) }), reason: 'reference', referencedBy: 'p-0', tokens: 0 }));
        const kept = applyBudget(nodes, references, budget, tokens);
        const included = new Set(kept.conversation.map((item) => item.node.id));
        for (const node of nodes) if (node.pinned) expect(included.has(node.id)).toBe(true);
        const standIns = kept.conversation.filter((item) => item.reason === 'summary');
        expect(standIns.length).toBeLessThanOrEqual(1);
        for (const { node: summary } of standIns) {
          const through = nodes.findIndex((node) => node.id === summary.summarizesThrough);
          const covered = nodes.slice(0, through + 1).filter((node) => !node.pinned && !node.summarizesThrough);
          expect(covered.some((node) => !included.has(node.id))).toBe(true);
        }
        // Summaries appear only as stand-ins.
        for (const item of kept.conversation) if (item.node.summarizesThrough) expect(item.reason).toBe('summary');
        // Within every budget, unless the pinned nodes and the head alone exceed it.
        const cost = (list: NodeRecord[]) => ({ nodes: list.length, chars: list.reduce((sum, node) => sum + node.content.length, 0), tokens: list.reduce((sum, node) => sum + tokens(node), 0) });
        const head = [...nodes].reverse().find((node) => !node.pinned && !node.summarizesThrough);
        const floor = cost([...nodes.filter((node) => node.pinned), ...(head ? [head] : [])]);
        const within = (limit: number, used: number) => limit === 0 || used <= limit;
        const withinAll = (c: { nodes: number; chars: number; tokens: number }) => within(budget.maxNodes, c.nodes) && within(budget.maxChars, c.chars) && within(budget.maxTokens, c.tokens);
        if (withinAll(floor)) expect(withinAll(kept.used)).toBe(true);
        const selected = [...kept.conversation, ...kept.references].map((item) => item.node);
        expect(kept.used).toEqual(cost(selected));
      }),
      { numRuns: 300 },
    );
  });
});
