import { Role, type DeepPartial, type Node } from '../../src/client';

/** A node for tests: short ID `<session>-<n>` unless given, created n seconds after a fixed epoch. */
export function node(sessionId: string, n: number, extra: DeepPartial<Node> = {}): DeepPartial<Node> {
  return {
    id: `${sessionId}/n${n}`,
    shortId: `${sessionId}-${n}`,
    sessionId,
    parentId: n > 0 ? `${sessionId}/n${n - 1}` : '',
    role: n % 2 === 0 ? Role.ROLE_USER : Role.ROLE_ASSISTANT,
    content: `message ${n} of ${sessionId}`,
    createdAt: new Date(Date.UTC(2026, 0, 1) + n * 1000),
    ...extra,
  };
}

/** A linear session of `count` nodes. */
export function session(sessionId: string, count: number, extra: (n: number) => DeepPartial<Node> = () => ({})): DeepPartial<Node>[] {
  return Array.from({ length: count }, (_, n) => node(sessionId, n, extra(n)));
}
