/**
 * Concurrent work through several sidecars on one Redis deployment (a
 * Cluster, a Sentinel-managed primary), for the topology tests: writers and
 * readers of generic keys against an in-test "database" that is the source
 * of truth. Each key has one writer (on one sidecar), which writes the
 * database first, then the cache; readers go through any sidecar and fill
 * misses from the database under leases. Calls may fail while a failover is
 * under way (counted, never thrown); a write counts once it was answered.
 * What is judged is the end: once every sidecar is coherent again and has
 * heard of every answered write, every key read through every sidecar is a
 * miss or at least as new as its last answered write (values carry their
 * write's number), and a fill makes them all agree.
 */
import type { ContextCacheClient } from '../../src/client';
import { CLUSTER_BUCKETS } from '../../src/redis/keys';
import { eventsDelivered } from '../helpers/barrier';
import type { TestSidecar } from '../helpers/sidecar';
import { waitFor } from '../helpers/wait';

/** Waits until every sidecar is coherent with nothing pending; on a timeout, says where each is stuck. */
export const coherent = (...sidecars: TestSidecar[]) =>
  waitFor(
    () => {
      if (sidecars.every((s) => s.sidecar.tiers.mode === 'coherent' && s.sidecar.tiers.pending.empty)) return true;
      throw new Error(sidecars.map((s) => `${s.sidecar.tiers.mode}, ${s.sidecar.tiers.pending.size} pending, commands ${s.sidecar.redis!.link.state}, subscriber ${s.sidecar.redis!.subscriber.state}`).join('; '));
    },
    'the sidecars to be coherent',
    30_000,
  );

export interface LoadCounters {
  writes: number;
  writeErrors: number;
  reads: number;
  readErrors: number;
  fills: number;
}

export class TopologyLoad {
  readonly counters: LoadCounters = { writes: 0, writeErrors: 0, reads: 0, readErrors: 0, fills: 0 };
  private readonly db = new Map<string, string>();
  /** The number of each key's last answered write. */
  private readonly answered = new Map<string, number>();
  private running = false;
  private loops: Promise<void>[] = [];
  readonly keys: string[];

  constructor(
    private readonly clients: readonly ContextCacheClient[],
    prefix: string,
    keyCount = 48,
  ) {
    // Keys spread over the Cluster's buckets and slots.
    this.keys = Array.from({ length: keyCount }, (_, i) => `${prefix}-${i}`);
  }

  start(): void {
    this.running = true;
    this.keys.forEach((key, index) => this.loops.push(this.writer(key, this.clients[index % this.clients.length]!)));
    for (let r = 0; r < 4; r++) this.loops.push(this.reader());
  }

  async stop(): Promise<void> {
    this.running = false;
    await Promise.all(this.loops);
    this.loops = [];
  }

  /**
   * Every key through every sidecar: a miss, or no older than its last answered write. Returns the reads that were older.
   * Judged once every sidecar has applied the events of every write answered so far (helpers/barrier.ts).
   */
  async staleReads(): Promise<string[]> {
    await eventsDelivered(this.clients, CLUSTER_BUCKETS);
    const stale: string[] = [];
    for (const key of this.keys) {
      for (const client of this.clients) {
        const read = await client.get({ key });
        if (!read.found) continue;
        const n = Number(read.value.toString().split(':').at(-1));
        if (!(n >= (this.answered.get(key) ?? 0))) stale.push(`${key}: read ${read.value.toString()}, last answered write ${this.answered.get(key)}`);
      }
    }
    return stale;
  }

  /**
   * Fills every key from the database (under a lease, through the first
   * sidecar), then reads it through all, until they agree or 10 s pass (a
   * sidecar that just reconnected may answer its first writes LOCAL, and
   * converge once they are replayed): the keys on which they still disagree.
   */
  async disagreements(): Promise<string[]> {
    const [first] = this.clients;
    const disagree: string[] = [];
    for (const key of this.keys) {
      const deadline = Date.now() + 10_000;
      for (;;) {
        const read = await first!.get({ key, leaseOnMiss: true });
        if (!read.found && read.lease?.token) await first!.set({ key, value: Buffer.from(this.db.get(key)!), leaseToken: read.lease.token }).catch(() => undefined);
        const values = await Promise.all(this.clients.map((client) => client.get({ key }).then((r) => (r.found ? r.value.toString() : '(miss)'))));
        if (values.every((value) => value === this.db.get(key))) break;
        if (Date.now() > deadline) {
          disagree.push(`${key}: ${values.join(' / ')} vs ${this.db.get(key)}`);
          break;
        }
        await pause(50);
      }
    }
    return disagree;
  }

  private async writer(key: string, client: ContextCacheClient): Promise<void> {
    let n = 0;
    while (this.running) {
      const value = `${key}:${++n}`;
      this.db.set(key, value);
      try {
        await client.set({ key, value: Buffer.from(value), tags: [`t${n % 3}`] }, { deadline: 5000 });
        this.answered.set(key, n);
        this.counters.writes++;
      } catch {
        this.counters.writeErrors++;
      }
      await pause(2 + Math.random() * 8);
    }
  }

  private async reader(): Promise<void> {
    while (this.running) {
      const key = this.keys[Math.floor(Math.random() * this.keys.length)]!;
      const client = this.clients[Math.floor(Math.random() * this.clients.length)]!;
      try {
        const read = await client.get({ key, leaseOnMiss: true }, { deadline: 5000 });
        this.counters.reads++;
        if (!read.found && read.lease?.token) {
          // A fill under the lease: refused (ABORTED) when a write came in between.
          await client.set({ key, value: Buffer.from(this.db.get(key) ?? ''), leaseToken: read.lease.token }, { deadline: 5000 }).then(
            () => this.counters.fills++,
            () => undefined,
          );
        }
      } catch {
        this.counters.readErrors++;
      }
      await pause(1 + Math.random() * 4);
    }
  }
}

const pause = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
