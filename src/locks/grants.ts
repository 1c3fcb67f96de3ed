/** Bounds the table: past this many, expired grants are pruned on the next grant. */
const PRUNE_AT = 10_000;

/**
 * The locks granted through this sidecar and not released here, by token,
 * with the expiry this sidecar last saw: GetStats' `held`. Callers that
 * never release (relying on the TTL) must not grow it, so expired grants are
 * forgotten.
 */
export class GrantTable {
  private readonly expiries = new Map<string, number>();

  add(token: string, expiresAt: number): void {
    if (this.expiries.size >= PRUNE_AT) this.prune();
    this.expiries.set(token, expiresAt);
  }

  /** A grant of this sidecar's was extended: its new expiry. */
  extended(token: string, expiresAt: number): void {
    if (this.expiries.has(token)) this.expiries.set(token, expiresAt);
  }

  forget(token: string): void {
    this.expiries.delete(token);
  }

  /** Grants not released here and not expired as far as this sidecar knows. */
  get held(): number {
    this.prune();
    return this.expiries.size;
  }

  private prune(): void {
    const now = Date.now();
    for (const [token, expiresAt] of this.expiries) if (expiresAt <= now) this.expiries.delete(token);
  }
}
