import { CacheError, unavailable } from '../errors';

/** A granted lock. */
export interface LockGrant {
  resource: string;
  /** The holder's secret: the value of the lock key on the masters. */
  token: string;
  /** Strictly increasing per resource across all sidecars (see redis/fencing.ts). */
  fence: number;
  /** Epoch ms on this sidecar's clock after which the lock may have lapsed (clock drift already subtracted). */
  expiresAt: number;
}

/** What a stream-bound hold reports while it keeps its lock. */
export interface HoldListener {
  /** The lock was extended; `grant.expiresAt` is the new expiry. */
  extended(grant: LockGrant): void;
  /** An extension failed for good (E_LOCK_NOT_HELD or E_UNAVAILABLE); the hold has stopped. */
  lost(grant: LockGrant, error: CacheError): void;
}

/** What a hold needs of the locks that granted it. */
export interface HoldOwner {
  extend(token: string, ttlMs: number): Promise<number>;
  release(token: string): Promise<void>;
  done(hold: Hold): void;
  track<T>(promise: Promise<T>): Promise<T>;
  bug(error: unknown): void;
}

/**
 * A lock kept for as long as its owner wants it (a HoldLock stream): extended
 * when a third of the TTL has passed. An extension that fails because Redis
 * is away is retried while at least a third of the TTL is left; then, or when
 * the token no longer holds the lock, the hold is lost.
 */
export class Hold {
  private timer: NodeJS.Timeout | undefined;
  private extending: Promise<void> | undefined;
  private state: 'acquired' | 'keeping' | 'stopped' = 'acquired';
  private released: Promise<void> | undefined;
  private listener: HoldListener | undefined;

  constructor(
    private current: LockGrant,
    readonly ttlMs: number,
    private readonly owner: HoldOwner,
  ) {}

  get grant(): LockGrant {
    return this.current;
  }

  /** Starts extending in the background; `listener` hears of every extension and of a loss. */
  keep(listener: HoldListener): void {
    if (this.state !== 'acquired') return;
    this.state = 'keeping';
    this.listener = listener;
    this.schedule(this.ttlMs / 3);
  }

  /** Stops extending and releases the lock (unless it was lost). Idempotent; never throws. */
  release(): Promise<void> {
    if (this.released !== undefined) return this.released;
    const holding = this.state !== 'stopped';
    this.state = 'stopped';
    clearTimeout(this.timer);
    this.released = this.owner.track(
      (async () => {
        // An extension in flight could land after the release; let it finish first.
        await this.extending?.catch(() => undefined);
        if (holding) await this.owner.release(this.current.token);
        this.owner.done(this);
      })(),
    );
    return this.released;
  }

  private schedule(delayMs: number): void {
    this.timer = setTimeout(() => {
      this.extending = this.owner.track(this.extendOnce().catch((error: unknown) => this.owner.bug(error)));
    }, delayMs);
  }

  private async extendOnce(): Promise<void> {
    let failure: CacheError;
    try {
      const expiresAt = await this.owner.extend(this.current.token, this.ttlMs);
      if (this.state !== 'keeping') return;
      this.current = { ...this.current, expiresAt };
      this.listener!.extended(this.current);
      this.schedule(this.ttlMs / 3);
      return;
    } catch (error) {
      failure = error instanceof CacheError ? error : unavailable(`extending the lock failed: ${(error as Error).message}`, error);
    }
    if (this.state !== 'keeping') return;
    const retryMs = Math.min(1000, Math.max(10, this.ttlMs / 10));
    if (failure.code === 'E_UNAVAILABLE' && Date.now() + retryMs < this.current.expiresAt - this.ttlMs / 3) {
      this.schedule(retryMs);
      return;
    }
    this.state = 'stopped';
    this.released = this.owner.track(
      (async () => {
        // Redis may be back before the TTL runs out: give the lock back rather than block others until then.
        if (failure.code !== 'E_LOCK_NOT_HELD') await this.owner.release(this.current.token);
        this.owner.done(this);
      })(),
    );
    this.listener!.lost(this.current, failure);
  }
}
