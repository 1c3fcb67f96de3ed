/**
 * The app's PostgreSQL connection: a pg pool in one schema of its own, and
 * the app's own count of the queries it sends (by kind, with their time), so
 * the database load of the two modes can be compared without
 * pg_stat_statements (which needs a server restart to load).
 */
import { randomBytes } from 'node:crypto';
import { Pool, type QueryResultRow } from 'pg';

/** The database of this machine kind: trust auth, user postgres, database test. DATABASE_URL overrides. */
export const DEFAULT_DATABASE_URL = 'postgres://postgres@127.0.0.1:5432/test';

export function databaseUrl(): string {
  return process.env.DATABASE_URL?.trim() || DEFAULT_DATABASE_URL;
}

/** What a query is for: reads that build a prompt's context or fill the cache for it, another device's reads, writes. */
export type QueryKind = 'context-path' | 'context-refs' | 'load-session' | 'lookup-short-ids' | 'sync-read' | 'write' | 'schema';

export const CONTEXT_READS: readonly QueryKind[] = ['context-path', 'context-refs', 'load-session', 'lookup-short-ids'];

export interface QueryCounts {
  /** Queries sent, by kind. */
  count: Record<QueryKind, number>;
  /** Milliseconds from send to answer (pool wait included), by kind. */
  ms: Record<QueryKind, number>;
}

function emptyCounts(): QueryCounts {
  const zero = () => ({ 'context-path': 0, 'context-refs': 0, 'load-session': 0, 'lookup-short-ids': 0, 'sync-read': 0, write: 0, schema: 0 });
  return { count: zero(), ms: zero() };
}

/** A schema name nobody else uses, so parallel runs on one server never meet. */
export function freshSchemaName(prefix = 'chat'): string {
  return `${prefix}_${randomBytes(6).toString('hex')}`;
}

export interface DatabaseOptions {
  url?: string;
  /** The schema every query runs in (search_path); created by ChatStore.createSchema. */
  schema: string;
  /** Connections at most (default 8). */
  maxConnections?: number;
}

/** A pg pool bound to one schema, counting every query it runs. */
export class CountingPool {
  readonly schema: string;
  private readonly pool: Pool;
  private counts = emptyCounts();
  private closed = false;

  constructor(options: DatabaseOptions) {
    if (!/^[a-z_][a-z0-9_]{0,62}$/.test(options.schema)) throw new Error(`schema "${options.schema}" is not a plain lower-case SQL identifier`);
    this.schema = options.schema;
    this.pool = new Pool({
      connectionString: options.url ?? databaseUrl(),
      max: options.maxConnections ?? 8,
      // Every connection works in the app's schema; the search path is set once per connection, not per query.
      options: `-c search_path=${options.schema}`,
      connectionTimeoutMillis: 10_000,
    });
    // An idle connection the server drops must not crash the app; the next query opens a new one.
    this.pool.on('error', () => undefined);
  }

  async query<Row extends QueryResultRow>(kind: QueryKind, text: string, values: unknown[] = []): Promise<Row[]> {
    const started = performance.now();
    try {
      return (await this.pool.query<Row>(text, values)).rows;
    } finally {
      this.counts.count[kind]++;
      this.counts.ms[kind] += performance.now() - started;
    }
  }

  /** The counts so far (a copy). */
  snapshot(): QueryCounts {
    return { count: { ...this.counts.count }, ms: { ...this.counts.ms } };
  }

  resetCounts(): void {
    this.counts = emptyCounts();
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.pool.end();
  }
}

/** Sums of several pools' counts (one pool per app instance). */
export function addCounts(all: readonly QueryCounts[]): QueryCounts {
  const total = emptyCounts();
  for (const counts of all) {
    for (const kind of Object.keys(total.count) as QueryKind[]) {
      total.count[kind] += counts.count[kind];
      total.ms[kind] += counts.ms[kind];
    }
  }
  return total;
}

export function sumOf(counts: QueryCounts, kinds: readonly QueryKind[], field: 'count' | 'ms' = 'count'): number {
  return kinds.reduce((sum, kind) => sum + counts[field][kind], 0);
}
