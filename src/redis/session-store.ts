import { isAscii } from 'node:buffer';
import type { SessionL2, StoredAppend, StoredSession } from '../context/ports';
import { CorruptValueError } from '../errors';
import type { NodeRecord } from '../model/node';
import { isNodeRecord } from '../model/node-shape';
import { sessionAppend } from './scripts/session-append';
import { sessionCompact } from './scripts/session-compact';
import { sessionInvalidate } from './scripts/session-invalidate';
import { sessionPut } from './scripts/session-put';
import { sessionRead, type SessionReadReply } from './scripts/session-read';
import type { StoreParts } from './store-parts';

/** UTF-8 to string; pure ASCII (most chat text) takes the much faster latin1 path, which reads it the same. */
function text(bytes: Buffer): string {
  return isAscii(bytes) ? bytes.toString('latin1') : bytes.toString('utf8');
}

/** Chunks beyond this many (one per append) are compacted into one on the next read. */
const COMPACT_AFTER_CHUNKS = 16;

/**
 * Sessions and the short-ID index in Redis (layout in keys.ts). A session is
 * a metadata hash and a list of chunks — encoded JSON arrays of nodes: a
 * fill writes one (compressed) chunk, each append pushes one, and a read
 * that finds many compacts them. What comes back from Redis is untrusted: a
 * session that does not decode is deleted and read as a miss.
 */
export class RedisSessionStore implements SessionL2 {
  /** Sessions found unreadable (GetStats adds them to the entries' corrupt values). */
  readonly counters = { corrupt: 0 };

  constructor(
    private readonly parts: StoreParts,
    private readonly onCorrupt: (sessionId: string, error: CorruptValueError) => void,
  ) {}

  /** Reads several sessions in one round trip (a pipeline of atomic reads). */
  async getMany(sessionIds: readonly string[]): Promise<(StoredSession | undefined)[]> {
    const pipeline = this.parts.scripts.pipeline(sessionRead);
    for (const id of sessionIds) this.parts.scripts.queue(pipeline, sessionRead, id);
    const replies = (await this.parts.link.command(pipeline.exec())) ?? [];
    return sessionIds.map((id, index) => {
      const [error, reply] = replies[index] ?? [new Error('no reply')];
      if (error) throw error;
      return this.parse(id, sessionRead.parse(reply));
    });
  }

  put(sessionId: string, nodes: readonly NodeRecord[], ttlMs: number, leaseToken: string): Promise<{ version: number; expiresAt: number } | 'stale'> {
    return this.parts.link.command(this.parts.scripts.run(sessionPut, sessionId, this.chunk(nodes), nodes.length, ttlMs, leaseToken));
  }

  append(node: NodeRecord): Promise<StoredAppend> {
    const json = JSON.stringify(node);
    const chunk = this.parts.codec.encode(Buffer.from(`[${json}]`)).bytes;
    return this.parts.link.command(this.parts.scripts.run(sessionAppend, node.sessionId, chunk, json, node.id));
  }

  invalidate(sessionId: string): Promise<{ existed: boolean; version: number }> {
    return this.parts.link.command(this.parts.scripts.run(sessionInvalidate, sessionId));
  }

  /** The node appended at `version`, if it is still the session's last append (and has the shape of a node). */
  async appendedNode(sessionId: string, version: number): Promise<NodeRecord | undefined> {
    const raw = await this.parts.link.command(this.parts.link.client.get(this.parts.keys.sessionLastAppended(sessionId)));
    if (raw === null) return undefined;
    const newline = raw.indexOf('\n');
    if (newline < 0 || raw.slice(0, newline) !== String(version)) return undefined;
    let node: unknown;
    try {
      node = JSON.parse(raw.slice(newline + 1));
    } catch {
      return undefined;
    }
    return isNodeRecord(node) && node.sessionId === sessionId ? node : undefined;
  }

  async indexShortIds(nodes: readonly NodeRecord[], ttlMs: number): Promise<void> {
    const pipeline = this.parts.link.client.pipeline();
    let count = 0;
    for (const node of nodes) {
      if (node.shortId === '') continue;
      pipeline.set(this.parts.keys.shortId(node.shortId), node.sessionId, 'PX', ttlMs);
      count++;
    }
    if (count > 0) await this.parts.link.command(pipeline.exec());
  }

  async lookupShortIds(shortIds: readonly string[]): Promise<(string | undefined)[]> {
    if (shortIds.length === 0) return [];
    const pipeline = this.parts.link.client.pipeline();
    for (const id of shortIds) pipeline.get(this.parts.keys.shortId(id));
    const replies = (await this.parts.link.command(pipeline.exec())) ?? [];
    return replies.map(([error, value]) => {
      if (error) throw error;
      return (value as string | null) ?? undefined;
    });
  }

  /** One encoded chunk of nodes: the format every session chunk has. */
  private chunk(nodes: readonly NodeRecord[]): Buffer {
    return this.parts.codec.encode(Buffer.from(JSON.stringify(nodes))).bytes;
  }

  /** Compacts many append chunks into one; best effort, skipped if the session changed meanwhile. */
  private compact(sessionId: string, stored: StoredSession): void {
    this.parts.link.command(this.parts.scripts.run(sessionCompact, sessionId, stored.version, this.chunk(stored.nodes))).catch(() => undefined);
  }

  private parse(sessionId: string, reply: SessionReadReply | undefined): StoredSession | undefined {
    if (reply === undefined) return undefined;
    let stored: StoredSession;
    try {
      const version = Number(reply.version.toString());
      if (!Number.isSafeInteger(version) || version <= 0) throw new CorruptValueError(`session version "${reply.version.toString()}" is not a number`);
      const nodes: NodeRecord[] = [];
      for (const chunk of reply.chunks) {
        const parsed: unknown = JSON.parse(text(this.parts.codec.decode(chunk)));
        if (!Array.isArray(parsed)) throw new CorruptValueError('a session chunk is not a list of nodes');
        for (const node of parsed as NodeRecord[]) nodes.push(node);
      }
      const expected = Number(reply.nodeCount.toString());
      // Metadata and chunks are two keys: an eviction can take one without the other.
      if (nodes.length !== expected) throw new CorruptValueError(`session holds ${nodes.length} nodes, its metadata says ${expected}`);
      stored = { nodes, version, expiresAt: Number(reply.expiresAt.toString()) };
    } catch (error) {
      const corrupt = error instanceof CorruptValueError ? error : new CorruptValueError(`session does not decode (${(error as Error).message})`);
      this.counters.corrupt++;
      this.onCorrupt(sessionId, corrupt);
      this.parts.link.client.del(this.parts.keys.sessionMeta(sessionId), this.parts.keys.sessionChunks(sessionId)).catch(() => undefined);
      return undefined;
    }
    if (reply.chunks.length > COMPACT_AFTER_CHUNKS) this.compact(sessionId, stored);
    return stored;
  }
}
