import type { RemoteEnvelope, RemoteEvent } from '../model/events';

/**
 * The wire form of an event on the namespace's Pub/Sub channel: compact
 * JSON, keys/tags/session with versions as strings (Lua's cjson would round
 * 16-digit numbers) — never a cached value, not even an appended node (a
 * receiver that needs it fetches it from Redis), so a message stays small
 * whatever was written. Every message is written by the Lua script that
 * performs the write, through `publish_event` below, so a write and its
 * announcement are one atomic step; `decodeBusMessage` is the one reader,
 * and trusts nothing: a message larger than MAX_BUS_MESSAGE_BYTES or of any
 * other shape is refused.
 */
export interface BusMessage {
  /** Origin sidecar. */
  o: string;
  /** When it happened: epoch milliseconds as a string (Redis TIME or the origin's clock). */
  t?: string;
  /** k: keys, g: tags, s: session, n: node appended, f: the whole namespace was invalidated; w: a lock waiter's turn (on the lock channel only). */
  e: 'k' | 'g' | 's' | 'n' | 'f' | 'w';
  c?: 'set' | 'del' | 'inv' | 'fill';
  k?: string[];
  v?: string[] | string;
  g?: string[];
  s?: string;
  /** Node events: the appended node's ID. Lock wake-ups: the waiter woken. */
  i?: string;
  /** Lock wake-ups: the lock's resource. */
  r?: string;
  /** Node events: the session's version before the append. */
  p?: string;
}

/**
 * The largest message a legitimate write publishes is a Delete of the most
 * keys per call at the longest key length (about 1.1 MB with the defaults);
 * anything beyond this is refused before it is parsed.
 */
export const MAX_BUS_MESSAGE_BYTES = 4 * 1024 * 1024;

/**
 * The one writer of the format, for the scripts: fills in the origin and the
 * time (Redis's clock, ms) of `event` — a table with e, c, k, v, g, s, i, p
 * as above — and publishes it.
 */
export const PUBLISH_EVENT_LUA = `
local function publish_event(channel, origin, now_ms, event)
  event.o = origin
  event.t = string.format('%.0f', now_ms)
  redis.call('PUBLISH', channel, cjson.encode(event))
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

/**
 * Parses and checks one message. Messages come from other sidecars — of
 * another version during a rollout — or from anyone with PUBLISH rights on
 * the channel: nothing in them is trusted until checked.
 */
export function decodeBusMessage(raw: string, receivedAt: number): RemoteEnvelope[] {
  if (raw.length > MAX_BUS_MESSAGE_BYTES) throw new MalformedMessage(`${raw.length} characters is over the ${MAX_BUS_MESSAGE_BYTES} limit`);
  let message: BusMessage;
  try {
    message = JSON.parse(raw) as BusMessage;
  } catch {
    throw new MalformedMessage('not JSON');
  }
  if (message === null || typeof message !== 'object' || !isString(message.o)) throw new MalformedMessage('no origin');
  const time = message.t === undefined ? receivedAt : integer(message.t, 'time');
  const origin = message.o;
  const envelope = (event: RemoteEvent): RemoteEnvelope => ({ event, origin, time });
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
      if (!isString(message.s) || !isString(message.i)) throw new MalformedMessage('node event without session and node');
      return [
        envelope({
          kind: 'appended',
          sessionId: message.s,
          nodeId: message.i,
          sessionVersion: integer(message.v, 'version'),
          previousVersion: integer(message.p ?? '0', 'previous version'),
        }),
      ];
    }
    case 'f':
      return [envelope({ kind: 'resync', reason: 'namespace-flushed' })];
    default:
      throw new MalformedMessage(`unknown event type ${String(message.e)}`);
  }
}

/** A lock wake-up is a resource (at most max-key-bytes) and a waiter ID: anything much larger is not one. */
export const MAX_LOCK_WAKE_BYTES = 16 * 1024;

/** A waiter's turn on a lock: its ID and the lock's resource. */
export interface LockWake {
  resource: string;
  waiter: string;
}

/**
 * The one reader of lock wake-ups (`e: 'w'`, written by the lock scripts
 * through publish_event on the lock channel). Undefined for anything else:
 * a wake-up only makes a waiter try once more, so a bad one is dropped.
 */
export function decodeLockWake(raw: string): LockWake | undefined {
  if (raw.length > MAX_LOCK_WAKE_BYTES) return undefined;
  let message: BusMessage;
  try {
    message = JSON.parse(raw) as BusMessage;
  } catch {
    return undefined;
  }
  if (message === null || typeof message !== 'object' || message.e !== 'w' || !isString(message.r) || !isString(message.i)) return undefined;
  return { resource: message.r, waiter: message.i };
}
