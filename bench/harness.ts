/**
 * Sidecars for benchmarks: in this process, on free loopback ports, silent,
 * with the admin port off, pointed at the bench Redis.
 */
import { ContextCacheClient } from '../src/client';
import { loadConfig } from '../src/config';
import { createLogger } from '../src/log';
import { Sidecar } from '../src/sidecar';

export interface BenchSidecar {
  sidecar: Sidecar;
  client: ContextCacheClient;
  close(): Promise<void>;
}

export async function startBenchSidecar(env: Record<string, string>): Promise<BenchSidecar> {
  const config = loadConfig({ CONTEXT_CACHE_LISTEN: '127.0.0.1:0', CONTEXT_CACHE_ADMIN_LISTEN: 'off', CONTEXT_CACHE_LOG_LEVEL: 'silent', ...env });
  const sidecar = await Sidecar.start(config, createLogger('silent'));
  const client = new ContextCacheClient(sidecar.listenAddress);
  const deadline = Date.now() + 10_000;
  while (config.redis !== undefined && sidecar.tiers.mode !== 'coherent') {
    if (Date.now() > deadline) throw new Error('bench sidecar did not connect to Redis within 10 s');
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
  return {
    sidecar,
    client,
    async close() {
      client.close();
      await sidecar.close();
    },
  };
}

/** Scales iteration counts: BENCH_SCALE=0.1 for a quick smoke run. */
export function scaled(count: number, minimum = 50): number {
  const scale = Number(process.env.BENCH_SCALE ?? '1') || 1;
  return Math.max(minimum, Math.round(count * scale));
}
