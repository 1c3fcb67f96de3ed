import type { ServerWritableStream } from '@grpc/grpc-js';
import type { EventHub } from '../cache/event-hub';
import { WatchResponse, type WatchRequest, type WatchResumeToken } from '../gen/contextcache/v1/context_cache';
import { invalidArgument, tooLarge } from '../errors';
import type { CacheEvent, EventEnvelope } from '../model/events';
import { nodeSize } from '../model/node';
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
 * One event as this sidecar numbered it: its position in the sidecar's
 * sequence of events (the resume token), and its WatchResponse encoded once
 * without a sequence number. Only the stream's sequence number differs per
 * stream (a protobuf message may be split into concatenated fields), so
 * fan-out to 1,000 streams costs 1,000 small copies, not 1,000 encodings.
 * The encoding waits until a stream wants the event: a sidecar without
 * Watch streams numbers and keeps its events, and encodes none.
 */
class LoggedEvent {
  private encoded: Buffer | undefined;

  constructor(
    readonly position: number,
    readonly envelope: EventEnvelope,
    /** What the ring counts it as (estimated from the event, before any encoding). */
    readonly bytes: number,
    private readonly incarnation: string,
  ) {}

  get body(): Buffer {
    this.encoded ??= Buffer.from(
      WatchResponse.encode({
        sequence: 0,
        time: new Date(this.envelope.time),
        originSidecarId: this.envelope.origin,
        resumeToken: { incarnation: this.incarnation, position: this.position },
        event: eventToProto(this.envelope.event),
      }).finish(),
    );
    return this.encoded;
  }
}

/**
 * What a kept event costs, estimated without encoding it: its strings
 * (two bytes per UTF-16 unit, counted once for the event and once for the
 * encoding a stream may make of it), an appended node as L1 counts one, and
 * the objects around them.
 */
function loggedBytes(event: CacheEvent): number {
  const strings = (values: readonly string[]) => values.reduce((sum, value) => sum + 16 + 4 * value.length, 0);
  switch (event.kind) {
    case 'key':
      return LOGGED_EVENT_OVERHEAD_BYTES + strings([event.key, ...event.tags]);
    case 'tags':
      return LOGGED_EVENT_OVERHEAD_BYTES + strings([...event.tags, ...event.keys]);
    case 'session':
      return LOGGED_EVENT_OVERHEAD_BYTES + strings([event.sessionId]);
    case 'node':
      return LOGGED_EVENT_OVERHEAD_BYTES + 2 * nodeSize(event.node);
    case 'resync':
      return LOGGED_EVENT_OVERHEAD_BYTES;
  }
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

/** Most events the resume ring keeps, whatever their size: the count bound beside the byte bound. */
export const MAX_RESUME_EVENTS = 100_000;
/** What a logged event costs beyond its encoded body: the envelope, the event object and the ring's bookkeeping. */
const LOGGED_EVENT_OVERHEAD_BYTES = 256;

/**
 * The recent events of this sidecar, bounded in bytes and in count, oldest
 * first: what a stream that resumes (WatchRequest.resume_after) missed.
 * Positions are contiguous, so finding one is arithmetic.
 */
export class EventRing {
  private readonly events: (LoggedEvent | undefined)[] = [];
  private start = 0;
  /** Position of the oldest event kept (one past the newest when empty). */
  private firstPosition = 1;
  private lastPosition = 0;
  bytes = 0;

  constructor(
    readonly maxBytes: number,
    readonly maxEvents = MAX_RESUME_EVENTS,
  ) {}

  get size(): number {
    return this.events.length - this.start;
  }

  /** The newest position numbered (0 before the first event). */
  get head(): number {
    return this.lastPosition;
  }

  /** Numbers the next event; keeps it while it fits. */
  append(envelope: EventEnvelope, incarnation: string): LoggedEvent {
    const logged = new LoggedEvent(++this.lastPosition, envelope, loggedBytes(envelope.event), incarnation);
    this.events.push(logged);
    this.bytes += logged.bytes;
    while (this.size > 0 && (this.bytes > this.maxBytes || this.size > this.maxEvents)) {
      this.bytes -= this.events[this.start]!.bytes;
      this.events[this.start++] = undefined;
      this.firstPosition++;
    }
    // Compacts now and then, so that dropping the oldest is O(1) amortized.
    if (this.start > 1024 && this.start * 2 > this.events.length) {
      this.events.splice(0, this.start);
      this.start = 0;
    }
    return logged;
  }

  /** Whether every event after `position` is still kept. */
  covers(position: number): boolean {
    return position >= this.firstPosition - 1 && position <= this.lastPosition;
  }

  /** The event at `position`, if kept. */
  at(position: number): LoggedEvent | undefined {
    if (position < this.firstPosition || position > this.lastPosition) return undefined;
    return this.events[this.start + (position - this.firstPosition)];
  }
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

/** What a queued event is charged to the buffers. */
const queuedBytes = (logged: LoggedEvent) => logged.body.length + 11 + QUEUED_MESSAGE_OVERHEAD;

/** One open Watch stream. */
class WatchStream {
  private sequence = 0;
  private overflowed = false;
  /**
   * Started while the sidecar was not coherent (not yet subscribed, or
   * Redis away) and told of no Resync since: events published meanwhile
   * never reached this sidecar, so the stream owes its client a Resync when
   * coherence begins. The tiers announce one when a subscription is
   * *restored*; a sidecar's first subscription (a fresh process whose
   * watchers reconnected before it subscribed) announces none.
   */
  owesResync = false;
  /** Bytes written and not yet taken by the transport. */
  private queued = 0;
  /**
   * The position of the newest event this stream has been sent, or has
   * skipped (not matching, or dropped and covered by a Resync): its resume
   * token. Live deliveries at or below it are ignored.
   */
  private lastPosition: number;
  /** While replaying a resume from the ring, live deliveries wait: the replay reaches them. */
  private replaying = false;
  ended = false;

  constructor(
    private readonly call: ServerWritableStream<WatchRequest, WatchResponse>,
    readonly filter: WatchFilter,
    private readonly sidecarId: string,
    private readonly bufferBytes: number,
    private readonly budget: BufferBudget,
    private readonly counters: WatchCounters,
    startPosition: number,
  ) {
    this.lastPosition = startPosition;
  }

  send(origin: string, time: number, event: WatchResponse['event']): void {
    if (this.ended) return;
    if (event?.$case === 'resync') this.owesResync = false;
    this.charge(OBJECT_MESSAGE_BYTES);
    const resumeToken: WatchResumeToken = { incarnation: this.sidecarId, position: this.lastPosition };
    this.call.write({ sequence: ++this.sequence, time: new Date(time), originSidecarId: origin, resumeToken, event }, () => this.release(OBJECT_MESSAGE_BYTES));
  }

  deliver(logged: LoggedEvent): void {
    if (this.ended || this.replaying || logged.position <= this.lastPosition) return;
    if (this.overflowed || this.full(logged)) {
      this.overflow(logged.position);
      return;
    }
    this.write(logged);
  }

  /**
   * Sends what the client missed since the stream it resumes, from the ring,
   * then hands over to live delivery. Paced by the buffers like live events:
   * when they are full it continues once the transport has taken some; if
   * the ring drops an event before the replay reaches it, the stream gets a
   * Resync (STREAM_OVERFLOW), as a slow live reader would.
   */
  replay(ring: EventRing): void {
    if (this.ended) return;
    this.replaying = true;
    while (this.lastPosition < ring.head) {
      const logged = ring.at(this.lastPosition + 1);
      if (logged === undefined) {
        this.replaying = false;
        this.overflow(ring.head);
        return;
      }
      if (!this.filter.matches(logged.envelope.event)) {
        this.lastPosition = logged.position;
        continue;
      }
      if (this.full(logged)) {
        const resume = () => this.replay(ring);
        if (this.call.writableNeedDrain) this.call.once('drain', resume);
        else setImmediate(resume);
        return;
      }
      this.write(logged);
    }
    this.replaying = false;
  }

  /** The sidecar started or stopped hearing every change. */
  coherenceChanged(coherent: boolean): void {
    if (coherent && this.owesResync) this.send(this.sidecarId, Date.now(), eventToProto({ kind: 'resync', reason: 'subscription-restored' }));
    this.send(this.sidecarId, Date.now(), { $case: 'coherenceChanged', value: { coherent } });
  }

  /**
   * Past its buffer the stream stops buffering and counts what it drops;
   * once the client has caught up it gets one Resync (STREAM_OVERFLOW),
   * whose token covers what was dropped.
   */
  overflow(position: number): void {
    this.counters.dropped++;
    this.lastPosition = Math.max(this.lastPosition, position);
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

  /**
   * A stream (and the sidecar) always takes one message, however large (an
   * 8 MiB node): the bound is the buffer or one message, whichever is
   * larger, never "this event can never be delivered".
   */
  private full(logged: LoggedEvent): boolean {
    const bytes = queuedBytes(logged);
    const over = (used: number, limit: number) => used > 0 && used + bytes > limit;
    return over(this.queued, this.bufferBytes) || over(this.budget.used, this.budget.limit);
  }

  private write(logged: LoggedEvent): void {
    if (logged.envelope.event.kind === 'resync') this.owesResync = false;
    const bytes = queuedBytes(logged);
    this.counters.delivered++;
    this.charge(bytes);
    this.lastPosition = logged.position;
    // Pre-encoded: the service definition passes Buffers through (encoding.ts).
    (this.call as unknown as ServerWritableStream<WatchRequest, Buffer>).write(frame(++this.sequence, logged.body), () => this.release(bytes));
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

/** A fan-out job: an event for the streams it matched, or a coherence change for every stream. */
interface FanoutJob {
  logged: LoggedEvent | undefined;
  coherent: boolean;
  targets: WatchStream[];
  next: number;
}

/**
 * Fan-out of events to Watch streams. Each event is numbered and kept in
 * the resume ring, then goes to the streams whose filter matches, in event
 * order per stream, at most DELIVERIES_PER_TURN per event-loop turn, so a
 * fan-out to 1,000 streams never stalls the other RPCs of this sidecar for
 * its whole duration.
 */
export class WatchFanout {
  private readonly streams = new Set<WatchStream>();
  private readonly budget: BufferBudget;
  private readonly ring: EventRing;
  private readonly pending: FanoutJob[] = [];
  private scheduled = false;
  private pendingDeliveries = 0;

  constructor(
    hub: EventHub,
    private readonly deps: {
      validate: RequestValidator;
      sidecarId: string;
      subscribed: () => boolean;
      /** Whether the events cover every change to what this sidecar serves (WatchStarted.coherent). */
      coherent: () => boolean;
      /** Bytes buffered per stream, across all streams, and how many streams may be open. */
      bufferBytes: number;
      totalBufferBytes: number;
      maxStreams: number;
      /** Bytes of recent events kept for streams that resume. */
      resumeBufferBytes: number;
      counters: WatchCounters;
      onError: (error: unknown) => void;
    },
  ) {
    this.budget = new BufferBudget(deps.totalBufferBytes);
    this.ring = new EventRing(deps.resumeBufferBytes);
    hub.subscribe((envelope) => this.publish(envelope));
  }

  /** Bytes buffered across every stream right now. */
  get bufferedBytes(): number {
    return this.budget.used;
  }

  /** Bytes and events kept for streams that resume. */
  get resumeBuffer(): { bytes: number; events: number } {
    return { bytes: this.ring.bytes, events: this.ring.size };
  }

  /** Whether some open stream wants the nodes appended to the session (another sidecar's appends are then fetched). */
  wantsSession(sessionId: string): boolean {
    for (const stream of this.streams) if (stream.filter.wantsSession(sessionId)) return true;
    return false;
  }

  /** Serves one Watch call until it ends. */
  serve(call: ServerWritableStream<WatchRequest, WatchResponse>, context: CallContext): void {
    const { request } = call;
    const { validate, counters, sidecarId } = this.deps;
    const filter = new WatchFilter(...validate.watchFilters(request.keyPrefixes, request.tags, request.sessionIds));
    const resumeAfter = this.resumePoint(request.resumeAfter);
    if (this.streams.size >= this.deps.maxStreams) {
      throw tooLarge(`this sidecar has ${this.streams.size} Watch streams open, its limit (CONTEXT_CACHE_WATCH_MAX_STREAMS); share a stream per process, or retry later`);
    }
    const head = this.ring.head;
    const resumed = resumeAfter !== undefined && this.ring.covers(resumeAfter);
    const stream = new WatchStream(call, filter, sidecarId, this.deps.bufferBytes, this.budget, counters, resumed ? resumeAfter : head);
    this.streams.add(stream);
    counters.open++;
    const end = () => {
      if (stream.ended) return;
      stream.close();
      counters.open--;
      this.streams.delete(stream);
    };
    onCallEnd(context, end);
    const replayedEvents = resumed ? this.matchingSince(resumeAfter, filter) : 0;
    const started = { sidecarId, subscribed: this.deps.subscribed(), resumed, replayedEvents, coherent: this.deps.coherent() };
    stream.send(sidecarId, Date.now(), { $case: 'started', value: started });
    stream.owesResync = !started.coherent;
    if (resumed) stream.replay(this.ring);
    else if (request.resumeAfter !== undefined) stream.send(sidecarId, Date.now(), eventToProto({ kind: 'resync', reason: 'resume-gap' }));
  }

  /** Tells every stream, in order with the events before it, that WatchStarted.coherent changed. */
  coherenceChanged(): void {
    if (this.streams.size === 0) return;
    this.enqueue({ logged: undefined, coherent: this.deps.coherent(), targets: [...this.streams], next: 0 });
  }

  /**
   * The position a stream resumes after, when it can: undefined for a new
   * stream and for a token of another sidecar process (which the caller
   * answers with a Resync).
   */
  private resumePoint(token: WatchResumeToken | undefined): number | undefined {
    if (token === undefined) return undefined;
    if (token.incarnation === '') throw invalidArgument('resume_after.incarnation is empty; pass the resume_token of the last message the stream delivered');
    if (token.incarnation !== this.deps.sidecarId) return undefined;
    if (token.position > this.ring.head) {
      throw invalidArgument(`resume_after.position ${token.position} is past this sidecar's last event (${this.ring.head}); pass a resume_token this sidecar sent`);
    }
    return token.position;
  }

  /** How many kept events after `position` the filter matches: what a resumed stream replays first. */
  private matchingSince(position: number, filter: WatchFilter): number {
    let count = 0;
    for (let p = position + 1; p <= this.ring.head; p++) if (filter.matches(this.ring.at(p)!.envelope.event)) count++;
    return count;
  }

  private publish(envelope: EventEnvelope): void {
    const targets: WatchStream[] = [];
    for (const stream of this.streams) if (stream.filter.matches(envelope.event)) targets.push(stream);
    const logged = this.ring.append(envelope, this.deps.sidecarId);
    if (targets.length === 0) return;
    this.enqueue({ logged, coherent: false, targets, next: 0 });
  }

  private enqueue(job: FanoutJob): void {
    if (this.pending.length >= MAX_PENDING_EVENTS || this.pendingDeliveries + job.targets.length > MAX_PENDING_DELIVERIES) {
      // A coherence change is never dropped: the Resync of an overflow does not carry it.
      for (const stream of job.targets) {
        if (job.logged !== undefined) stream.overflow(job.logged.position);
        else stream.coherenceChanged(job.coherent);
      }
      return;
    }
    this.pendingDeliveries += job.targets.length;
    this.pending.push(job);
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
          if (job.logged !== undefined) stream.deliver(job.logged);
          else stream.coherenceChanged(job.coherent);
        } catch (error) {
          // Runs from setImmediate: a throw would be uncaught. The stream gets a resync instead.
          this.deps.onError(error);
          stream.overflow(job.logged?.position ?? 0);
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

