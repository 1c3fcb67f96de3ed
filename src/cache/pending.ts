/**
 * What a write that may not have reached Redis touched, to be replayed as
 * invalidations once Redis is back (`Tiers.write` records, `Tiers` replays).
 *
 * A write answered LOCAL — Redis was unreachable, or failed or timed out
 * under it (a timed-out command may still have been applied: unknown counts
 * as "may not have") — leaves Redis and the other sidecars with a state this
 * sidecar superseded. Values are never replayed (they may be older than what
 * others wrote meanwhile); an invalidation always is safe in a cache-aside
 * design: the next read misses and the app refills from its source of truth.
 *
 * Bounded by count and by bytes. Past either bound the set gives up on
 * naming subjects and remembers one thing only — that everything in the
 * namespace is suspect — which the replay turns into a namespace-wide
 * invalidation. Kept in memory: it survives reconnect attempts, not a
 * restart of the process (a sidecar that restarts starts with an empty L1,
 * but Redis keeps what its lost writes superseded until their TTL).
 */
export type PendingKind = 'entry' | 'session' | 'tag';

export const PENDING_KINDS: readonly PendingKind[] = ['entry', 'session', 'tag'];

export type PendingBatch = Record<PendingKind, string[]>;

/** Per-name overhead in the byte bound: the Set slot and the string header. */
const NAME_OVERHEAD_BYTES = 64;

export class PendingInvalidations {
  private readonly names: Record<PendingKind, Set<string>> = { entry: new Set(), session: new Set(), tag: new Set() };
  private bytesNow = 0;
  private overflowedNow = false;

  constructor(
    readonly maxCount = 100_000,
    readonly maxBytes = 16 * 1024 * 1024,
  ) {}

  /** Subjects named (0 once overflowed). */
  get size(): number {
    return this.names.entry.size + this.names.session.size + this.names.tag.size;
  }

  get bytes(): number {
    return this.bytesNow;
  }

  /** The bounds were exceeded: the whole namespace must be invalidated. */
  get overflowed(): boolean {
    return this.overflowedNow;
  }

  /** Whether anything waits for replay. */
  get empty(): boolean {
    return !this.overflowedNow && this.size === 0;
  }

  add(kind: PendingKind, name: string): void {
    if (this.overflowedNow || this.names[kind].has(name)) return;
    const cost = NAME_OVERHEAD_BYTES + name.length * 2;
    if (this.size + 1 > this.maxCount || this.bytesNow + cost > this.maxBytes) {
      this.overflow();
      return;
    }
    this.names[kind].add(name);
    this.bytesNow += cost;
  }

  /** Removes and returns up to `max` names of each kind (their replay is the caller's now). */
  take(max: number): PendingBatch {
    const batch: PendingBatch = { entry: [], session: [], tag: [] };
    for (const kind of PENDING_KINDS) {
      for (const name of this.names[kind]) {
        if (batch[kind].length >= max) break;
        batch[kind].push(name);
      }
      for (const name of batch[kind]) this.remove(kind, name);
    }
    return batch;
  }

  /** A batch whose replay failed goes back (it may overflow the set). */
  restore(batch: PendingBatch): void {
    for (const kind of PENDING_KINDS) for (const name of batch[kind]) this.add(kind, name);
  }

  /** The namespace-wide invalidation is done: nothing is pending any more. */
  clear(): void {
    for (const kind of PENDING_KINDS) this.names[kind].clear();
    this.bytesNow = 0;
    this.overflowedNow = false;
  }

  /** Gives up on naming subjects: the whole namespace is suspect (also when a namespace flush failed). */
  overflow(): void {
    for (const kind of PENDING_KINDS) this.names[kind].clear();
    this.bytesNow = 0;
    this.overflowedNow = true;
  }

  private remove(kind: PendingKind, name: string): void {
    if (this.names[kind].delete(name)) this.bytesNow -= NAME_OVERHEAD_BYTES + name.length * 2;
  }
}
