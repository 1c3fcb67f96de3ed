import type { SessionL2, StoredAppend, StoredSession } from '../context/ports';
import { CorruptValueError } from '../errors';
import type { NodeRecord } from '../model/node';
import { isNodeRecord } from '../model/node-shape';
import { decimalField, decodedLength, isWrongType, MAX_TIME_MS, versionField, writeRepairingTypes, type TypedKey } from './entry-store';
import { corruptDiscard, type SeenVersion } from './scripts/corrupt-discard';
import { sessionAppend } from './scripts/session-append';
import { sessionCompact } from './scripts/session-compact';
import { sessionInvalidate } from './scripts/session-invalidate';
import { sessionPut } from './scripts/session-put';
import { sessionRead, type SessionReadReply } from './scripts/session-read';
import { decodeChunk, encodeChunk } from './session-chunks';
import type { StoreParts } from './store-parts';

/** Chunks beyond this many (one per append) are compacted into one on the next read. */
const COMPACT_AFTER_CHUNKS = 16;

/**
 * Bounds of a session read, in multiples of the read limit (the largest
 * response). Chunks are the nodes' protobuf (a few bytes per node more than
 * the response), but chunks written before that format are JSON, which can
 * legitimately be larger than the protobuf the write path bounds by that
 * limit: field names in every node, and escapes — a control character is 6
 * bytes of JSON, so the decoded chunks get 8 times the limit. Stored chunks
 * are compressed (a fill, a compaction, any append over the compression
 * threshold), so what Redis sends gets twice the limit. A session over
 * either bound could never be served anyway.
 */
const STORED_BYTES_PER_LIMIT = 2;
const DECODED_BYTES_PER_LIMIT = 8;
/** Chunks one session may have (one per append between reads, which compact them): far beyond any real session. */
const MAX_CHUNKS = 100_000;
/** Session IDs are at most 256 bytes (validated at the edge): what the short-ID index may hold. */
const MAX_SESSION_ID_BYTES = 256;

/** A session over the read limits: a miss, counted, not deleted (see `oversized`). */
class OversizedSession extends Error {}

/**
 * Sessions and the short-ID index in Redis (layout in keys.ts). A session is
 * a metadata hash and a list of chunks of nodes (session-chunks.ts): a
 * fill writes one (compressed) chunk, each append pushes one, and a read
 * that finds many compacts them. What comes back from Redis is untrusted: a
 * session that does not decode — a chunk that is not a list of nodes of
 * this session, metadata that is missing or malformed, a key of another
 * Redis type — is deleted and read as a miss; one over the read limits is a
 * miss too, and is not fetched. Writes that meet a key of the wrong type
 * remove it and try once more.
 */
export class RedisSessionStore implements SessionL2 {
  /** Sessions found unreadable (GetStats adds them to the entries' corrupt values). */
  readonly counters = { corrupt: 0 };

  constructor(
    private readonly parts: StoreParts,
    private readonly onCorrupt: (sessionId: string, error: CorruptValueError) => void,
  ) {}

  /** Reads several sessions in one round trip (a pipeline of atomic, guarded reads). */
  getMany(sessionIds: readonly string[]): Promise<(StoredSession | undefined)[]> {
    return this.readMany(sessionIds);
  }

  /**
   * Only the nodes of each session whose short IDs are asked for (one round
   * trip, as getMany): the rest of each session is walked over, never
   * decoded — what a cross-session reference needs of a session it does
   * not hold. A session that is corrupt or oversized is judged as getMany
   * judges it.
   */
  pickMany(sessionIds: readonly string[], shortIds: readonly ReadonlySet<string>[]): Promise<(StoredSession | undefined)[]> {
    return this.readMany(sessionIds, shortIds);
  }

  /** Sessions, each whole or (with `wanted`) only its nodes with the short IDs in its set. */
  private async readMany(sessionIds: readonly string[], wanted?: readonly ReadonlySet<string>[]): Promise<(StoredSession | undefined)[]> {
    const { link, scripts, maxReadBytes } = this.parts;
    const calls = sessionIds.map((id) => [id, maxReadBytes * STORED_BYTES_PER_LIMIT, MAX_CHUNKS] as [string, number, number]);
    const replies = await scripts.runEach(sessionRead, calls, link);
    return sessionIds.map((id, index) => {
      const answer = replies[index]!;
      if ('reply' in answer) return this.judge(id, answer.reply, wanted?.[index]);
      // The script checks the keys' types; should a read still meet one of the wrong type, it is corruption too, not a failure of Redis.
      if (isWrongType(answer.error)) return this.discard(id, new CorruptValueError('not a context-cache session (wrong Redis type)'));
      throw answer.error;
    });
  }

  put(sessionId: string, nodes: readonly NodeRecord[], ttlMs: number, leaseToken: string): Promise<{ version: number; expiresAt: number } | 'stale'> {
    const chunk = this.chunk(nodes);
    return this.write(sessionId, sessionPut.name, () => this.parts.scripts.run(sessionPut, sessionId, chunk, nodes.length, ttlMs, leaseToken));
  }

  append(node: NodeRecord): Promise<StoredAppend> {
    // The last-appended key keeps the node as JSON (what appendedNode reads).
    const json = JSON.stringify(node);
    const chunk = this.chunk([node]);
    return this.write(node.sessionId, sessionAppend.name, () => this.parts.scripts.run(sessionAppend, node.sessionId, chunk, json, node.id));
  }

  invalidate(sessionId: string): Promise<{ existed: boolean; version: number }> {
    return this.write(sessionId, sessionInvalidate.name, () => this.parts.scripts.run(sessionInvalidate, sessionId));
  }

  /** The node appended at `version`, if it is still the session's last append (and has the shape of a node). */
  async appendedNode(sessionId: string, version: number): Promise<NodeRecord | undefined> {
    const key = this.parts.keys.sessionLastAppended(sessionId);
    // GETRANGE bounds what is fetched (a node's JSON: within the decoded bound of a session).
    const limit = this.parts.maxReadBytes * DECODED_BYTES_PER_LIMIT;
    let raw: string;
    try {
      raw = await this.parts.link.command(this.parts.link.client.getrange(key, 0, limit), 'GETRANGE');
    } catch (error) {
      if (!isWrongType(error)) throw error;
      this.removedIndexKey(sessionId, key);
      return undefined;
    }
    if (raw === '' || raw.length > limit) return undefined;
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
    const { link, keys } = this.parts;
    const indexed = nodes.filter((node) => node.shortId !== '');
    if (indexed.length === 0) return;
    // One SET per short ID, sent at once: on a Cluster they fall in many slots.
    const answers = await link.batch(indexed.map((node) => ({ key: keys.shortId(node.shortId), queue: (p) => p.set(keys.shortId(node.shortId), node.sessionId, 'PX', ttlMs) })), 'SET');
    const failed = answers.find((answer): answer is { error: Error } => 'error' in answer);
    if (failed) throw failed.error;
  }

  /** What the index says; an entry that cannot be a session ID (too long, of the wrong Redis type) is unknown, and the latter removed. */
  async lookupShortIds(shortIds: readonly string[]): Promise<(string | undefined)[]> {
    if (shortIds.length === 0) return [];
    const { link, keys } = this.parts;
    // GETRANGE, not GET: a session ID is short, so nothing longer is fetched.
    const answers = await link.batch(shortIds.map((id) => ({ key: keys.shortId(id), queue: (p) => p.getrange(keys.shortId(id), 0, MAX_SESSION_ID_BYTES) })), 'GETRANGE');
    return answers.map((answer, index) => {
      if ('error' in answer) {
        if (!isWrongType(answer.error)) throw answer.error;
        this.removedIndexKey(shortIds[index]!, keys.shortId(shortIds[index]!));
        return undefined;
      }
      const sessionId = String(answer.reply);
      return sessionId === '' || Buffer.byteLength(sessionId) > MAX_SESSION_ID_BYTES ? undefined : sessionId;
    });
  }

  /**
   * A session write script, repaired once if it meets one of the session's
   * keys holding another Redis type (see writeRepairingTypes).
   */
  private write<T>(sessionId: string, operation: string, run: () => Promise<T>): Promise<T> {
    const { keys } = this.parts;
    const expected: TypedKey[] = [
      [keys.sessionMeta(sessionId), 'hash'],
      [keys.sessionChunks(sessionId), 'list'],
      [keys.lease({ kind: 'session', id: sessionId }), 'string'],
      [keys.sessionLastAppended(sessionId), 'string'],
    ];
    return writeRepairingTypes(this.parts.link, run, () => expected, (removed) => {
      this.counters.corrupt += removed.length;
      this.onCorrupt(sessionId, new CorruptValueError(`${removed.join(', ')} held the wrong Redis type; removed before the write was retried`));
    }, operation);
  }

  /** One stored chunk of nodes (session-chunks.ts), through the value codec. */
  private chunk(nodes: readonly NodeRecord[]): Buffer {
    return this.parts.codec.encode(encodeChunk(nodes)).bytes;
  }

  /** Compacts many append chunks into one; best effort, skipped if the session changed meanwhile. */
  private compact(sessionId: string, stored: StoredSession): void {
    this.rewrite(sessionId, stored.version, stored.nodes).catch(() => undefined);
  }

  /** The nodes with their token counts (NodeRecord.tokens, kept in the chunk beside each node), if the session is still at `version`. */
  storeTokenCounts(sessionId: string, version: number, nodes: readonly NodeRecord[]): Promise<boolean> {
    return this.rewrite(sessionId, version, nodes);
  }

  private rewrite(sessionId: string, version: number, nodes: readonly NodeRecord[]): Promise<boolean> {
    return this.parts.link.command(this.parts.scripts.run(sessionCompact, sessionId, version, this.chunk(nodes), nodes.length), sessionCompact.name);
  }

  private judge(sessionId: string, reply: SessionReadReply, wanted?: ReadonlySet<string>): StoredSession | undefined {
    switch (reply.kind) {
      case 'miss':
        return undefined;
      case 'corrupt':
        return this.discard(sessionId, new CorruptValueError(reply.reason), reply.seenVersion);
      case 'oversized':
        return this.oversized(sessionId, reply.reason);
      case 'found':
        break;
    }
    let stored: StoredSession;
    try {
      stored = this.decode(sessionId, reply, wanted);
    } catch (error) {
      if (error instanceof OversizedSession) return this.oversized(sessionId, error.message);
      // Whatever else goes wrong decoding is corruption: a chunk that does not decode, one that is not a Buffer.
      return this.discard(sessionId, error instanceof CorruptValueError ? error : new CorruptValueError(`session does not decode (${(error as Error).message})`), reply.version ?? undefined);
    }
    // Compacting rewrites the whole session: only a read that decoded all of it can.
    if (reply.chunks.length > COMPACT_AFTER_CHUNKS && wanted === undefined) this.compact(sessionId, stored);
    return stored;
  }

  /**
   * The session in a reply, every part of it checked; throws
   * CorruptValueError (or OversizedSession) otherwise. With `wanted`, the
   * nodes are only those with these short IDs (the others still counted
   * and checked to be framed and of this session).
   */
  private decode(sessionId: string, reply: Extract<SessionReadReply, { kind: 'found' }>, wanted?: ReadonlySet<string>): StoredSession {
    const version = versionField(reply.version, 'session version', reply.nowUs);
    const expiresAt = decimalField(reply.expiresAt, 'session expiry', 0, MAX_TIME_MS);
    const expected = decimalField(reply.nodeCount, 'session node count', 0, Number.MAX_SAFE_INTEGER);
    let decodedBytes = 0;
    for (const chunk of reply.chunks) {
      if (!Buffer.isBuffer(chunk)) throw new CorruptValueError('a session chunk is not a byte string');
      decodedBytes += decodedLength(chunk);
    }
    const maxDecoded = this.parts.maxReadBytes * DECODED_BYTES_PER_LIMIT;
    if (decodedBytes > maxDecoded) throw new OversizedSession(`the chunks decode to ${decodedBytes} bytes, over ${maxDecoded}`);
    const nodes: NodeRecord[] = [];
    let held = 0;
    reply.chunks.forEach((chunk, chunkIndex) => {
      // The nodes keep views of the payload as their encodings: codec.decode gives it memory of its own.
      held += decodeChunk(this.parts.codec.decode(chunk), sessionId, nodes, chunkIndex, wanted);
    });
    // Metadata and chunks are two keys: an eviction can take one without the other.
    if (held !== expected) throw new CorruptValueError(`session holds ${held} nodes, its metadata says ${expected}`);
    return { nodes, version, expiresAt };
  }

  /**
   * An unreadable session is a miss; removing it lets the next fill repair
   * it — unless a writer replaced it meanwhile (corrupt-discard.ts).
   */
  private discard(sessionId: string, error: CorruptValueError, seen?: SeenVersion): undefined {
    this.counters.corrupt++;
    this.onCorrupt(sessionId, error);
    const { keys, scripts, link } = this.parts;
    link.command(scripts.run(corruptDiscard, [keys.sessionMeta(sessionId), keys.sessionChunks(sessionId)], seen), corruptDiscard.name).catch(() => undefined);
    return undefined;
  }

  /**
   * A session over the read limits is counted as corrupt and read as a
   * miss, but left in place: it could be the legitimate session of a sidecar
   * (another version, or another configuration) with larger limits, which
   * still reads it; the next fill of the session replaces it anyway.
   */
  private oversized(sessionId: string, reason: string): undefined {
    this.counters.corrupt++;
    this.onCorrupt(sessionId, new CorruptValueError(`${reason}: over the read limits; not fetched, left in place`));
    return undefined;
  }

  /** A key of the short-ID index or a last-appended key that held the wrong Redis type: removed, counted. */
  private removedIndexKey(name: string, key: string): void {
    this.counters.corrupt++;
    this.onCorrupt(name, new CorruptValueError(`${key} held the wrong Redis type; removed`));
    this.parts.link.client.unlink(key).catch(() => undefined);
  }
}
