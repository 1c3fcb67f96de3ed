import type { ServerWritableStream } from '@grpc/grpc-js';
import type { EventHub } from '../cache/event-hub';
import { WatchResponse, type WatchRequest } from '../gen/contextcache/v1/context_cache';
import { tooLarge } from '../errors';
import type { CacheEvent, EventEnvelope } from '../model/events';
import { onCallEnd, type CallContext } from './calls';
import { eventToProto } from './mapping';
import type { RequestValidator } from './validation';

/**
 * Key prefixes, matched without scanning them all: grouped by length, a key
 * is looked up once per distinct prefix length.
 */
class PrefixSet {
  private readonly byLength = new Map<number, Set<string>>();

  constructor(prefixes: readonly string[]) {
    for (const prefix of prefixes) {
      let set = this.byLength.get(prefix.length);
      if (set === undefined) this.byLength.set(prefix.length, (set = new Set()));
      set.add(prefix);
    }
  }

  get size(): number {
    return this.byLength.size;
  }

  matches(key: string): boolean {
    for (const [length, prefixes] of this.byLength) if (key.length >= length && prefixes.has(key.slice(0, length))) return true;
    return false;
  }
}

/** Which events a stream asked for; no filter at all means everything. */
export class WatchFilter {
  private readonly everything: boolean;
  private readonly prefixes: PrefixSet;
  private readonly tags: Set<string>;
  private readonly sessions: Set<string>;

  constructor(keyPrefixes: readonly string[], tags: readonly string[], sessionIds: readonly string[]) {
    this.prefixes = new PrefixSet(keyPrefixes);
    this.tags = new Set(tags);
    this.sessions = new Set(sessionIds);
    this.everything = this.prefixes.size === 0 && this.tags.size === 0 && this.sessions.size === 0;
  }

  /** Whether nodes appended to the session would reach this stream. */
  wantsSession(sessionId: string): boolean {
    return this.everything || this.sessions.has(sessionId);
  }

  matches(event: CacheEvent): boolean {
    if (this.everything || event.kind === 'resync') return true;
    switch (event.kind) {
      case 'key':
        return this.prefixes.matches(event.key) || event.tags.some((tag) => this.tags.has(tag));
      case 'tags':
        return event.tags.some((tag) => this.tags.has(tag)) || event.keys.some((key) => this.prefixes.matches(key));
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

/**
 * Field 1 (sequence, varint) followed by an already encoded body, in one
 * allocation: this runs once per event per stream, so it makes no garbage
 * beyond the frame itself.
 */
export function frame(sequence: number, body: Buffer): Buffer {
  let length = 1;
  for (let rest = sequence; rest >= 0x80; rest = Math.floor(rest / 0x80)) length++;
  const out = Buffer.allocUnsafe(1 + length + body.length);
  out[0] = 0x08;
  let at = 1;
  let rest = sequence;
  while (rest >= 0x80) {
    out[at++] = (rest % 0x80) | 0x80;
    rest = Math.floor(rest / 0x80);
  }
  out[at++] = rest;
  body.copy(out, at);
  return out;
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
/**
 * Deliveries waiting for fan-out (an event times its matching streams):
 * with 1,000 streams, 10,000 pending events would be ten million. Past this
 * the streams of a new event get a Resync instead.
 */
const MAX_PENDING_DELIVERIES = 100_000;

/** The bytes buffered across every stream: one budget the streams draw from. */
class BufferBudget {
  used = 0;

  constructor(readonly limit: number) {}
}

/** What a message written as an object (Started, Resync) is counted as. */
const OBJECT_MESSAGE_BYTES = 128;

/**
 * What one queued message costs besides its bytes: the frame's Buffer
 * object, grpc-js's length-prefixed copy, the HTTP/2 stream's write-queue
 * entry and the callbacks: about 575 bytes per message held, measured
 * (bench watch-memory: heap and external memory held by 1,000 streams that
 * never read, over the same streams reading). Without it, small events
 * (~70 bytes) cost ~8x what the budget counted.
 */
const QUEUED_MESSAGE_OVERHEAD = 512;

/** One open Watch stream. */
class WatchStream {
  private sequence = 0;
  private overflowed = false;
  /** Bytes written and not yet taken by the transport. */
  private queued = 0;
  ended = false;

  constructor(
    private readonly call: ServerWritableStream<WatchRequest, WatchResponse>,
    readonly filter: WatchFilter,
    private readonly sidecarId: string,
    private readonly bufferBytes: number,
    private readonly budget: BufferBudget,
    private readonly counters: WatchCounters,
  ) {}

  send(origin: string, time: number, event: WatchResponse['event']): void {
    if (this.ended) return;
    this.charge(OBJECT_MESSAGE_BYTES);
    this.call.write({ sequence: ++this.sequence, time: new Date(time), originSidecarId: origin, event }, () => this.release(OBJECT_MESSAGE_BYTES));
  }

  deliver(envelope: EventEnvelope): void {
    if (this.ended) return;
    const body = encodedBody(envelope);
    const bytes = body.length + 11 + QUEUED_MESSAGE_OVERHEAD;
    // A stream (and the sidecar) always takes one message, however large (an 8 MiB node): the bound is
    // the buffer or one message, whichever is larger, never "this event can never be delivered".
    const over = (used: number, limit: number) => used > 0 && used + bytes > limit;
    if (this.overflowed || over(this.queued, this.bufferBytes) || over(this.budget.used, this.budget.limit)) {
      this.overflow();
      return;
    }
    this.counters.delivered++;
    this.charge(bytes);
    // Pre-encoded: the service definition passes Buffers through (encoding.ts).
    (this.call as unknown as ServerWritableStream<WatchRequest, Buffer>).write(frame(++this.sequence, body), () => this.release(bytes));
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

  /** The stream ended: what it still held is given back to the budget (late write callbacks are ignored). */
  close(): void {
    this.ended = true;
    this.budget.used -= this.queued;
    this.queued = 0;
  }

  private charge(bytes: number): void {
    this.queued += bytes;
    this.budget.used += bytes;
  }

  private release(bytes: number): void {
    if (this.ended) return;
    this.queued -= bytes;
    this.budget.used -= bytes;
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
  private readonly budget: BufferBudget;
  private readonly pending: { envelope: EventEnvelope; targets: WatchStream[]; next: number }[] = [];
  private scheduled = false;
  private pendingDeliveries = 0;

  constructor(
    hub: EventHub,
    private readonly deps: {
      validate: RequestValidator;
      sidecarId: string;
      subscribed: () => boolean;
      /** Bytes buffered per stream, across all streams, and how many streams may be open. */
      bufferBytes: number;
      totalBufferBytes: number;
      maxStreams: number;
      counters: WatchCounters;
      onError: (error: unknown) => void;
    },
  ) {
    this.budget = new BufferBudget(deps.totalBufferBytes);
    hub.subscribe((envelope) => this.publish(envelope));
  }

  /** Bytes buffered across every stream right now. */
  get bufferedBytes(): number {
    return this.budget.used;
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
    const filter = new WatchFilter(...validate.watchFilters(request.keyPrefixes, request.tags, request.sessionIds));
    if (this.streams.size >= this.deps.maxStreams) {
      throw tooLarge(`this sidecar has ${this.streams.size} Watch streams open, its limit (CONTEXT_CACHE_WATCH_MAX_STREAMS); share a stream per process, or retry later`);
    }
    const stream = new WatchStream(call, filter, this.deps.sidecarId, this.deps.bufferBytes, this.budget, counters);
    this.streams.add(stream);
    counters.open++;
    const end = () => {
      if (stream.ended) return;
      stream.close();
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
    if (this.pending.length >= MAX_PENDING_EVENTS || this.pendingDeliveries + targets.length > MAX_PENDING_DELIVERIES) {
      for (const stream of targets) stream.overflow();
      return;
    }
    this.pendingDeliveries += targets.length;
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
        this.pendingDeliveries--;
      }
      if (job.next === job.targets.length) this.pending.shift();
    }
    if (this.pending.length > 0) {
      this.scheduled = true;
      setImmediate(() => this.drain());
    }
  }
}
