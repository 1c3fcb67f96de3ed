/**
 * The last `capacity` durations of something (Redis round trips), for
 * percentiles in GetStats. A fixed ring: constant memory, O(1) to record.
 */
export class LatencyWindow {
  private readonly samples: Float64Array;
  private count = 0;
  private next = 0;

  /** Also told of every sample (the Prometheus histogram). */
  onSample: ((microseconds: number) => void) | undefined;

  constructor(capacity = 1024) {
    this.samples = new Float64Array(capacity);
  }

  record(microseconds: number): void {
    this.onSample?.(microseconds);
    this.samples[this.next] = microseconds;
    this.next = (this.next + 1) % this.samples.length;
    if (this.count < this.samples.length) this.count++;
  }

  /** Times a promise and records its duration (also when it fails). */
  async time<T>(work: Promise<T>): Promise<T> {
    const started = process.hrtime.bigint();
    try {
      return await work;
    } finally {
      this.record(Number(process.hrtime.bigint() - started) / 1000);
    }
  }

  /** The p-th percentile (0..100) in microseconds; 0 without samples. */
  percentile(p: number): number {
    if (this.count === 0) return 0;
    const sorted = Array.from(this.samples.subarray(0, this.count)).sort((a, b) => a - b);
    return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]!;
  }
}
