import { Metadata, ServerInterceptingCall, status, type ServerInterceptor } from '@grpc/grpc-js';
import { createHmac, randomBytes, timingSafeEqual } from 'node:crypto';
import { stat } from 'node:fs/promises';
import { BlockList, isIP } from 'node:net';
import { readAuthTokenFile, type AuthConfig, type Config } from '../config';
import type { Logger } from '../log';

/**
 * Optional caller authentication (CONTEXT_CACHE_AUTH_TOKEN_FILE): every call
 * of the cache API and of reflection carries `authorization: Bearer <token>`;
 * grpc.health.v1 stays open for kubelet probes. Checked once per call, when
 * its metadata arrives: for streams (Watch, HoldLock, reflection) that is
 * when they start.
 */

/** Methods under these prefixes need no token. */
const OPEN_PATH_PREFIXES = ['/grpc.health.v1.Health/'] as const;

/** How often the token file is checked for a change (one stat; a read only when it changed). */
export const AUTH_TOKEN_POLL_MS = 2000;

const MISSING = 'authentication required: send the metadata "authorization: Bearer <token>" with the token of the sidecar\'s CONTEXT_CACHE_AUTH_TOKEN_FILE';
const MALFORMED = 'the authorization metadata must be exactly one value of the form "Bearer <token>"';
const INVALID = 'the bearer token is not valid (if the token was rotated, read the token file again)';

/** What the interceptor asks: undefined to let the call through, else why it is refused. */
export interface CallAuthenticator {
  check(metadata: Metadata): string | undefined;
}

export function isOpenMethod(path: string): boolean {
  return OPEN_PATH_PREFIXES.some((prefix) => path.startsWith(prefix));
}

/**
 * A grpc-js server interceptor: a call whose metadata `auth` refuses ends with
 * UNAUTHENTICATED before its handler runs (its messages and half-close are
 * dropped); health calls pass untouched. `onRefused` hears of each refusal
 * (with the method's name), so refused calls show in the RPC metrics.
 */
export function authInterceptor(auth: CallAuthenticator, onRefused: (method: string) => void = () => undefined): ServerInterceptor {
  return (method, call) => {
    if (isOpenMethod(method.path)) return new ServerInterceptingCall(call);
    let refused = false;
    return new ServerInterceptingCall(call, {
      start: (next) =>
        next({
          onReceiveMetadata: (metadata, nextMetadata) => {
            const failure = auth.check(metadata);
            if (failure === undefined) return nextMetadata(metadata);
            refused = true;
            onRefused(method.path.slice(method.path.lastIndexOf('/') + 1));
            call.sendStatus({ code: status.UNAUTHENTICATED, details: failure, metadata: new Metadata() });
          },
          onReceiveMessage: (message, nextMessage) => {
            if (!refused) nextMessage(message);
          },
          onReceiveHalfClose: (nextHalfClose) => {
            if (!refused) nextHalfClose();
          },
        }),
    });
  };
}

/**
 * The expected bearer token, reloaded from its file when the file changes.
 *
 * Kubernetes updates a Secret volume by swapping a symlink, so the file is
 * polled (stat follows the link: a swap changes the inode; an edit in place,
 * the size or mtime) and read only when its stat changed. A file that became
 * unreadable or invalid keeps the last good token (warned once per reason).
 * Logs name the file, never the token.
 *
 * Comparison: both sides go through HMAC-SHA-256 under a key drawn at start,
 * and the two 32-byte digests are compared with timingSafeEqual; how long a
 * check takes depends on the length of what the caller sent, never on the
 * expected token's content or length.
 */
export class AuthToken implements CallAuthenticator {
  private readonly key = randomBytes(32);
  private expected: Buffer;
  /** dev/ino/size/mtime/ctime of the file when it was last read successfully. */
  private seen: string | undefined;
  private failure: string | undefined;
  private timer: NodeJS.Timeout | undefined;
  private polling: Promise<void> | undefined;
  private closed = false;

  constructor(
    private readonly config: AuthConfig,
    private readonly log: Logger,
    private readonly pollMs = AUTH_TOKEN_POLL_MS,
  ) {
    this.expected = this.digest(config.token);
  }

  get tokenFile(): string {
    return this.config.tokenFile;
  }

  check(metadata: Metadata): string | undefined {
    const values = metadata.get('authorization');
    if (values.length === 0) return MISSING;
    const value = values[0];
    if (values.length > 1 || typeof value !== 'string') return MALFORMED;
    const match = /^bearer +(\S+) *$/i.exec(value);
    if (!match) return MALFORMED;
    return this.matches(match[1]!) ? undefined : INVALID;
  }

  /** Constant-time comparison of a presented token with the current one. */
  matches(presented: string): boolean {
    return timingSafeEqual(this.digest(presented), this.expected);
  }

  /** Starts polling the file. */
  start(): void {
    if (this.closed || this.timer !== undefined) return;
    this.timer = setInterval(() => void this.poll(), this.pollMs);
    this.timer.unref();
  }

  /**
   * One check of the file: reloads the token if the file changed. Never
   * throws; concurrent calls share one check.
   */
  poll(): Promise<void> {
    this.polling ??= this.reload().finally(() => (this.polling = undefined));
    return this.polling;
  }

  /** Stops polling; idempotent. The last token stays in force for calls still checked. */
  async close(): Promise<void> {
    this.closed = true;
    clearInterval(this.timer);
    this.timer = undefined;
    await this.polling;
  }

  private async reload(): Promise<void> {
    const file = this.config.tokenFile;
    let signature: string;
    try {
      const info = await stat(file, { bigint: true });
      signature = `${info.dev}:${info.ino}:${info.size}:${info.mtimeNs}:${info.ctimeNs}`;
    } catch (error) {
      return this.failed(`cannot stat it (${(error as NodeJS.ErrnoException).code ?? (error as Error).message})`);
    }
    if (signature === this.seen || this.closed) return;
    let token: string;
    try {
      token = readAuthTokenFile(file);
    } catch (error) {
      const code = (error as NodeJS.ErrnoException).code;
      return this.failed(code !== undefined ? `cannot read it (${code})` : (error as Error).message);
    }
    this.seen = signature;
    const digest = this.digest(token);
    const changed = !timingSafeEqual(digest, this.expected);
    this.expected = digest;
    const recovered = this.failure !== undefined;
    this.failure = undefined;
    if (changed) this.log.info({ file }, 'auth token reloaded: calls must now present the new token');
    else if (recovered) this.log.info({ file }, 'auth token file is usable again; the token is unchanged');
  }

  private failed(reason: string): void {
    if (reason === this.failure) return;
    this.failure = reason;
    this.log.warn({ file: this.config.tokenFile, reason }, 'auth token file cannot be reloaded; keeping the last good token');
  }

  private digest(token: string): Buffer {
    return createHmac('sha256', this.key).update(token).digest();
  }
}

const LOOPBACK = new BlockList();
LOOPBACK.addSubnet('127.0.0.0', 8, 'ipv4');
LOOPBACK.addAddress('::1', 'ipv6');
LOOPBACK.addSubnet('::ffff:127.0.0.0', 104, 'ipv6');

/** Whether a CONTEXT_CACHE_LISTEN address is reachable only from this host: a unix: socket, localhost or a loopback IP. */
export function isLocalListen(listen: string): boolean {
  if (listen.startsWith('unix:')) return true;
  const host = listen.slice(0, listen.lastIndexOf(':')).replace(/^\[(.*)\]$/, '$1');
  if (host.toLowerCase() === 'localhost') return true;
  const family = isIP(host);
  return family !== 0 && LOOPBACK.check(host, family === 4 ? 'ipv4' : 'ipv6');
}

/** The start-up warning: an API on the network without a token. */
export function warnIfOpenToNetwork(config: Pick<Config, 'listen' | 'auth'>, log: Logger): void {
  if (config.auth !== undefined || isLocalListen(config.listen)) return;
  log.warn(
    { address: config.listen },
    'the API is reachable from the network without authentication: CONTEXT_CACHE_LISTEN is neither loopback nor a unix: socket, and CONTEXT_CACHE_AUTH_TOKEN_FILE is not set',
  );
}
