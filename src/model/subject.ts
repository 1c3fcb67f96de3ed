import type { EventEnvelope } from './events';

/**
 * What a cache operation is about: a generic entry (by key) or a session (by
 * ID). The two kinds share L1, its byte budget and the lease machinery, under
 * distinct L1 keys; Redis keys are a matter of `redis/keys.ts` alone.
 */
export type SubjectKind = 'entry' | 'session';

export interface Subject {
  kind: SubjectKind;
  id: string;
}

const L1_PREFIX: Record<SubjectKind, string> = { entry: 'k:', session: 's:' };

/** The L1 key of a subject: `k:<key>` for entries, `s:<session id>` for sessions. */
export function l1Key(kind: SubjectKind, id: string): string {
  return L1_PREFIX[kind] + id;
}

/** The subject ID of an L1 key of the given kind (the inverse of l1Key). */
export function idOfL1Key(kind: SubjectKind, key: string): string {
  return key.slice(L1_PREFIX[kind].length);
}

/** The L1 key an event is about, if any: lease waiters on that key are woken by it. */
export function l1KeyOfEvent(envelope: EventEnvelope): string | undefined {
  const { event } = envelope;
  switch (event.kind) {
    case 'key':
      return l1Key('entry', event.key);
    case 'session':
      return l1Key('session', event.sessionId);
    case 'node':
      return l1Key('session', event.node.sessionId);
    default:
      return undefined;
  }
}
