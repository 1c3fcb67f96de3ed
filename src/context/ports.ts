import type { NodeRecord } from '../model/node';
import type { TokenizerName } from '../model/tokenizer';

/** A session as the shared tier holds it: the nodes in order, with its version and expiry. */
export interface StoredSession {
  nodes: NodeRecord[];
  version: number;
  expiresAt: number;
}

/** How an append went in the shared tier. */
export interface StoredAppend {
  /** Whether Redis held the session and now holds the node too. */
  appended: boolean;
  version: number;
  /** The session's version before the append (0: it was not cached). */
  previousVersion: number;
  expiresAt: number;
}

/**
 * Sessions and the short-ID index in the shared tier. `src/redis/` implements
 * it; every method rejects when Redis fails, and each write revokes the
 * session's fill leases and announces itself, atomically.
 */
export interface SessionL2 {
  getMany(sessionIds: readonly string[]): Promise<(StoredSession | undefined)[]>;
  /**
   * As getMany, but each session's `nodes` are only those whose short IDs
   * its set holds (in session order): what a reference needs of a session
   * this sidecar does not hold, without decoding the rest of it.
   */
  pickMany(sessionIds: readonly string[], shortIds: readonly ReadonlySet<string>[]): Promise<(StoredSession | undefined)[]>;
  /** The fill after a miss; 'stale' when the lease no longer holds. */
  put(sessionId: string, nodes: readonly NodeRecord[], ttlMs: number, leaseToken: string): Promise<{ version: number; expiresAt: number } | 'stale'>;
  append(node: NodeRecord): Promise<StoredAppend>;
  invalidate(sessionId: string): Promise<{ existed: boolean; version: number }>;
  /** The node another sidecar appended at `version`, while it is still the session's last append; undefined otherwise. */
  appendedNode(sessionId: string, version: number): Promise<NodeRecord | undefined>;
  /** Points the nodes' short IDs at their session, for cross-session references. */
  indexShortIds(nodes: readonly NodeRecord[], ttlMs: number): Promise<void>;
  /** The session each short ID belongs to, as far as the index knows. */
  lookupShortIds(shortIds: readonly string[]): Promise<(string | undefined)[]>;
  /**
   * Rewrites the session's nodes as they are (now carrying token counts),
   * only if the session is still at `version`: best effort, so that other
   * sidecars reading it need not count again. False when it changed.
   */
  storeTokenCounts(sessionId: string, version: number, nodes: readonly NodeRecord[]): Promise<boolean>;
}

/**
 * Counts the tokens of texts with a tokenizer, without blocking the event
 * loop for long (`context/token-counter.ts` runs the library in a worker
 * thread). Rejects when counting is not possible right now.
 */
export interface TokenCounter {
  count(tokenizer: TokenizerName, texts: readonly string[]): Promise<number[]>;
  close(): Promise<void>;
}
