import { BinaryWriter } from '@bufbuild/protobuf/wire';
import type { ServerWritableStream } from '@grpc/grpc-js';
import type { CacheEvent, EventEnvelope, EventHub, ResyncReason } from '../cache/events';
import type { NodeRecord } from '../context/node';
import {
  KeyChange,
  ResyncReason as ProtoResyncReason,
  SessionChange,
  type Node,
  WatchResponse,
  type WatchRequest,
} from '../gen/contextcache/v1/context_cache';
import type { RequestValidator } from './validation';

const RESYNC_REASON: Record<ResyncReason, ProtoResyncReason> = {
  'subscription-restored': ProtoResyncReason.RESYNC_REASON_SUBSCRIPTION_RESTORED,
  'redis-data-lost': ProtoResyncReason.RESYNC_REASON_REDIS_DATA_LOST,
  'stream-overflow': ProtoResyncReason.RESYNC_REASON_STREAM_OVERFLOW,
};

export function nodeToProto(node: NodeRecord): Node {
  return { ...node, createdAt: node.createdAt === 0 ? undefined : new Date(node.createdAt), metadata: { ...node.metadata }, refs: [...node.refs] };
}

/** Which events a stream asked for; no filter at all means everything. */
export class WatchFilter {
  private readonly everything: boolean;
  private readonly tags: Set<string>;
  private readonly sessions: Set<string>;

  constructor(private readonly keyPrefixes: readonly string[], tags: readonly string[], sessionIds: readonly string[]) {
    this.tags = new Set(tags);
    this.sessions = new Set(sessionIds);
    this.everything = keyPrefixes.length === 0 && this.tags.size === 0 && this.sessions.size === 0;
  }

  matches(event: CacheEvent): boolean {
    if (this.everything || event.kind === 'resync') return true;
    switch (event.kind) {
      case 'key':
        return this.keyPrefixes.some((prefix) => event.key.startsWith(prefix)) || event.tags.some((tag) => this.tags.has(tag));
      case 'tags':
        return event.tags.some((tag) => this.tags.has(tag));
      case 'session':
        return this.sessions.has(event.sessionId);
      case 'node':
        return this.sessions.has(event.node.sessionId);
    }
  }
}

function toEvent(event: CacheEvent): WatchResponse['event'] {
  switch (event.kind) {
    case 'key':
      return {
        $case: 'keyInvalidated',
        value: {
          key: event.key,
          change: event.change === 'set' ? KeyChange.KEY_CHANGE_SET : KeyChange.KEY_CHANGE_DELETED,
          version: event.version,
          tags: [...event.tags],
        },
      };
    case 'tags':
      return { $case: 'tagsInvalidated', value: { tags: [...event.tags] } };
    case 'session':
      return {
        $case: 'sessionInvalidated',
        value: {
          sessionId: event.sessionId,
          change: event.change === 'filled' ? SessionChange.SESSION_CHANGE_FILLED : SessionChange.SESSION_CHANGE_INVALIDATED,
          version: event.version,
        },
      };
    case 'node':
      return { $case: 'nodeAppended', value: { node: nodeToProto(event.node), sessionVersion: event.sessionVersion } };
    case 'resync':
      return { $case: 'resync', value: { reason: RESYNC_REASON[event.reason] } };
  }
}

/**
 * One event goes to every matching stream; only the stream's sequence
 * number differs. The rest is encoded once per event (a protobuf message
 * may be split into concatenated fields), so fan-out to 1,000 streams costs
 * 1,000 small copies, not 1,000 encodings.
 */
const encodedBodies = new WeakMap<EventEnvelope, Buffer>();

function encodedBody(envelope: EventEnvelope): Buffer {
  let body = encodedBodies.get(envelope);
  if (body === undefined) {
    body = Buffer.from(WatchResponse.encode({ sequence: 0, time: new Date(envelope.time), originSidecarId: envelope.origin, event: toEvent(envelope.event) }).finish());
    encodedBodies.set(envelope, body);
  }
  return body;
}

/** Field 1 (sequence, varint) followed by an already encoded body. */
export function frame(sequence: number, body: Buffer): Buffer {
  const head = new BinaryWriter().uint32(8).uint64(sequence).finish();
  return Buffer.concat([head, body], head.length + body.length);
}

/**
 * Watch writes pre-encoded frames; other messages (started, overflow
 * resyncs) are encoded as usual. Used in place of the generated serializer.
 */
export function serializeWatchResponse(value: WatchResponse | Buffer): Buffer {
  return Buffer.isBuffer(value) ? value : Buffer.from(WatchResponse.encode(value).finish());
}

export interface WatchCounters {
  open: number;
  delivered: number;
  dropped: number;
}

/**
 * Serves one Watch stream. Events are written as they come; grpc-js buffers
 * what the client has not read yet. Past `bufferLimit` buffered messages the
 * stream stops buffering, counts what it drops, and once the client catches
 * up sends a single Resync (STREAM_OVERFLOW) so the app knows to revalidate:
 * one slow app cannot grow the sidecar's memory, and the stream survives.
 */
export function serveWatch(
  call: ServerWritableStream<WatchRequest, WatchResponse>,
  deps: { hub: EventHub; validate: RequestValidator; sidecarId: string; subscribed: () => boolean; bufferLimit: number; counters: WatchCounters },
): void {
  const { request } = call;
  const filter = new WatchFilter(
    request.keyPrefixes.map((prefix, i) => deps.validate.key(prefix, `key_prefixes[${i}]`)),
    request.tags.map((tag, i) => deps.validate.key(tag, `tags[${i}]`)),
    request.sessionIds.map((id, i) => deps.validate.key(id, `session_ids[${i}]`)),
  );
  let sequence = 0;
  let overflowed = false;
  const send = (origin: string, time: number, event: WatchResponse['event']) => {
    call.write({ sequence: ++sequence, time: new Date(time), originSidecarId: origin, event });
  };
  const sendEncoded = (envelope: EventEnvelope) => {
    // The service definition's serializer passes Buffers through (serializeWatchResponse).
    (call as unknown as ServerWritableStream<WatchRequest, Buffer>).write(frame(++sequence, encodedBody(envelope)));
  };

  const unsubscribe = deps.hub.subscribe((envelope: EventEnvelope) => {
    if (!filter.matches(envelope.event)) return;
    if (overflowed || call.writableLength >= deps.bufferLimit) {
      if (!overflowed) {
        overflowed = true;
        call.once('drain', () => {
          overflowed = false;
          send(deps.sidecarId, Date.now(), toEvent({ kind: 'resync', reason: 'stream-overflow' }));
        });
      }
      deps.counters.dropped++;
      return;
    }
    deps.counters.delivered++;
    sendEncoded(envelope);
  });
  deps.counters.open++;
  let ended = false;
  const end = () => {
    if (ended) return;
    ended = true;
    deps.counters.open--;
    unsubscribe();
  };
  call.once('cancelled', end);
  call.once('close', end);
  call.once('finish', end);
  call.once('error', end);

  send(deps.sidecarId, Date.now(), { $case: 'started', value: { sidecarId: deps.sidecarId, subscribed: deps.subscribed() } });
}
