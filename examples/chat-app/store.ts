/**
 * The conversations in PostgreSQL, the source of truth: sessions, messages
 * (nodes) with parent links (a conversation branches when two messages
 * answer the same one) and references across sessions by short ID. Every
 * write is one statement, committed when it returns.
 */
import { randomBytes, randomUUID } from 'node:crypto';
import type { CountingPool } from './db';

export type MessageRole = 'system' | 'user' | 'assistant' | 'tool';

/** One message as the app and its database know it. */
export interface Message {
  id: string;
  /** The handle people type to reference it from another conversation. */
  shortId: string;
  sessionId: string;
  /** '' for the first message of a conversation. */
  parentId: string;
  /** Messages between it and the conversation's first (0 for the first): lets the app see a gap in a cached path. */
  depth: number;
  role: MessageRole;
  content: string;
  /** Short IDs it references. */
  refs: string[];
  createdAt: Date;
}

interface MessageRow {
  id: string;
  short_id: string;
  session_id: string;
  parent_id: string | null;
  depth: number;
  role: MessageRole;
  content: string;
  refs: string[];
  created_at: Date;
}

const COLUMNS = 'id, short_id, session_id, parent_id, depth, role, content, refs, created_at';

function fromRow(row: MessageRow): Message {
  return {
    id: row.id,
    shortId: row.short_id,
    sessionId: row.session_id,
    parentId: row.parent_id ?? '',
    depth: row.depth,
    role: row.role,
    content: row.content,
    refs: row.refs,
    createdAt: row.created_at,
  };
}

const SHORT_ID_ALPHABET = 'abcdefghijkmnpqrstuvwxyz23456789';

/** 10 characters a person can type (no 0/o, 1/l): 50 bits, unique in the table by constraint. */
export function newShortId(): string {
  const bytes = randomBytes(10);
  let id = '';
  for (const byte of bytes) id += SHORT_ID_ALPHABET[byte % SHORT_ID_ALPHABET.length];
  return id;
}

export interface NewMessage {
  sessionId: string;
  parentId: string;
  role: MessageRole;
  content: string;
  refs?: string[];
}

export class ChatStore {
  constructor(readonly db: CountingPool) {}

  /** Creates the app's tables in its schema (idempotent). */
  async createSchema(): Promise<void> {
    await this.db.query('schema', `CREATE SCHEMA IF NOT EXISTS ${this.db.schema}`);
    await this.db.query(
      'schema',
      `CREATE TABLE IF NOT EXISTS sessions (
         id text PRIMARY KEY,
         user_id text NOT NULL,
         title text NOT NULL DEFAULT '',
         created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
         updated_at timestamptz NOT NULL DEFAULT clock_timestamp()
       );
       CREATE INDEX IF NOT EXISTS sessions_user ON sessions (user_id);
       CREATE TABLE IF NOT EXISTS nodes (
         seq bigserial UNIQUE,
         id text PRIMARY KEY,
         short_id text NOT NULL UNIQUE,
         session_id text NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
         parent_id text REFERENCES nodes (id) ON DELETE CASCADE,
         depth integer NOT NULL,
         role text NOT NULL CHECK (role IN ('system', 'user', 'assistant', 'tool')),
         content text NOT NULL,
         refs text[] NOT NULL DEFAULT '{}',
         created_at timestamptz NOT NULL DEFAULT clock_timestamp()
       );
       CREATE INDEX IF NOT EXISTS nodes_session ON nodes (session_id, seq);
       CREATE INDEX IF NOT EXISTS nodes_parent ON nodes (parent_id);`,
    );
  }

  /** Drops the schema and everything in it. */
  async dropSchema(): Promise<void> {
    await this.db.query('schema', `DROP SCHEMA IF EXISTS ${this.db.schema} CASCADE`);
  }

  async createSession(userId: string, title = ''): Promise<string> {
    const id = randomUUID();
    await this.db.query('write', 'INSERT INTO sessions (id, user_id, title) VALUES ($1, $2, $3)', [id, userId, title]);
    return id;
  }

  /**
   * Inserts a message (committed when this returns): its depth follows from
   * its parent, which must be a message of the same session; the session's
   * updated_at moves in the same statement.
   */
  async insertMessage(message: NewMessage): Promise<Message> {
    const rows = await this.db.query<MessageRow>(
      'write',
      `WITH touched AS (UPDATE sessions SET updated_at = clock_timestamp() WHERE id = $3 RETURNING id)
       INSERT INTO nodes (id, short_id, session_id, parent_id, depth, role, content, refs)
       SELECT $1, $2, touched.id, $4,
              CASE WHEN $4::text IS NULL THEN 0 ELSE (SELECT depth + 1 FROM nodes WHERE id = $4 AND session_id = $3) END,
              $5, $6, $7
       FROM touched
       RETURNING ${COLUMNS}`,
      [randomUUID(), newShortId(), message.sessionId, message.parentId || null, message.role, message.content, message.refs ?? []],
    );
    if (rows.length === 0) throw new Error(`session ${message.sessionId} does not exist`);
    return fromRow(rows[0]!);
  }

  /** Seeds many messages of one session at once (the bench's history), in the order given. */
  async insertHistory(messages: readonly Message[]): Promise<void> {
    if (messages.length === 0) return;
    await this.db.query(
      'write',
      `INSERT INTO nodes (id, short_id, session_id, parent_id, depth, role, content, refs, created_at)
       SELECT m.id, m.short_id, m.session_id, m.parent_id, m.depth, m.role, m.content, m.refs::text[], m.created_at
       FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::int[], $6::text[], $7::text[], $8::text[], $9::timestamptz[])
            AS m(id, short_id, session_id, parent_id, depth, role, content, refs, created_at)`,
      [
        messages.map((m) => m.id),
        messages.map((m) => m.shortId),
        messages.map((m) => m.sessionId),
        messages.map((m) => m.parentId || null),
        messages.map((m) => m.depth),
        messages.map((m) => m.role),
        messages.map((m) => m.content),
        // unnest of a text[][] would flatten: each message's refs travel as one array literal.
        messages.map((m) => `{${m.refs.map((r) => `"${r}"`).join(',')}}`),
        messages.map((m) => m.createdAt),
      ],
    );
  }

  /** Seeds sessions at once (the bench's history). */
  async insertSessions(sessions: readonly { id: string; userId: string }[]): Promise<void> {
    if (sessions.length === 0) return;
    await this.db.query('write', 'INSERT INTO sessions (id, user_id) SELECT * FROM unnest($1::text[], $2::text[])', [sessions.map((s) => s.id), sessions.map((s) => s.userId)]);
  }

  /** Deletes a conversation and its messages. */
  async deleteSession(sessionId: string): Promise<boolean> {
    const rows = await this.db.query('write', 'DELETE FROM sessions WHERE id = $1 RETURNING id', [sessionId]);
    return rows.length > 0;
  }

  /** The path from the conversation's first message to `headId` (parent links), first message first: one recursive query. */
  async path(sessionId: string, headId: string): Promise<Message[]> {
    const rows = await this.db.query<MessageRow>(
      'context-path',
      `WITH RECURSIVE path AS (
         SELECT ${COLUMNS} FROM nodes WHERE id = $1 AND session_id = $2
         UNION ALL
         SELECT n.id, n.short_id, n.session_id, n.parent_id, n.depth, n.role, n.content, n.refs, n.created_at
         FROM nodes n JOIN path ON n.id = path.parent_id
       )
       SELECT ${COLUMNS} FROM path ORDER BY depth`,
      [headId, sessionId],
    );
    return rows.map(fromRow);
  }

  /** Messages carrying these short IDs, in any session. */
  async messagesByShortIds(shortIds: readonly string[]): Promise<Message[]> {
    if (shortIds.length === 0) return [];
    const rows = await this.db.query<MessageRow>('context-refs', `SELECT ${COLUMNS} FROM nodes WHERE short_id = ANY($1::text[])`, [shortIds]);
    return rows.map(fromRow);
  }

  /** A whole conversation, every branch, in the order it was written (what fills the cache). */
  async loadSession(sessionId: string, kind: 'load-session' | 'sync-read' = 'load-session'): Promise<Message[]> {
    const rows = await this.db.query<MessageRow>(kind, `SELECT ${COLUMNS} FROM nodes WHERE session_id = $1 ORDER BY seq`, [sessionId]);
    return rows.map(fromRow);
  }

  /** The sessions that hold these short IDs (for references the cache cannot place): short ID → session ID. */
  async sessionsOfShortIds(shortIds: readonly string[]): Promise<Map<string, string>> {
    if (shortIds.length === 0) return new Map();
    const rows = await this.db.query<{ short_id: string; session_id: string }>('lookup-short-ids', 'SELECT short_id, session_id FROM nodes WHERE short_id = ANY($1::text[])', [shortIds]);
    return new Map(rows.map((row) => [row.short_id, row.session_id]));
  }
}
