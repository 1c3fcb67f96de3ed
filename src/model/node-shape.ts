import type { NodeRecord } from './node';

const isString = (value: unknown): value is string => typeof value === 'string';

/**
 * Whether an untrusted value (parsed from Redis, or from another sidecar)
 * has the exact shape of a NodeRecord: every field of its type, roles and
 * times in range, metadata a plain object of strings, references strings.
 * Anything else is never put in front of a caller.
 */
export function isNodeRecord(value: unknown): value is NodeRecord {
  const n = value as Partial<NodeRecord> | null;
  return (
    n !== null &&
    typeof n === 'object' &&
    !Array.isArray(n) &&
    [n.id, n.shortId, n.sessionId, n.parentId, n.content].every(isString) &&
    Number.isSafeInteger(n.role) &&
    (n.role as number) >= 0 &&
    (n.role as number) <= 2 ** 31 - 1 &&
    Number.isSafeInteger(n.createdAt) &&
    Array.isArray(n.refs) &&
    n.refs.every(isString) &&
    typeof n.metadata === 'object' &&
    n.metadata !== null &&
    !Array.isArray(n.metadata) &&
    Object.values(n.metadata).every(isString)
  );
}
