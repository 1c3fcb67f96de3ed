import type { NodeRecord } from './node';

const isString = (value: unknown): value is string => typeof value === 'string';

/**
 * The times a Date can hold (±100,000,000 days from the epoch, in ms): what
 * the edge accepts in created_at (`Date.getTime()` of a Timestamp), and what
 * can be turned back into a Timestamp when the node is served.
 */
export const MAX_CREATED_AT_MS = 8.64e15;

/** A token count as the wire carries it (uint32). */
const isCount = (value: unknown): value is number => Number.isSafeInteger(value) && (value as number) >= 0 && (value as number) <= 2 ** 32 - 1;

/** A plain object (from JSON.parse: no prototype tricks) whose own values all pass `isValue`. */
function isPlainMapOf(value: unknown, isValue: (item: unknown) => boolean): boolean {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) return false;
  const prototype = Object.getPrototypeOf(value) as unknown;
  if (prototype !== Object.prototype && prototype !== null) return false;
  for (const key in value) {
    if (Object.prototype.hasOwnProperty.call(value, key) && !isValue((value as Record<string, unknown>)[key])) return false;
  }
  return true;
}

/**
 * Whether an untrusted value (parsed from Redis, or from another sidecar)
 * has the exact shape of a NodeRecord: every field of its type, roles and
 * times in range, metadata a plain object of strings, references strings.
 * Anything else is never put in front of a caller.
 */
export function isNodeRecord(value: unknown): value is NodeRecord {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) return false;
  const n = value as Partial<NodeRecord>;
  return (
    isString(n.id) &&
    isString(n.shortId) &&
    isString(n.sessionId) &&
    isString(n.parentId) &&
    isString(n.content) &&
    Number.isSafeInteger(n.role) &&
    (n.role as number) >= 0 &&
    (n.role as number) <= 2 ** 31 - 1 &&
    Number.isSafeInteger(n.createdAt) &&
    Math.abs(n.createdAt as number) <= MAX_CREATED_AT_MS &&
    Array.isArray(n.refs) &&
    n.refs.every(isString) &&
    isPlainMapOf(n.metadata, isString) &&
    // Fields added later: absent in what older sidecars wrote.
    (n.tokenCount === undefined || isCount(n.tokenCount)) &&
    (n.tokenCountTokenizer === undefined || isString(n.tokenCountTokenizer)) &&
    (n.pinned === undefined || typeof n.pinned === 'boolean') &&
    (n.summarizesThrough === undefined || isString(n.summarizesThrough)) &&
    // Counts of tokenizers this version does not know are allowed: a newer sidecar's.
    (n.tokens === undefined || isPlainMapOf(n.tokens, isCount))
  );
}
