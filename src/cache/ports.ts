import type { Entry } from '../model/entry';
import type { RemoteEnvelope } from '../model/events';
import type { Subject } from '../model/subject';

/**
 * What the core needs of the shared tier, as small interfaces. `src/redis/`
 * implements them on ioredis; the unit tests implement them in memory (with
 * faults on demand). Every method that talks to Redis rejects when Redis
 * fails; the core decides how to degrade. A command that timed out has
 * already marked the link down by the time the rejection arrives.
 */

/** The Pub/Sub bus: events of other sidecars, and whether they can arrive right now. */
export interface EventBus {
  /** Subscribed now: every event published from here on reaches this sidecar. */
  readonly subscribed: boolean;
  /** Events of other sidecars (this sidecar's own echoes are not delivered): untrusted hints. */
  onEvents(listener: (envelopes: readonly RemoteEnvelope[]) => void): void;
  /** Every (re)subscription; `restored`: there was one before (events may have been missed in between). */
  onSubscribed(listener: (restored: boolean) => void): void;
  /** Told whenever `subscribed` changes (either way). */
  onChange(listener: () => void): void;
}

/** A fill lease on the shared tier: one holder per subject across all sidecars. */
export interface LeaseHold {
  token: string;
  /** Epoch milliseconds after which the hold may have lapsed. */
  expiresAt: number;
}

/** Shared fill leases (a Mutex key per subject). Rejects with E_UNAVAILABLE when Redis cannot decide. */
export interface LeaseStore {
  tryAcquire(subject: Subject, ttlMs: number): Promise<LeaseHold | undefined>;
  /** Best effort: a lease that is not released lapses by its TTL. */
  release(subject: Subject, token: string): Promise<void>;
}

/** The shared tier as the write path sees it: reachability, the bus, leases and Redis's clock. */
export interface SharedTier {
  /** Whether Redis can be used for an operation right now. */
  readonly connected: boolean;
  /** Since when (epoch ms) Redis could not be used; undefined while connected. */
  readonly downSince: number | undefined;
  readonly bus: EventBus;
  readonly leases: LeaseStore;
  /** Redis's clock in microseconds: lease grant times and tag stamps are compared on it. */
  clockUs(): Promise<number>;
  /** Every time Redis becomes usable again (and the first time). */
  onConnected(listener: () => void): void;
  /** Every time Redis stops being usable. */
  onDisconnected(listener: () => void): void;
  /** Redis came back without the data it held (restart, failover, FLUSHALL). */
  onDataLost(listener: () => void): void;
  /**
   * Invalidates the whole namespace in Redis — every entry and session, and
   * their leases — and tells every sidecar to flush (a resync). For when this
   * sidecar cannot name everything it wrote while Redis was away.
   */
  flushNamespace(): Promise<void>;
}

/** A Set's conditions, as the shared tier checks them atomically with the write. */
export interface EntryWrite {
  ttlMs: number;
  tags: readonly string[];
  /** Compare-and-set on the current version (0: no condition). */
  ifVersion: number;
  ifAbsent: boolean;
  /** A fill under this lease; '' for a plain write. */
  leaseToken: string;
}

/** How a shared Set ended: written, or refused by one of its conditions. */
export type EntryWriteOutcome =
  | { status: 'written'; version: number; expiresAt: number }
  | { status: 'stale-lease' }
  | { status: 'exists'; version: number }
  | { status: 'version-mismatch'; version: number };

/** Generic entries in the shared tier. Each write revokes the key's fill leases and announces itself, atomically. */
export interface EntryStore {
  getMany(keys: readonly string[]): Promise<(Entry | undefined)[]>;
  set(key: string, value: Buffer, write: EntryWrite): Promise<EntryWriteOutcome>;
  /** How many existed, and the tombstone version of each key. */
  delete(keys: readonly string[]): Promise<{ existed: number; versions: number[] }>;
  /** Removes the entries carrying any of the tags; returns their keys. */
  invalidateTags(tags: readonly string[]): Promise<string[]>;
}

/** What a trace may say of a piece of work: counts, names of tiers and outcomes — never keys or values. */
export type TraceAttributes = Readonly<Record<string, string | number | boolean>>;

/** A piece of work being traced; ended once, with its error if it failed. */
export interface TracedWork {
  end(outcome?: { error?: unknown; attributes?: TraceAttributes }): void;
}

/**
 * Traces work done on behalf of a call — a Redis round trip, a wait for
 * another caller's fill — as a child of the call's span. `ops/tracing.ts`
 * implements it on OpenTelemetry; with tracing off none is set, and the
 * work asks nothing. `start` returns undefined when the current call is not
 * traced (not sampled, or background work of no call).
 */
export interface WorkTracer {
  start(name: string, attributes?: TraceAttributes): TracedWork | undefined;
}
