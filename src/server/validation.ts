import type { Config } from '../config';
import { invalidArgument } from '../errors';
import type { Duration } from '../gen/google/protobuf/duration';

/**
 * Checks what arrives over the wire against the documented limits, naming
 * the field and the rule in the message so that the caller can fix the
 * request without reading our code.
 */
export class RequestValidator {
  constructor(private readonly config: Config) {}

  key(key: string, field = 'key'): string {
    if (key.length === 0) throw invalidArgument(`${field} is empty; keys are 1 to ${this.config.maxKeyBytes} bytes of UTF-8`);
    const bytes = Buffer.byteLength(key);
    if (bytes > this.config.maxKeyBytes) {
      throw invalidArgument(`${field} is ${bytes} bytes; the limit is ${this.config.maxKeyBytes} bytes`);
    }
    return key;
  }

  keys(keys: readonly string[], field = 'keys'): string[] {
    if (keys.length === 0) throw invalidArgument(`${field} is empty; send 1 to ${this.config.maxKeysPerCall} keys`);
    if (keys.length > this.config.maxKeysPerCall) {
      throw invalidArgument(`${field} has ${keys.length} entries; the limit is ${this.config.maxKeysPerCall} per call`);
    }
    return keys.map((key, index) => this.key(key, `${field}[${index}]`));
  }

  value(value: Buffer, field = 'value'): Buffer {
    if (value.byteLength > this.config.maxValueBytes) {
      throw invalidArgument(`${field} is ${value.byteLength} bytes; the limit is ${this.config.maxValueBytes} bytes`);
    }
    return value;
  }

  tags(tags: readonly string[], field = 'tags', min = 0): string[] {
    const max = this.config.maxTagsPerEntry;
    if (tags.length < min || tags.length > max) {
      throw invalidArgument(`${field} has ${tags.length} entries; send ${min} to ${max}`);
    }
    return [
      ...new Set(
        tags.map((tag, index) => {
          // eslint-disable-next-line no-control-regex
          if (/[\x00-\x1f]/.test(tag)) throw invalidArgument(`${field}[${index}] contains a control character; tags are printable text`);
          return this.key(tag, `${field}[${index}]`);
        }),
      ),
    ];
  }

  /** A TTL in milliseconds; unset or zero means the configured default. */
  ttl(ttl: Duration | undefined, field = 'ttl'): number {
    const ms = this.duration(ttl, field, MAX_TTL_MS);
    return ms === 0 ? this.config.defaultTtlMs : ms;
  }

  /**
   * What a caller asks for with lease_on_miss: the lease's lifetime, and how
   * long to wait for another caller's fill — bounded by the call's deadline
   * and by the lease lifetime.
   */
  leaseRequest(leaseTtl: Duration | undefined, leaseWait: Duration | undefined, deadline: Date | number): { ttlMs: number; waitUntil: number; callDeadline: number } {
    const ttlMs = this.duration(leaseTtl, 'lease_ttl', 600_000) || this.config.leaseTtlMs;
    const waitMs = this.duration(leaseWait, 'lease_wait', 600_000) || ttlMs;
    const deadlineMs = deadline instanceof Date ? deadline.getTime() : deadline;
    // Leave a little of the deadline to answer in.
    const callLimit = Number.isFinite(deadlineMs) ? deadlineMs - 20 : Infinity;
    return { ttlMs, waitUntil: Math.min(Date.now() + waitMs, callLimit), callDeadline: Number.isFinite(deadlineMs) ? deadlineMs : Infinity };
  }

  /** An optional duration in milliseconds, 0 when unset, within [0, maxMs]. */
  duration(duration: Duration | undefined, field: string, maxMs: number): number {
    const ms = durationMs(duration, field);
    if (ms > maxMs) throw invalidArgument(`${field} is ${ms} ms; the limit is ${maxMs} ms`);
    return ms;
  }

  /** A proto enum value that this version knows; 0 (unspecified) only when allowed. */
  enumValue<E extends number>(value: number, known: Record<string, string | number>, field: string, allowUnspecified = false): E {
    const name = known[value];
    if (typeof name !== 'string' || (value === 0 && !allowUnspecified) || value < 0) {
      const allowed = Object.entries(known)
        .filter(([, v]) => typeof v === 'number' && (v !== 0 || allowUnspecified) && v >= 0)
        .map(([k, v]) => `${k} (${v})`)
        .join(', ');
      throw invalidArgument(`${field} ${value} is not a known value; use one of ${allowed}`);
    }
    return value as E;
  }
}

const MAX_TTL_MS = 365 * 24 * 3_600_000;

function durationMs(duration: Duration | undefined, field: string): number {
  if (duration === undefined) return 0;
  const { seconds, nanos } = duration;
  if (seconds < 0 || nanos < 0) throw invalidArgument(`${field} is negative; use a positive duration or leave it unset for the default`);
  if (nanos > 999_999_999) throw invalidArgument(`${field}.nanos ${nanos} is out of range 0 to 999999999`);
  return seconds * 1000 + Math.ceil(nanos / 1e6);
}
