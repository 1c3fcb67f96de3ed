import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { NearCache } from '../../src/client/near-cache';
import { appendToHeld, buildFromHeld, heldSession, type HeldSession } from '../../src/client/near-context';
import { buildContext, type BuiltContext } from '../../src/context/build-context';
import { conversationPath } from '../../src/prompt/context-rules';
import { BuildContextRequest, type BuildContextResponse, type EntryInfo } from '../../src/gen/contextcache/v1/context_cache';
import type { NodeRecord } from '../../src/model/node';
import { INCLUSION, nodeToProto } from '../../src/server/mapping';
import { coreOnFakes, nodeRecord } from '../helpers/fakes';

/**
 * The near cache builds contexts with the sidecar's rules: for any sessions
 * and any request it may answer, its context is the sidecar's, and it
 * answers every request the sidecar answers whole from the same sessions.
 */

const info = (version: number): EntryInfo => ({ version, expiresAt: new Date(Date.now() + 60_000), tags: [], source: 1, sizeBytes: 1, waitedForFill: false, degraded: false });

/** What both answers must agree on: the nodes in order with why they are there, and the figures. */
function sidecarView(built: BuiltContext) {
  return {
    nodes: built.items.map((item) => [item.node.id, INCLUSION[item.reason], item.referencedBy]),
    droppedNodes: built.droppedNodes,
    totalChars: built.totalChars,
    budgetUsed: built.budgetUsed,
    needsSummary: built.needsSummary,
  };
}
function nearView(built: BuildContextResponse) {
  return {
    nodes: built.nodes.map((item) => [item.node!.id, item.reason, item.referencedBy]),
    droppedNodes: built.droppedNodes,
    totalChars: built.totalChars,
    budgetUsed: built.budgetUsed,
    needsSummary: built.needsSummary,
  };
}

const SESSIONS = ['s0', 's1', 's2'];
const node = fc.record({
  parent: fc.nat(),
  size: fc.integer({ min: 0, max: 60 }),
  time: fc.integer({ min: 0, max: 20 }),
  pinned: fc.nat(9).map((roll) => roll < 2),
  summaryOf: fc.option(fc.nat(), { nil: undefined }),
  refs: fc.array(fc.tuple(fc.nat(SESSIONS.length - 1), fc.nat()), { maxLength: 2 }),
});
const scenario = fc.record({
  sessions: fc.array(fc.array(node, { minLength: 1, maxLength: 12 }), { minLength: SESSIONS.length, maxLength: SESSIONS.length }),
  head: fc.option(fc.nat(), { nil: undefined }),
  maxNodes: fc.oneof(fc.constant(0), fc.nat(8)),
  maxChars: fc.oneof(fc.constant(0), fc.nat(400)),
  includeRefs: fc.boolean(),
  extraRefs: fc.array(fc.tuple(fc.nat(SESSIONS.length - 1), fc.nat()), { maxLength: 2 }),
  maxRefDepth: fc.nat(2),
  summaryThreshold: fc.oneof(fc.constant(0), fc.double({ min: 0.1, max: 1, noNaN: true })),
});

type Scenario = typeof scenario extends fc.Arbitrary<infer T> ? T : never;

/** Sessions of branching conversations (each node's parent an earlier node), with pins, summaries and references within and across sessions. */
function sessionsOf(shapes: Scenario['sessions']): NodeRecord[][] {
  const shortId = ([session, n]: [number, number]) => `${SESSIONS[session]}-${n % 14}`;
  return shapes.map((nodes, s) =>
    nodes.map((shape, n) => {
      const parent = n === 0 ? '' : `${SESSIONS[s]}/n${shape.parent % n}`;
      const summary = shape.summaryOf !== undefined && n > 0 && !shape.pinned ? `${SESSIONS[s]}/n${shape.summaryOf % n}` : undefined;
      return nodeRecord(SESSIONS[s]!, n, {
        parentId: parent,
        content: 'x'.repeat(shape.size),
        createdAt: 1_000 + shape.time,
        ...(shape.pinned && { pinned: true }),
        ...(summary !== undefined && { summarizesThrough: summary }),
        refs: shape.refs.map(shortId),
      });
    }),
  );
}

describe('contexts built by the near cache', () => {
  it('are the sidecar\'s, for every request it builds, and it builds every one the sidecar answers whole', async () => {
    let built = 0;
    await fc.assert(
      fc.asyncProperty(scenario, async (shape) => {
        const sessions = sessionsOf(shape.sessions);
        const core = coreOnFakes({ redis: false });
        const near = new NearCache({ maxBytes: 64 << 20 });
        near.apply({ sequence: 0, time: undefined, originSidecarId: 's', resumeToken: undefined, event: { $case: 'started', value: { sidecarId: 's', subscribed: false, resumed: false, replayedEvents: 0, coherent: true } } });
        for (const nodes of sessions) {
          await core.sessions.put(nodes[0]!.sessionId, nodes, '');
          expect(near.installSession(nodes[0]!.sessionId, near.ticket(), { found: true, nodes: nodes.map(nodeToProto), info: info(1), lease: undefined })).toBe(true);
        }
        const main = sessions[0]!;
        const headNodeId = shape.head === undefined ? '' : main[shape.head % main.length]!.id;
        const extraRefs = shape.extraRefs.map(([session, n]) => `${SESSIONS[session]}-${n % 14}`);
        const request = { sessionId: 's0', headNodeId, maxNodes: shape.maxNodes, maxChars: shape.maxChars, includeRefs: shape.includeRefs, extraRefs, maxRefDepth: shape.maxRefDepth, summaryThreshold: shape.summaryThreshold };
        const fromSidecar = await buildContext(core.sessions, { ...request, maxTokens: 0, tokenizer: undefined });
        const fromNear = near.buildContext(BuildContextRequest.fromPartial(request));
        const whole = fromSidecar.unresolvedShortIds.length === 0 && fromSidecar.missingSessionIds.length === 0;
        if (whole) expect(fromNear).toBeDefined();
        if (fromNear === undefined) return;
        built++;
        expect(nearView(fromNear)).toEqual(sidecarView(fromSidecar));
        expect(fromNear.nodes.map((item) => item.node)).toEqual(fromSidecar.items.map((item) => nodeToProto(item.node)));
      }),
      { numRuns: 400 },
    );
    // The property held for contexts actually built, many of them (the others reference short IDs no session holds).
    expect(built).toBeGreaterThan(100);
  });
});

describe('a session the near cache holds as it grows', () => {
  it('gives the contexts of the same nodes held afresh: what a build remembers of a path follows every append, in any order', () => {
    let compared = 0;
    fc.assert(
      fc.property(
        scenario,
        fc.array(fc.tuple(fc.nat(), fc.nat()), { maxLength: 6 }),
        fc.array(fc.nat(), { minLength: 1, maxLength: 30 }),
        (shape, swaps, picks) => {
          const sessions = sessionsOf(shape.sessions).map((nodes) => nodes.map(nodeToProto));
          const others = new Map(sessions.slice(1).map((nodes) => [nodes[0]!.sessionId, heldSession(nodes, 1, 1)]));
          const owners = new Map(sessions.slice(1).flatMap((nodes) => nodes.filter((node) => node.shortId !== '').map((node) => [node.shortId, node.sessionId] as const)));
          const main = sessions[0]!;
          // Appended in an order where some children may come before their parents (written out of order).
          const order = main.map((_, index) => index);
          for (const [i, j] of swaps) [order[i % order.length], order[j % order.length]] = [order[j % order.length]!, order[i % order.length]!];
          const extraRefs = shape.extraRefs.map(([session, n]) => `${SESSIONS[session]}-${n % 14}`);
          const request = (headNodeId: string) =>
            BuildContextRequest.fromPartial({ sessionId: 's0', headNodeId, maxNodes: shape.maxNodes, maxChars: shape.maxChars, includeRefs: shape.includeRefs, extraRefs, maxRefDepth: shape.maxRefDepth, summaryThreshold: shape.summaryThreshold });
          const atHand = (held: HeldSession) => ({ held: (id: string) => (id === 's0' ? held : others.get(id)), ownerOf: (shortId: string) => (held.byShortId.has(shortId) ? 's0' : owners.get(shortId)) });

          let held = heldSession([main[order[0]!]!], 1, 1);
          for (let step = 1; step <= order.length; step++) {
            const appended = order.slice(0, step).map((index) => main[index]!);
            // Builds at the newest node and at another one held, as turns and regenerated answers do.
            for (const pick of [appended.at(-1)!.id, appended[picks[step % picks.length]! % appended.length]!.id]) {
              const grown = buildFromHeld(atHand(held), request(pick));
              const afresh = heldSession(appended, held.version, 1);
              expect(grown).toEqual(buildFromHeld(atHand(afresh), request(pick)));
              compared++;
            }
            if (step < order.length) held = appendToHeld(held, main[order[step]!]!, step + 1);
          }
        },
      ),
      { numRuns: 300 },
    );
    expect(compared).toBeGreaterThan(1000);
  });
});

describe('the conversation path', () => {
  const session = (links: [string, string][]) => {
    const nodes = links.map(([id, parentId]) => ({ id, shortId: '', parentId, content: id, refs: [] }));
    return { nodes, byId: new Map(nodes.map((node) => [node.id, node])) };
  };
  const ids = (path: readonly { id: string }[] | undefined) => path?.map((node) => node.id);

  it('follows parent links from the head to the root, whichever branch the head is on', () => {
    const branching = session([['a', ''], ['b', 'a'], ['c', 'b'], ['c2', 'b'], ['d', 'c2']]);
    expect(ids(conversationPath(branching, 'd'))).toEqual(['a', 'b', 'c2', 'd']);
    expect(ids(conversationPath(branching, 'c'))).toEqual(['a', 'b', 'c']);
    expect(ids(conversationPath(branching, ''))).toEqual(['a', 'b', 'c', 'c2', 'd']);
    expect(conversationPath(branching, 'zz')).toBeUndefined();
  });

  it('stops at the first node met twice when parent links make a cycle (written out of order)', () => {
    expect(ids(conversationPath(session([['x', 'y'], ['y', 'x']]), 'x'))).toEqual(['y', 'x']);
    expect(ids(conversationPath(session([['a', ''], ['b', 'd'], ['c', 'b'], ['d', 'c'], ['e', 'd']]), 'e'))).toEqual(['b', 'c', 'd', 'e']);
    expect(ids(conversationPath(session([['s', 's']]), 's'))).toEqual(['s']);
  });
});
