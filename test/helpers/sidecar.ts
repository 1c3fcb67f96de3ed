import { ContextCacheClient } from '../../src/client';
import { loadConfig } from '../../src/config';
import { createLogger } from '../../src/log';
import { Sidecar } from '../../src/sidecar';

export interface TestSidecar {
  sidecar: Sidecar;
  client: ContextCacheClient;
  address: string;
  close(): Promise<void>;
}

const open = new Set<TestSidecar>();

/**
 * Starts a sidecar in this process on a free loopback port, with a client.
 * `env` overrides the configuration exactly as environment variables would.
 */
export async function startSidecar(env: Record<string, string> = {}): Promise<TestSidecar> {
  const config = loadConfig({
    CONTEXT_CACHE_LISTEN: '127.0.0.1:0',
    CONTEXT_CACHE_LOG_LEVEL: process.env.TEST_LOG_LEVEL ?? 'silent',
    CONTEXT_CACHE_SHUTDOWN_GRACE: '2s',
    CONTEXT_CACHE_ADMIN_LISTEN: '127.0.0.1:0',
    ...env,
  });
  const sidecar = await Sidecar.start(config, createLogger(config.logLevel));
  const client = new ContextCacheClient(sidecar.listenAddress);
  const handle: TestSidecar = {
    sidecar,
    client,
    address: sidecar.listenAddress,
    async close() {
      open.delete(handle);
      client.close();
      await sidecar.close();
    },
  };
  open.add(handle);
  return handle;
}

/** Closes every sidecar a test file started and did not close itself. */
export async function closeAllSidecars(): Promise<void> {
  await Promise.all([...open].map((handle) => handle.close()));
}
