import { readFileSync } from 'node:fs';
import { isTokenizer, TOKENIZERS, type TokenizerName } from './model/tokenizer';

/**
 * The sidecar's configuration: read from the environment once at start-up,
 * validated, and frozen into a typed object. An invalid value stops start-up
 * with a message naming the variable and what it accepts, so a typo fails the
 * rollout instead of surfacing at 2 a.m.
 */

export type LogLevel = 'fatal' | 'error' | 'warn' | 'info' | 'debug' | 'trace' | 'silent';

/** A Redis endpoint: a Cluster seed node or a Sentinel. */
export interface HostPort {
  host: string;
  port: number;
}

/**
 * How the sidecar finds its Redis: one server (REDIS_URL or REDIS_HOST), a
 * Redis Cluster from seed nodes (REDIS_CLUSTER_NODES), or the primary that
 * Sentinel names (REDIS_SENTINELS with REDIS_SENTINEL_MASTER_NAME).
 */
export type RedisTopology =
  | { kind: 'single' }
  | { kind: 'cluster'; seeds: HostPort[] }
  | { kind: 'sentinel'; sentinels: HostPort[]; masterName: string; sentinelUsername: string | undefined; sentinelPassword: string | undefined };

export interface RedisConfig {
  topology: RedisTopology;
  /** The server (single); the first seed or Sentinel otherwise. */
  host: string;
  port: number;
  username: string | undefined;
  password: string | undefined;
  db: number;
  tls: boolean;
  /** PEM certificates to trust for TLS (REDIS_TLS_CA_FILE); undefined: the system's CAs. */
  tlsCa: Buffer | undefined;
  /** Where the settings came from, for the start-up log (never the password). */
  describe: string;
}

export interface Config {
  /** `host:port` or `unix:/path/to.sock`. */
  listen: string;
  /** A second address serving only grpc.health.v1, for kubelet probes. */
  healthListen: string | undefined;
  /** HTTP admin address; undefined when off. */
  adminListen: string | undefined;
  /** Every key this sidecar touches, in memory and in Redis, lives under it. */
  namespace: string;
  l1MaxBytes: number;
  defaultTtlMs: number;
  maxKeyBytes: number;
  maxValueBytes: number;
  maxKeysPerCall: number;
  maxTagsPerEntry: number;
  /** gRPC max receive/send message size. */
  maxMessageBytes: number;
  shutdownGraceMs: number;
  compressionThreshold: number;
  redisCommandTimeoutMs: number;
  redisReconnectMaxMs: number;
  /**
   * How long after Redis became unusable L1 may still answer reads (marked
   * degraded); Infinity for no bound, 0 to refuse L1 hits at once.
   */
  degradedMaxAgeMs: number;
  pubsubHeartbeatMs: number;
  /** Bytes buffered per Watch stream for a reader that falls behind. */
  watchBufferBytes: number;
  /** Bytes buffered across all Watch streams of the sidecar. */
  watchTotalBufferBytes: number;
  watchMaxStreams: number;
  /** Bytes of recent events kept for Watch streams that resume (0: none). */
  watchResumeBufferBytes: number;
  leaseTtlMs: number;
  /** The tokenizer of a BuildContext that names none (CONTEXT_CACHE_TOKENIZER). */
  tokenizer: TokenizerName;
  logLevel: LogLevel;
  /** `undefined`: L1-only by configuration. */
  redis: RedisConfig | undefined;
  /**
   * Independent Redis masters for distributed locks (Redlock: a majority must
   * agree). `undefined`: locks use the main Redis connection (`redis`), and
   * are unavailable when that is unset too.
   */
  lockRedis: readonly RedisConfig[] | undefined;
  /**
   * Caller authentication (CONTEXT_CACHE_AUTH_TOKEN_FILE); `undefined`: off,
   * every call is accepted.
   */
  auth: AuthConfig | undefined;
  /** OpenTelemetry tracing from the standard OTEL_* variables; `undefined`: off (the default). */
  tracing: TracingConfig | undefined;
}

/** OTLP over HTTP with protobuf or JSON bodies, or over gRPC. */
export type OtlpProtocol = 'http/protobuf' | 'http/json' | 'grpc';

export const TRACE_SAMPLERS = ['parentbased_always_on', 'parentbased_always_off', 'parentbased_traceidratio', 'always_on', 'always_off', 'traceidratio'] as const;
export type TraceSampler = (typeof TRACE_SAMPLERS)[number];

/**
 * Where and how spans are exported (`ops/tracing.ts` hands these values to
 * the OpenTelemetry SDK explicitly). The headers are not enumerable: they
 * often carry a collector's API key, and the configuration is logged.
 */
export interface TracingConfig {
  protocol: OtlpProtocol;
  /** The full URL spans are sent to (HTTP: …/v1/traces; gRPC: the collector's address). */
  endpoint: string;
  readonly headers: Readonly<Record<string, string>>;
  timeoutMs: number;
  /** PEM certificates to trust for an https endpoint (OTEL_EXPORTER_OTLP_CERTIFICATE); undefined: the system's CAs. */
  certificate: Buffer | undefined;
  sampler: TraceSampler;
  /** The ratio of the traceidratio samplers, 0 to 1. */
  samplerRatio: number;
  serviceName: string;
  /** OTEL_RESOURCE_ATTRIBUTES, decoded. */
  resourceAttributes: Readonly<Record<string, string>>;
  /** CONTEXT_CACHE_TRACE_KEYS: spans carry the keys, session IDs and lock resources of a call. */
  traceKeys: boolean;
}

/**
 * The bearer token callers must present. `token` is what the file held at
 * start-up; it is not enumerable, so logging or serialising the
 * configuration never shows it. `server/auth.ts` reloads it when the file changes.
 */
export interface AuthConfig {
  tokenFile: string;
  readonly token: string;
}

export class ConfigError extends Error {
  constructor(
    readonly variable: string,
    message: string,
  ) {
    super(`${variable}: ${message}`);
    this.name = 'ConfigError';
  }
}

type Env = Record<string, string | undefined>;

const SIZE_UNITS: Record<string, number> = { '': 1, b: 1, kb: 1000, kib: 1024, mb: 1e6, mib: 1024 ** 2, gb: 1e9, gib: 1024 ** 3 };
const DURATION_UNITS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 };
const LOG_LEVELS: readonly LogLevel[] = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'];
const NAMESPACE_PATTERN = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/;

/**
 * Every environment variable the sidecar reads, with its default and meaning.
 * The README's configuration table and the deployment tests are checked
 * against this list; reading a variable that is not listed here is a bug.
 */
export const CONFIG_VARIABLES = {
  CONTEXT_CACHE_LISTEN: { default: '127.0.0.1:50051', help: 'gRPC address: host:port, [::1]:port, or unix:/path/to.sock. Loopback by default.' },
  CONTEXT_CACHE_HEALTH_LISTEN: { default: '(off)', help: 'Extra address that serves only grpc.health.v1 (for kubelet gRPC probes while the API stays on loopback or a Unix socket).' },
  CONTEXT_CACHE_ADMIN_LISTEN: { default: '127.0.0.1:50053', help: 'HTTP admin address (/metrics, /healthz, /readyz): host:port, or off.' },
  CONTEXT_CACHE_NAMESPACE: { default: 'default', help: 'Every key in memory and in Redis lives under it; sidecars sharing a namespace share a cache.' },
  CONTEXT_CACHE_L1_MAX_BYTES: { default: '256MiB', help: 'Bound on the in-memory tier: keys, values and bookkeeping.' },
  CONTEXT_CACHE_DEFAULT_TTL: { default: '900s', help: 'TTL of entries written without one (units: ms, s, m, h; a bare number is seconds).' },
  CONTEXT_CACHE_MAX_KEY_BYTES: { default: '1KiB', help: 'Longest key, tag, session ID or lock resource.' },
  CONTEXT_CACHE_MAX_VALUE_BYTES: { default: '8MiB', help: 'Largest value accepted by Set.' },
  CONTEXT_CACHE_MAX_KEYS_PER_CALL: { default: '1000', help: 'Most keys in one GetMany, Delete or ResolveShortIds.' },
  CONTEXT_CACHE_MAX_MESSAGE_BYTES: { default: '16MiB', help: 'Largest gRPC message in either direction; must exceed the value limit.' },
  CONTEXT_CACHE_SHUTDOWN_GRACE: { default: '10s', help: 'How long calls in flight may finish after SIGTERM before they are cut.' },
  CONTEXT_CACHE_COMPRESSION_THRESHOLD: { default: '1KiB', help: 'Values this large or larger are snappy-compressed in Redis when that makes them smaller.' },
  CONTEXT_CACHE_REDIS_COMMAND_TIMEOUT: { default: '500ms', help: 'A Redis command that takes longer fails, and the link is treated as down until it reconnects.' },
  CONTEXT_CACHE_REDIS_RECONNECT_MAX: { default: '500ms', help: 'Cap of the exponential reconnect backoff (full jitter, from 100 ms). Low, so a sidecar is coherent again well within a second of Redis returning; a refused connect to a dead Redis costs next to nothing, and the jitter keeps the fleet from reconnecting in lockstep.' },
  CONTEXT_CACHE_DEGRADED_MAX_AGE: { default: '30s', help: 'While Redis is unreachable, L1 keeps answering reads (EntryInfo.degraded) for at most this long after the outage began; then reads are misses, so the app goes to its source of truth. 30 s rides out a failover or a restart; 0 refuses degraded reads; off never stops serving them.' },
  CONTEXT_CACHE_PUBSUB_HEARTBEAT: { default: '5s', help: 'How often the Pub/Sub subscription PINGs on its own connection (no answer within the command timeout: re-subscribe and resync), and Redis is checked for lost data (FLUSHALL, restart).' },
  CONTEXT_CACHE_WATCH_BUFFER: { default: '256KiB', help: 'Bytes buffered per Watch stream for a reader that falls behind; past it the stream drops events and gets a Resync (STREAM_OVERFLOW) once it has caught up.' },
  CONTEXT_CACHE_WATCH_TOTAL_BUFFER: { default: '64MiB', help: 'Bytes buffered across all Watch streams; a stream whose event would exceed it is treated as past its own buffer. 1,000 streams that never read cost at most this.' },
  CONTEXT_CACHE_WATCH_MAX_STREAMS: { default: '5000', help: 'Open Watch streams at most; more are refused with RESOURCE_EXHAUSTED.' },
  CONTEXT_CACHE_WATCH_RESUME_BUFFER: { default: '8MiB', help: 'Bytes of recent events kept (at most 100,000 events) so that a Watch stream that was cut can resume (WatchRequest.resume_after) without a gap; a resume from further back gets a Resync (RESUME_GAP). 0 keeps none.' },
  CONTEXT_CACHE_LEASE_TTL: { default: '10s', help: 'Default lifetime of a fill lease granted on a miss (lease_ttl overrides it per call).' },
  CONTEXT_CACHE_TOKENIZER: {
    default: 'o200k_base',
    help: 'Tokenizer of a BuildContext that names none (max_tokens, total_tokens): o200k_base (GPT-4o and later) or cl100k_base (GPT-4, GPT-3.5). Loaded on first use, in a worker thread.',
  },
  CONTEXT_CACHE_LOG_LEVEL: { default: 'info', help: 'fatal, error, warn, info, debug, trace or silent.' },
  REDIS_URL: { default: '(unset)', help: 'redis://[user:password@]host:port[/db], or rediss:// for TLS. Unset together with REDIS_HOST: L1-only.' },
  REDIS_HOST: { default: '(unset)', help: 'Redis host, when not using REDIS_URL.' },
  REDIS_PORT: { default: '6379', help: 'Redis port, with REDIS_HOST.' },
  REDIS_USERNAME: { default: '(unset)', help: 'Redis ACL user.' },
  REDIS_PASSWORD: { default: '(unset)', help: 'Redis password; from a Secret, never logged.' },
  REDIS_DB: { default: '0', help: 'Redis database number (a Redis Cluster has only 0).' },
  REDIS_CLUSTER_NODES: { default: '(unset)', help: 'Comma-separated host:port seed nodes of a Redis Cluster; selects Cluster mode (the rest of the topology is discovered). With REDIS_USERNAME, REDIS_PASSWORD, REDIS_TLS.' },
  REDIS_SENTINELS: { default: '(unset)', help: 'Comma-separated host:port of Redis Sentinels; selects Sentinel mode, with REDIS_SENTINEL_MASTER_NAME. REDIS_USERNAME and REDIS_PASSWORD are the data servers\' credentials.' },
  REDIS_SENTINEL_MASTER_NAME: { default: '(unset)', help: 'The master name the Sentinels monitor (sentinel monitor NAME ...), with REDIS_SENTINELS.' },
  REDIS_SENTINEL_USERNAME: { default: '(unset)', help: 'ACL user of the Sentinels themselves, where it differs from the data servers\' (none by default).' },
  REDIS_SENTINEL_PASSWORD: { default: '(unset)', help: 'Password of the Sentinels themselves (requirepass in sentinel.conf); from a Secret, never logged.' },
  REDIS_TLS: { default: 'false', help: 'true for TLS, with REDIS_HOST, REDIS_CLUSTER_NODES or REDIS_SENTINELS (Sentinels and the servers they name alike).' },
  REDIS_TLS_CA_FILE: { default: '(system CAs)', help: 'PEM file of CA certificates to trust for TLS to Redis (a private CA); the server name is always verified.' },
  CONTEXT_CACHE_AUTH_TOKEN_FILE: {
    default: '(off)',
    help: 'File holding the bearer token (at least 16 visible ASCII characters; e.g. a mounted Secret) that every call of the cache API and of reflection must send as metadata "authorization: Bearer TOKEN"; grpc.health.v1 stays open. Reread when the file changes. Unset: no authentication.',
  },
  OTEL_SDK_DISABLED: { default: 'false', help: 'true turns tracing off, whatever the other OTEL_* variables say.' },
  OTEL_TRACES_EXPORTER: { default: '(otlp if an endpoint is set)', help: 'otlp: export traces over OTLP; none: no tracing. Tracing is off unless this is otlp or an OTLP endpoint is set.' },
  OTEL_EXPORTER_OTLP_ENDPOINT: { default: '(unset)', help: 'Base URL of the OTLP collector (http://otel-collector:4318; with grpc http://otel-collector:4317); setting it turns tracing on. Spans go to /v1/traces under it over HTTP.' },
  OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: { default: '(unset)', help: 'Full URL for spans, used as is; wins over OTEL_EXPORTER_OTLP_ENDPOINT and turns tracing on too.' },
  OTEL_EXPORTER_OTLP_PROTOCOL: { default: 'http/protobuf', help: 'http/protobuf, http/json or grpc.' },
  OTEL_EXPORTER_OTLP_TRACES_PROTOCOL: { default: '(OTEL_EXPORTER_OTLP_PROTOCOL)', help: 'The protocol for spans, where it differs.' },
  OTEL_EXPORTER_OTLP_HEADERS: { default: '(none)', help: 'Headers (gRPC: metadata) sent with every export: key=value pairs separated by commas, values URL-encoded; never logged.' },
  OTEL_EXPORTER_OTLP_TRACES_HEADERS: { default: '(none)', help: 'Headers for span exports only, added to OTEL_EXPORTER_OTLP_HEADERS (the same key: this one wins).' },
  OTEL_EXPORTER_OTLP_TIMEOUT: { default: '10000', help: 'Milliseconds one export may take before it is abandoned.' },
  OTEL_EXPORTER_OTLP_TRACES_TIMEOUT: { default: '(OTEL_EXPORTER_OTLP_TIMEOUT)', help: 'The export timeout for spans, where it differs.' },
  OTEL_EXPORTER_OTLP_CERTIFICATE: { default: '(system CAs)', help: 'PEM file of CA certificates to trust for an https:// collector.' },
  OTEL_TRACES_SAMPLER: { default: 'parentbased_always_on', help: 'parentbased_always_on, parentbased_always_off, parentbased_traceidratio, always_on, always_off or traceidratio. parentbased_*: a call that carries a traceparent follows the caller\'s sampling decision.' },
  OTEL_TRACES_SAMPLER_ARG: { default: '1', help: 'The ratio (0 to 1) of the traceidratio samplers.' },
  OTEL_SERVICE_NAME: { default: 'context-cache', help: 'service.name of the spans (wins over a service.name in OTEL_RESOURCE_ATTRIBUTES).' },
  OTEL_RESOURCE_ATTRIBUTES: { default: '(none)', help: 'More resource attributes: key=value pairs separated by commas, values URL-encoded (k8s.pod.name=...,k8s.namespace.name=...). service.instance.id is the sidecar ID, service.version the package version.' },
  CONTEXT_CACHE_TRACE_KEYS: { default: 'false', help: 'true: spans also carry the keys, session IDs and lock resources of a call (at most 16 per span). Off, spans say only counts, tiers and outcomes; values are never traced.' },
  CONTEXT_CACHE_LOCK_REDIS_URLS: {
    default: '(the main Redis)',
    help: 'Comma-separated redis:// or rediss:// URLs of independent Redis masters for distributed locks; a majority must agree (use 1, 3 or 5). User, password and database default to REDIS_USERNAME, REDIS_PASSWORD and REDIS_DB.',
  },
} as const satisfies Record<string, { default: string; help: string }>;

export type ConfigVariable = keyof typeof CONFIG_VARIABLES;

function read(env: Env, name: ConfigVariable): string | undefined {
  const value = env[name]?.trim();
  return value === undefined || value === '' ? undefined : value;
}

/** Sizes accept a plain byte count or a unit: `64MiB`, `512kb`, `1GiB`. */
export function parseSize(env: Env, name: ConfigVariable, fallback: number, min: number, max: number): number {
  const raw = read(env, name);
  if (raw === undefined) return fallback;
  const match = /^(\d+(?:\.\d+)?)\s*([a-zA-Z]*)$/.exec(raw);
  const unit = match ? SIZE_UNITS[match[2]!.toLowerCase()] : undefined;
  if (!match || unit === undefined) {
    throw new ConfigError(name, `"${raw}" is not a size; use a byte count or a number with B, KiB, MiB, GiB (e.g. 64MiB)`);
  }
  const bytes = Math.floor(Number(match[1]) * unit);
  if (bytes < min || bytes > max) {
    throw new ConfigError(name, `${bytes} bytes is out of range; allowed ${min} to ${max} bytes`);
  }
  return bytes;
}

/** Durations accept seconds (`900`) or a unit: `250ms`, `15s`, `15m`, `2h`. */
export function parseDuration(env: Env, name: ConfigVariable, fallbackMs: number, minMs: number, maxMs: number): number {
  const raw = read(env, name);
  if (raw === undefined) return fallbackMs;
  const match = /^(\d+(?:\.\d+)?)\s*(ms|s|m|h)?$/.exec(raw);
  if (!match) {
    throw new ConfigError(name, `"${raw}" is not a duration; use seconds (900) or a number with ms, s, m or h (e.g. 15m)`);
  }
  const ms = Math.round(Number(match[1]) * DURATION_UNITS[match[2] ?? 's']!);
  if (ms < minMs || ms > maxMs) {
    throw new ConfigError(name, `${raw} is out of range; allowed ${minMs} ms to ${maxMs} ms`);
  }
  return ms;
}

export function parseInteger(env: Env, name: ConfigVariable, fallback: number, min: number, max: number): number {
  const raw = read(env, name);
  if (raw === undefined) return fallback;
  if (!/^\d+$/.test(raw) || Number(raw) < min || Number(raw) > max) {
    throw new ConfigError(name, `"${raw}" is not allowed; use a whole number from ${min} to ${max}`);
  }
  return Number(raw);
}

function parseListen(env: Env, name: ConfigVariable, fallback: string): string;
function parseListen(env: Env, name: ConfigVariable, fallback: undefined): string | undefined;
function parseListen(env: Env, name: ConfigVariable, fallback: string | undefined): string | undefined {
  const raw = read(env, name) ?? fallback;
  if (raw === undefined) return undefined;
  if (raw.startsWith('unix:')) {
    if (raw.length <= 'unix:'.length) throw new ConfigError(name, `"${raw}" names no socket path; use unix:/path/to.sock`);
    return raw;
  }
  const match = /^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+):(\d{1,5})$/.exec(raw);
  if (!match || Number(match[2]) > 65535) {
    throw new ConfigError(name, `"${raw}" is not an address; use host:port (127.0.0.1:50051, [::1]:50051, 0.0.0.0:50051) or unix:/path/to.sock`);
  }
  return raw;
}

/**
 * The Redlock scripts of the lock library select the database explicitly and
 * only know 0 to 15 (Redis's default `databases 16`); a higher number would
 * silently put leases and locks in database 0.
 */
const MAX_REDIS_DB = 15;

function urlDb(name: ConfigVariable, dbPath: string, where: string): number {
  const db = Number(dbPath);
  if (db > MAX_REDIS_DB) throw new ConfigError(name, `${where}database ${db} is out of range; use 0 to ${MAX_REDIS_DB}`);
  return db;
}

/**
 * One redis:// or rediss:// URL. User, password and database fall back to
 * REDIS_USERNAME, REDIS_PASSWORD and REDIS_DB. `where` locates the URL in a
 * list for the error message; messages never repeat the URL (it may carry a
 * password).
 */
function parseRedisUrl(env: Env, name: ConfigVariable, url: string, where = ''): RedisConfig {
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    throw new ConfigError(name, `${where}is not a URL; use redis://[user:password@]host:port[/db] or rediss:// for TLS`);
  }
  if (parsed.protocol !== 'redis:' && parsed.protocol !== 'rediss:') {
    throw new ConfigError(name, `${where}scheme "${parsed.protocol}" is not supported; use redis:// or rediss:// (TLS)`);
  }
  const dbPath = parsed.pathname.replace(/^\//, '');
  if (dbPath !== '' && !/^\d+$/.test(dbPath)) {
    throw new ConfigError(name, `${where}database "${dbPath}" is not a number; use redis://host:port/0`);
  }
  const port = parsed.port === '' ? 6379 : Number(parsed.port);
  const hostname = parsed.hostname.replace(/^\[(.*)\]$/, '$1');
  return {
    topology: { kind: 'single' },
    host: hostname,
    port,
    username: parsed.username ? decodeURIComponent(parsed.username) : read(env, 'REDIS_USERNAME'),
    password: parsed.password ? decodeURIComponent(parsed.password) : read(env, 'REDIS_PASSWORD'),
    db: dbPath === '' ? parseInteger(env, 'REDIS_DB', 0, 0, MAX_REDIS_DB) : urlDb(name, dbPath, where),
    tls: parsed.protocol === 'rediss:',
    tlsCa: parseTlsCa(env),
    describe: `${parsed.protocol}//${hostname}:${port}`,
  };
}

/**
 * CONTEXT_CACHE_LOCK_REDIS_URLS: the lock masters, each parsed like REDIS_URL.
 * The same master twice would count twice towards the quorum, so it is refused.
 */
function parseLockRedis(env: Env): RedisConfig[] | undefined {
  const name = 'CONTEXT_CACHE_LOCK_REDIS_URLS';
  const raw = read(env, name);
  if (raw === undefined) return undefined;
  const urls = raw.split(',').map((url) => url.trim());
  const masters = urls.map((url, index) => {
    const where = `entry ${index + 1} of ${urls.length}: `;
    if (url === '') throw new ConfigError(name, `${where}is empty; separate the URLs with single commas`);
    return parseRedisUrl(env, name, url, where);
  });
  const seen = new Map<string, number>();
  masters.forEach((master, index) => {
    const identity = `${master.host.toLowerCase()}:${master.port}/${master.db}`;
    const first = seen.get(identity);
    if (first !== undefined) {
      throw new ConfigError(name, `entries ${first + 1} and ${index + 1} name the same Redis (${master.describe}/${master.db}); each must be an independent master, or it would count twice towards the majority`);
    }
    seen.set(identity, index);
  });
  return masters;
}

/** REDIS_TLS_CA_FILE: read once at start-up; a file that cannot be read stops start-up. */
function parseTlsCa(env: Env): Buffer | undefined {
  const path = read(env, 'REDIS_TLS_CA_FILE');
  if (path === undefined) return undefined;
  try {
    const pem = readFileSync(path);
    if (!pem.toString('utf8').includes('-----BEGIN CERTIFICATE-----')) throw new Error('no PEM certificate in it');
    return pem;
  } catch (error) {
    throw new ConfigError('REDIS_TLS_CA_FILE', `cannot use "${path}": ${(error as Error).message}; give the path of a PEM file with the CA certificates to trust`);
  }
}

/** The shortest and longest bearer token accepted (bytes); longer would not fit comfortably in a header. */
export const AUTH_TOKEN_MIN_BYTES = 16;
export const AUTH_TOKEN_MAX_BYTES = 4096;

/**
 * Reads and checks a bearer token file: surrounding whitespace (the newline
 * an editor or `echo` adds) is trimmed; the rest must be 16 to 4096 visible
 * ASCII characters, which is what an HTTP/2 header value can carry as it is.
 * Throws an Error whose message never contains the file's content.
 */
export function readAuthTokenFile(path: string): string {
  const token = readFileSync(path, 'utf8').trim();
  if (token === '') throw new Error('the file is empty');
  const bytes = Buffer.byteLength(token);
  if (bytes < AUTH_TOKEN_MIN_BYTES) throw new Error(`the token is ${bytes} bytes; use at least ${AUTH_TOKEN_MIN_BYTES} (e.g. openssl rand -base64 32)`);
  if (bytes > AUTH_TOKEN_MAX_BYTES) throw new Error(`the token is ${bytes} bytes; use at most ${AUTH_TOKEN_MAX_BYTES}`);
  if (!/^[\x21-\x7e]+$/.test(token)) throw new Error('the token holds spaces, control or non-ASCII characters; use visible ASCII only (e.g. openssl rand -base64 32)');
  return token;
}

/** CONTEXT_CACHE_AUTH_TOKEN_FILE: read once here (a bad file stops start-up); reloads are server/auth.ts's. */
function parseAuth(env: Env): AuthConfig | undefined {
  const name = 'CONTEXT_CACHE_AUTH_TOKEN_FILE';
  const tokenFile = read(env, name);
  if (tokenFile === undefined) return undefined;
  let token: string;
  try {
    token = readAuthTokenFile(tokenFile);
  } catch (error) {
    const reason = (error as NodeJS.ErrnoException).code !== undefined ? `cannot read it (${(error as NodeJS.ErrnoException).code})` : (error as Error).message;
    throw new ConfigError(name, `cannot use "${tokenFile}": ${reason}; give the path of a file holding the bearer token`);
  }
  const auth = { tokenFile } as AuthConfig;
  Object.defineProperty(auth, 'token', { value: token, enumerable: false });
  return Object.freeze(auth);
}

function parseTcpListen(env: Env, name: ConfigVariable, fallback: string): string {
  const address = parseListen(env, name, fallback);
  if (address.startsWith('unix:')) throw new ConfigError(name, `"${address}" is not allowed here; use host:port or off`);
  return address;
}

/** A comma-separated list of host:port ([v6]:port allowed), at least one, at most 64. */
function parseHostPorts(env: Env, name: ConfigVariable, raw: string): HostPort[] {
  const items = raw.split(',').map((item) => item.trim());
  if (items.length > 64) throw new ConfigError(name, `lists ${items.length} addresses; give at most 64`);
  return items.map((item, index) => {
    const match = /^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+):(\d{1,5})$/.exec(item);
    const port = Number(match?.[2]);
    if (!match || port < 1 || port > 65535) throw new ConfigError(name, `item ${index + 1} ("${item}") is not host:port; use e.g. redis-0.redis:6379,redis-1.redis:6379`);
    return { host: match[1]!.replace(/^\[|\]$/g, ''), port };
  });
}

function parseTls(env: Env): boolean {
  const tlsRaw = read(env, 'REDIS_TLS');
  if (tlsRaw !== undefined && tlsRaw !== 'true' && tlsRaw !== 'false') {
    throw new ConfigError('REDIS_TLS', `"${tlsRaw}" is not allowed; use true or false`);
  }
  return tlsRaw === 'true';
}

/** Exactly one way to reach Redis may be configured; a mix stops start-up naming the variables. */
function parseRedis(env: Env): RedisConfig | undefined {
  const url = read(env, 'REDIS_URL');
  const host = read(env, 'REDIS_HOST');
  const clusterNodes = read(env, 'REDIS_CLUSTER_NODES');
  const sentinels = read(env, 'REDIS_SENTINELS');
  const masterName = read(env, 'REDIS_SENTINEL_MASTER_NAME');
  if (url !== undefined && host !== undefined) {
    throw new ConfigError('REDIS_URL', 'set either REDIS_URL or REDIS_HOST (with REDIS_PORT, REDIS_PASSWORD, REDIS_DB), not both');
  }
  const modes = [
    url !== undefined || host !== undefined ? (url !== undefined ? 'REDIS_URL' : 'REDIS_HOST') : undefined,
    clusterNodes !== undefined ? 'REDIS_CLUSTER_NODES' : undefined,
    sentinels !== undefined ? 'REDIS_SENTINELS' : undefined,
  ].filter((mode): mode is string => mode !== undefined);
  if (modes.length > 1) {
    throw new ConfigError(modes[0] as ConfigVariable, `${modes.join(' and ')} are both set; configure one Redis: a server (REDIS_URL or REDIS_HOST), a Cluster (REDIS_CLUSTER_NODES) or Sentinel (REDIS_SENTINELS with REDIS_SENTINEL_MASTER_NAME)`);
  }
  if (masterName !== undefined && sentinels === undefined) {
    throw new ConfigError('REDIS_SENTINEL_MASTER_NAME', 'is set without REDIS_SENTINELS; give the Sentinels\' host:port list too');
  }
  for (const name of ['REDIS_SENTINEL_USERNAME', 'REDIS_SENTINEL_PASSWORD'] as const) {
    if (read(env, name) !== undefined && sentinels === undefined) throw new ConfigError(name, 'is set without REDIS_SENTINELS; it is the Sentinels\' own credential');
  }
  if (clusterNodes !== undefined) return parseCluster(env, clusterNodes);
  if (sentinels !== undefined) return parseSentinel(env, sentinels, masterName);
  if (url === undefined && host === undefined) return undefined;

  if (url !== undefined) return parseRedisUrl(env, 'REDIS_URL', url);

  const rawPort = read(env, 'REDIS_PORT');
  if (rawPort !== undefined && rawPort.includes('://')) {
    // Kubernetes injects REDIS_PORT=tcp://10.0.0.1:6379 for a Service named "redis".
    throw new ConfigError('REDIS_PORT', `"${rawPort}" looks like a Kubernetes service link; set enableServiceLinks: false in the pod spec or set REDIS_PORT to a number`);
  }
  const port = parseInteger(env, 'REDIS_PORT', 6379, 1, 65535);
  const tls = parseTls(env);
  return {
    topology: { kind: 'single' },
    host: host!,
    port,
    username: read(env, 'REDIS_USERNAME'),
    password: read(env, 'REDIS_PASSWORD'),
    db: parseInteger(env, 'REDIS_DB', 0, 0, MAX_REDIS_DB),
    tls,
    tlsCa: parseTlsCa(env),
    describe: `${tls ? 'rediss' : 'redis'}://${host}:${port}`,
  };
}

function parseCluster(env: Env, raw: string): RedisConfig {
  const seeds = parseHostPorts(env, 'REDIS_CLUSTER_NODES', raw);
  if (parseInteger(env, 'REDIS_DB', 0, 0, MAX_REDIS_DB) !== 0) throw new ConfigError('REDIS_DB', 'must be 0 with REDIS_CLUSTER_NODES: a Redis Cluster has only database 0');
  const tls = parseTls(env);
  return {
    topology: { kind: 'cluster', seeds },
    host: seeds[0]!.host,
    port: seeds[0]!.port,
    username: read(env, 'REDIS_USERNAME'),
    password: read(env, 'REDIS_PASSWORD'),
    db: 0,
    tls,
    tlsCa: parseTlsCa(env),
    describe: `cluster (${tls ? 'TLS, ' : ''}seeds ${seeds.map((seed) => `${seed.host}:${seed.port}`).join(',')})`,
  };
}

function parseSentinel(env: Env, raw: string, masterName: string | undefined): RedisConfig {
  const sentinels = parseHostPorts(env, 'REDIS_SENTINELS', raw);
  if (masterName === undefined) throw new ConfigError('REDIS_SENTINEL_MASTER_NAME', 'is required with REDIS_SENTINELS: the name of the master the Sentinels monitor');
  if (!/^[A-Za-z0-9._-]{1,128}$/.test(masterName)) throw new ConfigError('REDIS_SENTINEL_MASTER_NAME', `"${masterName}" is not a master name; use letters, digits, . _ - (as in sentinel monitor NAME)`);
  const tls = parseTls(env);
  return {
    topology: { kind: 'sentinel', sentinels, masterName, sentinelUsername: read(env, 'REDIS_SENTINEL_USERNAME'), sentinelPassword: read(env, 'REDIS_SENTINEL_PASSWORD') },
    host: sentinels[0]!.host,
    port: sentinels[0]!.port,
    username: read(env, 'REDIS_USERNAME'),
    password: read(env, 'REDIS_PASSWORD'),
    db: parseInteger(env, 'REDIS_DB', 0, 0, MAX_REDIS_DB),
    tls,
    tlsCa: parseTlsCa(env),
    describe: `sentinel (master ${masterName}${tls ? ', TLS' : ''}, sentinels ${sentinels.map((s) => `${s.host}:${s.port}`).join(',')})`,
  };
}

/** key=value,key=value with URL-encoded values: the format of OTEL_EXPORTER_OTLP_HEADERS and OTEL_RESOURCE_ATTRIBUTES. */
function parseKeyValues(env: Env, name: ConfigVariable, what: string): Record<string, string> {
  const raw = read(env, name);
  const pairs: Record<string, string> = {};
  if (raw === undefined) return pairs;
  raw.split(',').forEach((item, index) => {
    const separator = item.indexOf('=');
    const key = item.slice(0, separator).trim();
    if (separator <= 0 || key === '') throw new ConfigError(name, `item ${index + 1} is not key=value; give ${what} as key=value pairs separated by commas`);
    try {
      pairs[key] = decodeURIComponent(item.slice(separator + 1).trim());
    } catch {
      throw new ConfigError(name, `the value of item ${index + 1} (${key}) is not URL-encoded correctly; encode %, commas and spaces as %25, %2C, %20`);
    }
  });
  return pairs;
}

function parseOtlpProtocol(env: Env, name: ConfigVariable, fallback: OtlpProtocol): OtlpProtocol {
  const raw = read(env, name) ?? fallback;
  if (raw !== 'http/protobuf' && raw !== 'http/json' && raw !== 'grpc') throw new ConfigError(name, `"${raw}" is not supported; use http/protobuf, http/json or grpc`);
  return raw;
}

function parseOtlpUrl(name: ConfigVariable, raw: string): URL {
  let url: URL;
  try {
    url = new URL(raw);
  } catch {
    throw new ConfigError(name, `"${raw}" is not a URL; use e.g. http://otel-collector:4318`);
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') throw new ConfigError(name, `scheme "${url.protocol}" is not supported; use http:// or https://`);
  return url;
}

/**
 * The OTEL_* variables, as the OpenTelemetry specification defines them (the
 * subset that concerns traces over OTLP). Tracing is on when
 * OTEL_TRACES_EXPORTER=otlp or an OTLP endpoint is set, unless
 * OTEL_SDK_DISABLED=true or OTEL_TRACES_EXPORTER=none.
 */
function parseTracing(env: Env): TracingConfig | undefined {
  const exporter = read(env, 'OTEL_TRACES_EXPORTER');
  if (exporter !== undefined && exporter !== 'otlp' && exporter !== 'none') {
    throw new ConfigError('OTEL_TRACES_EXPORTER', `"${exporter}" is not supported; use otlp or none`);
  }
  const disabled = read(env, 'OTEL_SDK_DISABLED');
  if (disabled !== undefined && disabled !== 'true' && disabled !== 'false') throw new ConfigError('OTEL_SDK_DISABLED', `"${disabled}" is not allowed; use true or false`);
  const base = read(env, 'OTEL_EXPORTER_OTLP_ENDPOINT');
  const full = read(env, 'OTEL_EXPORTER_OTLP_TRACES_ENDPOINT');
  if (disabled === 'true' || exporter === 'none' || (exporter === undefined && base === undefined && full === undefined)) return undefined;

  const protocol = parseOtlpProtocol(env, 'OTEL_EXPORTER_OTLP_TRACES_PROTOCOL', parseOtlpProtocol(env, 'OTEL_EXPORTER_OTLP_PROTOCOL', 'http/protobuf'));
  let endpoint: string;
  if (full !== undefined) endpoint = parseOtlpUrl('OTEL_EXPORTER_OTLP_TRACES_ENDPOINT', full).href;
  else {
    const url = parseOtlpUrl('OTEL_EXPORTER_OTLP_ENDPOINT', base ?? (protocol === 'grpc' ? 'http://localhost:4317' : 'http://localhost:4318'));
    endpoint = protocol === 'grpc' ? url.href : `${url.href.replace(/\/$/, '')}/v1/traces`;
  }
  const certificateFile = read(env, 'OTEL_EXPORTER_OTLP_CERTIFICATE');
  let certificate: Buffer | undefined;
  if (certificateFile !== undefined) {
    try {
      certificate = readFileSync(certificateFile);
      if (!certificate.toString('utf8').includes('-----BEGIN CERTIFICATE-----')) throw new Error('no PEM certificate in it');
    } catch (error) {
      throw new ConfigError('OTEL_EXPORTER_OTLP_CERTIFICATE', `cannot use "${certificateFile}": ${(error as Error).message}; give the path of a PEM file with the CA certificates to trust`);
    }
  }
  const sampler = (read(env, 'OTEL_TRACES_SAMPLER') ?? 'parentbased_always_on') as TraceSampler;
  if (!TRACE_SAMPLERS.includes(sampler)) throw new ConfigError('OTEL_TRACES_SAMPLER', `"${sampler}" is not supported; use one of ${TRACE_SAMPLERS.join(', ')}`);
  const ratioRaw = read(env, 'OTEL_TRACES_SAMPLER_ARG');
  const samplerRatio = ratioRaw === undefined ? 1 : Number(ratioRaw);
  if (ratioRaw !== undefined && (!/^\d*\.?\d+$/.test(ratioRaw) || samplerRatio > 1)) throw new ConfigError('OTEL_TRACES_SAMPLER_ARG', `"${ratioRaw}" is not a ratio; use a number from 0 to 1 (e.g. 0.1)`);
  const traceKeys = read(env, 'CONTEXT_CACHE_TRACE_KEYS') ?? 'false';
  if (traceKeys !== 'true' && traceKeys !== 'false') throw new ConfigError('CONTEXT_CACHE_TRACE_KEYS', `"${traceKeys}" is not allowed; use true or false`);
  const headers = { ...parseKeyValues(env, 'OTEL_EXPORTER_OTLP_HEADERS', 'headers'), ...parseKeyValues(env, 'OTEL_EXPORTER_OTLP_TRACES_HEADERS', 'headers') };
  const resourceAttributes = parseKeyValues(env, 'OTEL_RESOURCE_ATTRIBUTES', 'resource attributes');
  const tracing = {
    protocol,
    endpoint,
    timeoutMs: parseInteger(env, 'OTEL_EXPORTER_OTLP_TRACES_TIMEOUT', parseInteger(env, 'OTEL_EXPORTER_OTLP_TIMEOUT', 10_000, 1, 600_000), 1, 600_000),
    certificate,
    sampler,
    samplerRatio,
    // As the specification orders it: OTEL_SERVICE_NAME, then service.name in OTEL_RESOURCE_ATTRIBUTES.
    serviceName: read(env, 'OTEL_SERVICE_NAME') ?? resourceAttributes['service.name'] ?? 'context-cache',
    resourceAttributes: Object.freeze(resourceAttributes),
    traceKeys: traceKeys === 'true',
  } as TracingConfig;
  Object.defineProperty(tracing, 'headers', { value: Object.freeze(headers), enumerable: false });
  return Object.freeze(tracing);
}

const MiB = 1024 * 1024;

/** Parses and validates the whole configuration; throws ConfigError naming the first bad variable. */
export function loadConfig(env: Env = process.env): Config {
  const namespace = read(env, 'CONTEXT_CACHE_NAMESPACE') ?? 'default';
  if (!NAMESPACE_PATTERN.test(namespace)) {
    throw new ConfigError('CONTEXT_CACHE_NAMESPACE', `"${namespace}" is not allowed; use 1 to 64 characters of A-Z a-z 0-9 _ . - starting with a letter or digit`);
  }
  const logLevel = (read(env, 'CONTEXT_CACHE_LOG_LEVEL') ?? 'info') as LogLevel;
  if (!LOG_LEVELS.includes(logLevel)) {
    throw new ConfigError('CONTEXT_CACHE_LOG_LEVEL', `"${logLevel}" is not a level; use one of ${LOG_LEVELS.join(', ')}`);
  }
  const tokenizer = read(env, 'CONTEXT_CACHE_TOKENIZER') ?? 'o200k_base';
  if (!isTokenizer(tokenizer)) {
    throw new ConfigError('CONTEXT_CACHE_TOKENIZER', `"${tokenizer}" is not a known tokenizer; use one of ${TOKENIZERS.join(', ')}`);
  }
  const maxValueBytes = parseSize(env, 'CONTEXT_CACHE_MAX_VALUE_BYTES', 8 * MiB, 1, 512 * MiB);
  const maxMessageBytes = parseSize(env, 'CONTEXT_CACHE_MAX_MESSAGE_BYTES', Math.max(16 * MiB, maxValueBytes + MiB), 64 * 1024, 1024 * MiB);
  if (maxMessageBytes <= maxValueBytes) {
    throw new ConfigError('CONTEXT_CACHE_MAX_MESSAGE_BYTES', `must be larger than CONTEXT_CACHE_MAX_VALUE_BYTES (${maxValueBytes}) so a maximal value fits in a message`);
  }
  const l1MaxBytes = parseSize(env, 'CONTEXT_CACHE_L1_MAX_BYTES', 256 * MiB, 1024 * 1024, 64 * 1024 * MiB);
  return Object.freeze({
    listen: parseListen(env, 'CONTEXT_CACHE_LISTEN', '127.0.0.1:50051'),
    healthListen: parseListen(env, 'CONTEXT_CACHE_HEALTH_LISTEN', undefined),
    adminListen: read(env, 'CONTEXT_CACHE_ADMIN_LISTEN') === 'off' ? undefined : parseTcpListen(env, 'CONTEXT_CACHE_ADMIN_LISTEN', '127.0.0.1:50053'),
    namespace,
    l1MaxBytes,
    defaultTtlMs: parseDuration(env, 'CONTEXT_CACHE_DEFAULT_TTL', 900_000, 1000, 30 * 24 * 3_600_000),
    maxKeyBytes: parseSize(env, 'CONTEXT_CACHE_MAX_KEY_BYTES', 1024, 16, 64 * 1024),
    maxValueBytes,
    maxKeysPerCall: parseInteger(env, 'CONTEXT_CACHE_MAX_KEYS_PER_CALL', 1000, 1, 100_000),
    maxTagsPerEntry: 32,
    maxMessageBytes,
    shutdownGraceMs: parseDuration(env, 'CONTEXT_CACHE_SHUTDOWN_GRACE', 10_000, 0, 600_000),
    compressionThreshold: parseSize(env, 'CONTEXT_CACHE_COMPRESSION_THRESHOLD', 1024, 0, 1024 * MiB),
    redisCommandTimeoutMs: parseDuration(env, 'CONTEXT_CACHE_REDIS_COMMAND_TIMEOUT', 500, 10, 60_000),
    redisReconnectMaxMs: parseDuration(env, 'CONTEXT_CACHE_REDIS_RECONNECT_MAX', 500, 100, 300_000),
    degradedMaxAgeMs: read(env, 'CONTEXT_CACHE_DEGRADED_MAX_AGE') === 'off' ? Number.POSITIVE_INFINITY : parseDuration(env, 'CONTEXT_CACHE_DEGRADED_MAX_AGE', 30_000, 0, 24 * 3_600_000),
    pubsubHeartbeatMs: parseDuration(env, 'CONTEXT_CACHE_PUBSUB_HEARTBEAT', 5000, 100, 300_000),
    watchBufferBytes: parseSize(env, 'CONTEXT_CACHE_WATCH_BUFFER', 256 * 1024, 4 * 1024, 1024 * MiB),
    watchTotalBufferBytes: parseSize(env, 'CONTEXT_CACHE_WATCH_TOTAL_BUFFER', 64 * MiB, 64 * 1024, 64 * 1024 * MiB),
    watchMaxStreams: parseInteger(env, 'CONTEXT_CACHE_WATCH_MAX_STREAMS', 5000, 1, 1_000_000),
    watchResumeBufferBytes: parseSize(env, 'CONTEXT_CACHE_WATCH_RESUME_BUFFER', 8 * MiB, 0, 1024 * MiB),
    leaseTtlMs: parseDuration(env, 'CONTEXT_CACHE_LEASE_TTL', 10_000, 100, 600_000),
    tokenizer,
    logLevel,
    redis: parseRedis(env),
    lockRedis: parseLockRedis(env),
    auth: parseAuth(env),
    tracing: parseTracing(env),
  });
}
