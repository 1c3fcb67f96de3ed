import type { CacheEvent, EventEnvelope } from '../model/events';
import type { NodeRecord } from '../model/node';

/**
 * The wire form of an event on the namespace's Pub/Sub channel: compact
 * JSON, keys/tags/session with versions as strings (Lua's cjson would round
 * 16-digit numbers), never a cached value but an appended node. Every
 * message is written by the Lua script that performs the write, through
 * `publish_event` below, so a write and its announcement are one atomic
 * step; `decodeBusMessage` is the one reader.
 */
export interface BusMessage {
  /** Origin sidecar. */
  o: string;
  /** When it happened: epoch milliseconds as a string (Redis TIME or the origin's clock). */
  t?: string;
  /** k: keys, g: tags, s: session, n: node appended, f: the whole namespace was invalidated. */
  e: 'k' | 'g' | 's' | 'n' | 'f';
  c?: 'set' | 'del' | 'inv' | 'fill';
  k?: string[];
  v?: string[] | string;
  g?: string[];
  s?: string;
  n?: NodeRecord;
  /** Node events: the session's version before the append. */
  p?: string;
}

/**
 * The one writer of the format, for the scripts: fills in the origin and the
 * time (Redis's clock, ms) of `event` — a table with e, c, k, v, g, s, p as
 * above — and publishes it. `node_json`, when given, is the appended node,
 * already JSON (cjson would turn its empty metadata object into a list), and
 * becomes field n.
 */
export const PUBLISH_EVENT_LUA = `
local function publish_event(channel, origin, now_ms, event, node_json)
  event.o = origin
  event.t = string.format('%.0f', now_ms)
  local message = cjson.encode(event)
  if node_json then message = string.sub(message, 1, -2) .. ',"n":' .. node_json .. '}' end
  redis.call('PUBLISH', channel, message)
end
`;

/** Thrown for a message this version cannot trust; the message is ignored and counted. */
class MalformedMessage extends Error {}

const isString = (value: unknown): value is string => typeof value === 'string';
const isStringArray = (value: unknown): value is string[] => Array.isArray(value) && value.every(isString);

function integer(value: unknown, what: string): number {
  const number = typeof value === 'string' || typeof value === 'number' ? Number(value) : Number.NaN;
  if (!Number.isSafeInteger(number) || number < 0) throw new MalformedMessage(`${what} is not a non-negative integer`);
  return number;
}

/** A node as published by APPEND_SCRIPT (JSON.stringify of a NodeRecord); anything else is refused. */
function node(value: unknown): NodeRecord {
  const n = value as Partial<NodeRecord> | null;
  if (
    n === null ||
    typeof n !== 'object' ||
    ![n.id, n.shortId, n.sessionId, n.parentId, n.content].every(isString) ||
    !Number.isSafeInteger(n.role) ||
    (n.role as number) < 0 ||
    (n.role as number) > 2 ** 31 - 1 ||
    !Number.isSafeInteger(n.createdAt) ||
    !isStringArray(n.refs) ||
    typeof n.metadata !== 'object' ||
    n.metadata === null ||
    !Object.values(n.metadata).every(isString)
  ) {
    throw new MalformedMessage('node event with a malformed node');
  }
  return n as NodeRecord;
}

/**
 * Parses and checks one message. Messages come from other sidecars — of
 * another version during a rollout — or from anyone with PUBLISH rights on
 * the channel: nothing in them is trusted until checked.
 */
export function decodeBusMessage(raw: string, receivedAt: number): EventEnvelope[] {
  let message: BusMessage;
  try {
    message = JSON.parse(raw) as BusMessage;
  } catch {
    throw new MalformedMessage('not JSON');
  }
  if (message === null || typeof message !== 'object' || !isString(message.o)) throw new MalformedMessage('no origin');
  const time = message.t === undefined ? receivedAt : integer(message.t, 'time');
  const origin = message.o;
  const envelope = (event: CacheEvent): EventEnvelope => ({ event, origin, time });
  // cjson encodes an empty Lua table as {}: anything but an array of strings means none.
  const tags = isStringArray(message.g) ? message.g : [];
  switch (message.e) {
    case 'k': {
      const keys = message.k;
      const versions = message.v;
      if (!isStringArray(keys) || !isStringArray(versions) || versions.length !== keys.length) throw new MalformedMessage('key event without keys and versions');
      return keys.map((key, index) =>
        envelope({ kind: 'key', key, change: message.c === 'del' ? 'deleted' : 'set', version: integer(versions[index], 'version'), tags }),
      );
    }
    case 'g':
      // cjson encodes an empty list of keys as {} too.
      return [envelope({ kind: 'tags', tags, keys: isStringArray(message.k) ? message.k : [] })];
    case 's':
      if (!isString(message.s)) throw new MalformedMessage('session event without session');
      return [envelope({ kind: 'session', sessionId: message.s, change: message.c === 'fill' ? 'filled' : 'invalidated', version: integer(message.v, 'version') })];
    case 'n': {
      const sessionVersion = integer(message.v, 'version');
      let appended: NodeRecord;
      try {
        appended = node(message.n);
      } catch (error) {
        // The session did change: whatever this sidecar holds of it is older. Drop it rather than ignore the event.
        if (isString(message.s)) return [envelope({ kind: 'session', sessionId: message.s, change: 'invalidated', version: sessionVersion })];
        throw error;
      }
      return [envelope({ kind: 'node', node: appended, sessionVersion, previousVersion: integer(message.p ?? '0', 'previous version') })];
    }
    case 'f':
      return [envelope({ kind: 'resync', reason: 'namespace-flushed' })];
    default:
      throw new MalformedMessage(`unknown event type ${String(message.e)}`);
  }
}
