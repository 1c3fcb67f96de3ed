import { status } from '@grpc/grpc-js';
import { beforeAll, describe, expect, it } from 'vitest';
import { InclusionReason, Role, Source, WriteScope } from '../../src/client';
import { Node, PutSessionNodesRequest } from '../../src/gen/contextcache/v1/context_cache';
import { Timestamp } from '../../src/gen/google/protobuf/timestamp';
import { node, session } from '../helpers/nodes';
import { sidecarsOnRedis } from '../helpers/fixtures';
import { startSidecar, type TestSidecar } from '../helpers/sidecar';
import { rejectionOf } from '../helpers/wait';
import { WatchRecorder } from '../helpers/watch';

describe('conversation context on two sidecars', () => {
  const fixture = sidecarsOnRedis(2, { CONTEXT_CACHE_NAMESPACE: 'ctx' });
  let a: TestSidecar;
  let b: TestSidecar;
  beforeAll(() => void ([a, b] = fixture.sidecars));

  it('stores a session and serves it in order from L2, then L1', async () => {
    const put = await a.client.putSessionNodes({ sessionId: 's1', nodes: session('s1', 5) });
    expect(put.scope).toBe(WriteScope.WRITE_SCOPE_SHARED);
    const first = await b.client.getSessionNodes({ sessionId: 's1' });
    expect(first.found).toBe(true);
    expect(first.info?.source).toBe(Source.SOURCE_L2);
    expect(first.nodes.map((n) => n.id)).toEqual(['s1/n0', 's1/n1', 's1/n2', 's1/n3', 's1/n4']);
    expect(first.nodes[2]?.createdAt?.getTime()).toBe(Date.UTC(2026, 0, 1) + 2000);
    expect((await b.client.getSessionNodes({ sessionId: 's1' })).info?.source).toBe(Source.SOURCE_L1);
    expect((await a.client.getSessionNodes({ sessionId: 'nope' })).found).toBe(false);
  });

  it('appends through to the cached session on every sidecar and to a watcher on the other sidecar', async () => {
    const put = await a.client.putSessionNodes({ sessionId: 's2', nodes: session('s2', 2) });
    await b.client.getSessionNodes({ sessionId: 's2' });
    const watcher = new WatchRecorder(b.client.watch({ sessionIds: ['s2'] }));
    await watcher.started();

    const appended = await a.client.appendNode({ node: node('s2', 2, { content: 'live from device A', metadata: { model: 'm1' } }) });
    expect(appended.appendedToCachedSession).toBe(true);
    // The version it was appended to: a copy at exactly that version may add the node in place.
    expect(appended.previousSessionVersion).toBe(put.info!.version);
    expect(appended.sessionVersion).toBeGreaterThan(put.info!.version);
    const event = await watcher.waitFor((m) => m.event?.$case === 'nodeAppended', 'the node on B');
    expect(event.event?.$case === 'nodeAppended' && event.event.value.node).toMatchObject({ id: 's2/n2', content: 'live from device A', metadata: { model: 'm1' } });
    expect(event.event?.$case === 'nodeAppended' && [event.event.value.previousSessionVersion, event.event.value.sessionVersion]).toEqual([put.info!.version, appended.sessionVersion]);

    const onB = await b.client.getSessionNodes({ sessionId: 's2' });
    expect(onB.nodes.map((n) => n.id)).toEqual(['s2/n0', 's2/n1', 's2/n2']);
    // B applied the append to its L1 copy in place: still an L1 hit.
    expect(onB.info?.source).toBe(Source.SOURCE_L1);
    expect(onB.info?.version).toBe(appended.sessionVersion);
    watcher.cancel();
  });

  it('follows the branch of a branching conversation to its head', async () => {
    // n0 → n1 → n2 (branch A: n3a) and n2 → n3b → n4b
    const nodes = [
      node('br', 0),
      node('br', 1),
      node('br', 2),
      node('br', 3, { id: 'br/n3a', shortId: 'br-3a', parentId: 'br/n2' }),
      node('br', 3, { id: 'br/n3b', shortId: 'br-3b', parentId: 'br/n2' }),
      node('br', 4, { id: 'br/n4b', shortId: 'br-4b', parentId: 'br/n3b' }),
    ];
    await a.client.putSessionNodes({ sessionId: 'br', nodes });
    const branchB = await b.client.buildContext({ sessionId: 'br', headNodeId: 'br/n4b' });
    expect(branchB.nodes.map((n) => n.node?.id)).toEqual(['br/n0', 'br/n1', 'br/n2', 'br/n3b', 'br/n4b']);
    const branchA = await b.client.buildContext({ sessionId: 'br', headNodeId: 'br/n3a' });
    expect(branchA.nodes.map((n) => n.node?.id)).toEqual(['br/n0', 'br/n1', 'br/n2', 'br/n3a']);
    const whole = await b.client.buildContext({ sessionId: 'br' });
    expect(whole.nodes).toHaveLength(6);
    const missingHead = await rejectionOf(b.client.buildContext({ sessionId: 'br', headNodeId: 'br/none' }));
    expect(missingHead.code).toBe(status.NOT_FOUND);
  });

  it('includes cross-session references, deduplicated and safe against cycles', async () => {
    // x-1 refs y-0; y-0 refs x-0 (already in the conversation) and z-0; z-0 refs y-0 (a cycle).
    await a.client.putSessionNodes({ sessionId: 'y', nodes: [node('y', 0, { refs: ['x-0', 'z-0'] })] });
    await a.client.putSessionNodes({ sessionId: 'z', nodes: [node('z', 0, { refs: ['y-0'], createdAt: new Date(Date.UTC(2025, 0, 1)) })] });
    await a.client.putSessionNodes({ sessionId: 'x', nodes: [node('x', 0), node('x', 1, { refs: ['y-0', 'y-0', 'nowhere1'] })] });

    const direct = await b.client.buildContext({ sessionId: 'x', includeRefs: true });
    expect(direct.nodes.map((n) => [n.node?.id, n.reason])).toEqual([
      ['y/n0', InclusionReason.INCLUSION_REASON_REFERENCE],
      ['x/n0', InclusionReason.INCLUSION_REASON_CONVERSATION],
      ['x/n1', InclusionReason.INCLUSION_REASON_CONVERSATION],
    ]);
    expect(direct.nodes[0]?.referencedBy).toBe('x-1');
    expect(direct.unresolvedShortIds).toEqual(['nowhere1']);

    const deep = await b.client.buildContext({ sessionId: 'x', includeRefs: true, maxRefDepth: 5 });
    // z-0 is older than y-0: references come oldest first.
    expect(deep.nodes.map((n) => n.node?.id)).toEqual(['z/n0', 'y/n0', 'x/n0', 'x/n1']);

    const extra = await b.client.buildContext({ sessionId: 'x', extraRefs: ['z-0'] });
    expect(extra.nodes.map((n) => [n.node?.id, n.reason])).toEqual([
      ['z/n0', InclusionReason.INCLUSION_REASON_EXTRA_REF],
      ['x/n0', InclusionReason.INCLUSION_REASON_CONVERSATION],
      ['x/n1', InclusionReason.INCLUSION_REASON_CONVERSATION],
    ]);
  });

  it('reports sessions of references that are not cached, so the app can load them', async () => {
    await a.client.putSessionNodes({ sessionId: 'gone', nodes: [node('gone', 0)] });
    await a.client.putSessionNodes({ sessionId: 'refs-gone', nodes: [node('refs-gone', 0, { refs: ['gone-0'] })] });
    await a.client.invalidateSession({ sessionId: 'gone' });
    const built = await b.client.buildContext({ sessionId: 'refs-gone', includeRefs: true });
    expect(built.unresolvedShortIds).toEqual(['gone-0']);
    expect(built.missingSessionIds).toEqual(['gone']);
    const notCached = await b.client.buildContext({ sessionId: 'never-cached' });
    expect(notCached.sessionFound).toBe(false);
    expect(notCached.missingSessionIds).toEqual(['never-cached']);
  });

  it('keeps within the budget, dropping the oldest conversation nodes but keeping references', async () => {
    await a.client.putSessionNodes({ sessionId: 'ref', nodes: [node('ref', 0, { content: 'r'.repeat(50) })] });
    await a.client.putSessionNodes({
      sessionId: 'long',
      nodes: session('long', 10, (n) => ({ content: String(n).repeat(100), refs: n === 9 ? ['ref-0'] : [] })),
    });
    const byCount = await b.client.buildContext({ sessionId: 'long', includeRefs: true, maxNodes: 4 });
    expect(byCount.nodes.map((n) => n.node?.id)).toEqual(['ref/n0', 'long/n7', 'long/n8', 'long/n9']);
    expect(byCount.droppedNodes).toBe(7);

    const byChars = await b.client.buildContext({ sessionId: 'long', includeRefs: true, maxChars: 370 });
    expect(byChars.nodes.map((n) => n.node?.id)).toEqual(['ref/n0', 'long/n7', 'long/n8', 'long/n9']);
    expect(byChars.totalChars).toBe(350);
    expect(byChars.droppedNodes).toBe(7);
  });

  it('resolves short IDs within the session first, then across the namespace', async () => {
    await a.client.putSessionNodes({ sessionId: 'r1', nodes: [node('r1', 0, { shortId: 'dup' }), node('r1', 1)] });
    const resolved = await b.client.resolveShortIds({ shortIds: ['r1-1', 'x-0', 'missing'], sessionId: 'r1' });
    expect(resolved.nodes.map((n) => n.id)).toEqual(['r1/n1', 'x/n0']);
    expect(resolved.unresolvedShortIds).toEqual(['missing']);
    const malformed = await rejectionOf(b.client.resolveShortIds({ shortIds: ['ok', 'not ok!'] }));
    expect(malformed.code).toBe(status.INVALID_ARGUMENT);
    expect(malformed.details).toMatch(/short_ids\[1\]/);
  });

  it('refuses a stale fill: lease → append elsewhere → fill refused → next read sees the node', async () => {
    const miss = await a.client.getSessionNodes({ sessionId: 'race', leaseOnMiss: true });
    expect(miss.found).toBe(false);
    expect(miss.lease?.token).toBeTruthy();
    // The reader loaded two nodes from its database; meanwhile a writer appends a third.
    const loaded = session('race', 2);
    const appended = await b.client.appendNode({ node: node('race', 2) });
    expect(appended.appendedToCachedSession).toBe(false);

    const fill = await rejectionOf(a.client.putSessionNodes({ sessionId: 'race', nodes: loaded, leaseToken: miss.lease!.token }));
    expect(fill.code).toBe(status.ABORTED);
    expect(fill.details).toMatch(/lease is stale/);

    const again = await a.client.getSessionNodes({ sessionId: 'race', leaseOnMiss: true });
    expect(again.found).toBe(false);
    await a.client.putSessionNodes({ sessionId: 'race', nodes: session('race', 3), leaseToken: again.lease!.token });
    const read = await b.client.getSessionNodes({ sessionId: 'race' });
    expect(read.nodes.map((n) => n.id)).toEqual(['race/n0', 'race/n1', 'race/n2']);
    expect((await b.client.getStats()).leases?.staleFillsRefused ?? 0).toBeGreaterThanOrEqual(0);
    expect((await a.client.getStats()).leases?.staleFillsRefused).toBeGreaterThanOrEqual(1);
  });

  it('rejects malformed nodes with INVALID_ARGUMENT', async () => {
    const cases: [Parameters<typeof a.client.putSessionNodes>[0], RegExp][] = [
      [{ sessionId: 'bad', nodes: [node('bad', 0, { id: '' })] }, /nodes\[0\]\.id is empty/],
      [{ sessionId: 'bad', nodes: [node('bad', 0, { role: 99 as Role })] }, /nodes\[0\]\.role 99 is not a known value/],
      [{ sessionId: 'bad', nodes: [node('bad', 0, { role: Role.ROLE_UNSPECIFIED })] }, /nodes\[0\]\.role 0/],
      [{ sessionId: 'bad', nodes: [node('other', 0)] }, /differs from session_id/],
      [{ sessionId: 'bad', nodes: [node('bad', 0, { shortId: 'has space' })] }, /short_id/],
      [{ sessionId: 'bad', nodes: [node('bad', 0, { refs: ['ok', '#'] })] }, /refs\[1\]/],
      [{ sessionId: '', nodes: [] }, /session_id is empty/],
    ];
    for (const [request, message] of cases) {
      const error = await rejectionOf(a.client.putSessionNodes(request));
      expect(error.code, String(message)).toBe(status.INVALID_ARGUMENT);
      expect(error.details).toMatch(message);
    }
    const noNode = await rejectionOf(a.client.appendNode({}));
    expect(noNode.code).toBe(status.INVALID_ARGUMENT);
  });
});

describe('node timestamps', () => {
  it('a created_at outside the representable range is INVALID_ARGUMENT, not a broken session', async () => {
    const sc = await startSidecar();
    try {
      const raw = await new Promise<{ code: number; details: string }>((resolve) => {
        // seconds = 9e12 is a valid Timestamp on the wire but beyond what a date can hold.
        const request = PutSessionNodesRequest.encode({
          sessionId: 'far',
          nodes: [],
          leaseToken: '',
          ttl: undefined,
        }).finish();
        const nodeBytes = Buffer.from(Node.encode(Node.fromPartial({ ...node('far', 0), createdAt: undefined })).finish());
        const seconds = Buffer.from(Timestamp.encode({ seconds: 9e12, nanos: 0 }).finish());
        const timestamp = Buffer.concat([Buffer.from([0x3a, seconds.length]), seconds]);
        const withNode = Buffer.concat([Buffer.from(request), Buffer.from([0x12, nodeBytes.length + timestamp.length]), nodeBytes, timestamp]);
        sc.client.raw.makeUnaryRequest(
          '/contextcache.v1.ContextCache/PutSessionNodes',
          (b: Buffer) => b,
          (b: Buffer) => b,
          withNode,
          (error: { code: number; details: string } | null) => resolve(error ?? { code: 0, details: '' }),
        );
      });
      expect(raw.code).toBe(status.INVALID_ARGUMENT);
      expect(raw.details).toMatch(/created_at is out of range/);
      expect((await sc.client.getSessionNodes({ sessionId: 'far' })).found).toBe(false);
    } finally {
      await sc.close();
    }
  });
});
