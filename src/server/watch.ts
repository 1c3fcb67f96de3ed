import { BinaryWriter } from '@bufbuild/protobuf/wire';
import type { ServerWritableStream } from '@grpc/grpc-js';
import type { EventHub } from '../cache/event-hub';
import { WatchResponse, type WatchRequest } from '../gen/contextcache/v1/context_cache';
import type { CacheEvent, EventEnvelope } from '../model/events';
import { onCallEnd, type CallContext } from './calls';
import { eventToProto } from './mapping';
import type { RequestValidator } from './validation';

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

  /** Whether nodes appended to the session would reach this stream. */
  wantsSession(sessionId: string): boolean {
    return this.everything || this.sessions.has(sessionId);
  }

  matches(event: CacheEvent): boolean {
    if (this.everything || event.kind === 'resync') return true;
    switch (event.kind) {
      case 'key':
        return this.keyPrefixes.some((prefix) => event.key.startsWith(prefix)) || event.tags.some((tag) => this.tags.has(tag));
      case 'tags':
        return event.tags.some((tag) => this.tags.has(tag)) || event.keys.some((key) => this.keyPrefixes.some((prefix) => key.startsWith(prefix)));
      case 'session':
        return this.sessions.has(event.sessionId);
      case 'node':
        return this.sessions.has(event.node.sessionId);
    }
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
    body = Buffer.from(WatchResponse.encode({ sequence: 0, time: new Date(envelope.time), originSidecarId: envelope.origin, event: eventToProto(envelope.event) }).finish());
    encodedBodies.set(envelope, body);
  }
  return body;
}

/** Field 1 (sequence, varint) followed by an already encoded body. */
export function frame(sequence: number, body: Buffer): Buffer {
  const head = new BinaryWriter().uint32(8).uint64(sequence).finish();
  return Buffer.concat([head, body], head.length + body.length);
}

export interface WatchCounters {
  open: number;
  delivered: number;
  dropped: number;
}

/** Deliveries per event-loop turn: a fan-out to many streams yields to I/O in between. */
const DELIVERIES_PER_TURN = 128;
/** Events waiting for fan-out beyond this are dropped for every stream (each then gets a Resync). */
const MAX_PENDING_EVENTS = 10_000;

/** One open Watch stream. */
class WatchStream {
  private sequence = 0;
  private overflowed = false;
  ended = false;

  constructor(
    private readonly call: ServerWritableStream<WatchRequest, WatchResponse>,
    readonly filter: WatchFilter,
    private readonly sidecarId: string,
    private readonly bufferLimit: number,
    private readonly counters: WatchCounters,
  ) {}

  send(origin: string, time: number, event: WatchResponse['event']): void {
    if (this.ended) return;
    this.call.write({ sequence: ++this.sequence, time: new Date(time), originSidecarId: origin, event });
  }

  deliver(envelope: EventEnvelope): void {
    if (this.ended) return;
    if (this.overflowed || this.call.writableLength >= this.bufferLimit) {
      this.overflow();
      return;
    }
    this.counters.delivered++;
    // Pre-encoded: the service definition passes Buffers through (encoding.ts).
    (this.call as unknown as ServerWritableStream<WatchRequest, Buffer>).write(frame(++this.sequence, encodedBody(envelope)));
  }

  /**
   * Past its buffer the stream stops buffering and counts what it drops;
   * once the client has caught up it gets one Resync (STREAM_OVERFLOW).
   */
  overflow(): void {
    this.counters.dropped++;
    if (this.overflowed) return;
    this.overflowed = true;
    const resume = () => {
      this.overflowed = false;
      if (!this.ended) this.send(this.sidecarId, Date.now(), eventToProto({ kind: 'resync', reason: 'stream-overflow' }));
    };
    if (this.call.writableNeedDrain) this.call.once('drain', resume);
    else setImmediate(resume);
  }
}

/**
 * Fan-out of events to Watch streams. Each event goes to the streams whose
 * filter matches, in event order per stream, at most DELIVERIES_PER_TURN per
 * event-loop turn, so a fan-out to 1,000 streams never stalls the other
 * RPCs of this sidecar for its whole duration.
 */
export class WatchFanout {
  private readonly streams = new Set<WatchStream>();
  private readonly pending: { envelope: EventEnvelope; targets: WatchStream[]; next: number }[] = [];
  private scheduled = false;

  constructor(
    hub: EventHub,
    private readonly deps: {
      validate: RequestValidator;
      sidecarId: string;
      subscribed: () => boolean;
      bufferLimit: number;
      counters: WatchCounters;
      onError: (error: unknown) => void;
    },
  ) {
    hub.subscribe((envelope) => this.publish(envelope));
  }

  /** Whether some open stream wants the nodes appended to the session (another sidecar's appends are then fetched). */
  wantsSession(sessionId: string): boolean {
    for (const stream of this.streams) if (stream.filter.wantsSession(sessionId)) return true;
    return false;
  }

  /** Serves one Watch call until it ends. */
  serve(call: ServerWritableStream<WatchRequest, WatchResponse>, context: CallContext): void {
    const { request } = call;
    const { validate, counters } = this.deps;
    const filter = new WatchFilter(
      request.keyPrefixes.map((prefix, i) => validate.key(prefix, `key_prefixes[${i}]`)),
      request.tags.map((tag, i) => validate.key(tag, `tags[${i}]`)),
      request.sessionIds.map((id, i) => validate.key(id, `session_ids[${i}]`)),
    );
    const stream = new WatchStream(call, filter, this.deps.sidecarId, this.deps.bufferLimit, counters);
    this.streams.add(stream);
    counters.open++;
    const end = () => {
      if (stream.ended) return;
      stream.ended = true;
      counters.open--;
      this.streams.delete(stream);
    };
    onCallEnd(context, end);
    stream.send(this.deps.sidecarId, Date.now(), { $case: 'started', value: { sidecarId: this.deps.sidecarId, subscribed: this.deps.subscribed() } });
  }

  private publish(envelope: EventEnvelope): void {
    const targets: WatchStream[] = [];
    for (const stream of this.streams) if (stream.filter.matches(envelope.event)) targets.push(stream);
    if (targets.length === 0) return;
    if (this.pending.length >= MAX_PENDING_EVENTS) {
      for (const stream of targets) stream.overflow();
      return;
    }
    this.pending.push({ envelope, targets, next: 0 });
    if (!this.scheduled) this.drain();
  }

  private drain(): void {
    this.scheduled = false;
    let budget = DELIVERIES_PER_TURN;
    while (budget > 0 && this.pending.length > 0) {
      const job = this.pending[0]!;
      while (budget > 0 && job.next < job.targets.length) {
        const stream = job.targets[job.next++]!;
        try {
          stream.deliver(job.envelope);
        } catch (error) {
          // Runs from setImmediate: a throw would be uncaught. The stream gets a resync instead.
          this.deps.onError(error);
          stream.overflow();
        }
        budget--;
      }
      if (job.next === job.targets.length) this.pending.shift();
    }
    if (this.pending.length > 0) {
      this.scheduled = true;
      setImmediate(() => this.drain());
    }
  }
}
