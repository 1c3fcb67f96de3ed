/**
 * What a thread's own load adds to every latency measured in it: its
 * event-loop delay (how late a timer due every 10 ms fires: queueing behind
 * other work, and GC pauses) and its V8 heap (each worker thread has a heap
 * of its own; the RSS is the whole process's).
 */
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { getHeapStatistics } from 'node:v8';

export interface ThreadLoad {
  /** Event-loop delay since the watch began, ms: median, 99th percentile, worst. */
  loopDelayMs: { p50: number; p99: number; max: number };
  /** This thread's V8 heap in use now, bytes. */
  heapUsedBytes: number;
}

/** Watches the event loop of the thread that creates it, from then until `close`. */
export class ThreadLoadWatch {
  private readonly delay = monitorEventLoopDelay({ resolution: 10 });

  constructor() {
    this.delay.enable();
  }

  read(): ThreadLoad {
    return {
      loopDelayMs: { p50: this.delay.percentile(50) / 1e6, p99: this.delay.percentile(99) / 1e6, max: this.delay.max / 1e6 },
      heapUsedBytes: getHeapStatistics().used_heap_size,
    };
  }

  close(): void {
    this.delay.disable();
  }
}
