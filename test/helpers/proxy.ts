import { connect, createServer, type Server, type Socket } from 'node:net';

/**
 * A TCP proxy in front of one Redis, for one sidecar: cutting it partitions
 * that sidecar alone while the others keep reaching Redis.
 *
 * - `cut('blackhole')`: bytes stop flowing both ways and new connections are
 *   accepted but never reach Redis — what a dropped network looks like
 *   (commands time out).
 * - `cut('reset')`: every connection is reset and new ones are refused at once.
 * - `heal()`: traffic flows again; connections cut by a blackhole stay dead
 *   (they lost bytes), so clients must reconnect, as after a real partition.
 */
export interface TestProxy {
  readonly port: number;
  readonly url: string;
  readonly state: 'open' | 'blackhole' | 'reset';
  cut(mode?: 'blackhole' | 'reset'): void;
  heal(): void;
  close(): Promise<void>;
}

export async function startProxy(targetPort: number, targetHost = '127.0.0.1'): Promise<TestProxy> {
  let state: TestProxy['state'] = 'open';
  const pairs = new Set<{ client: Socket; upstream: Socket | undefined; dead: boolean }>();

  const server: Server = createServer((client) => {
    client.on('error', () => undefined);
    if (state === 'reset') {
      client.resetAndDestroy();
      return;
    }
    const pair = { client, upstream: undefined as Socket | undefined, dead: state === 'blackhole' };
    pairs.add(pair);
    client.once('close', () => {
      pairs.delete(pair);
      pair.upstream?.destroy();
    });
    if (pair.dead) return; // accepted, never connected: a blackhole
    const upstream = connect(targetPort, targetHost);
    pair.upstream = upstream;
    upstream.on('error', () => client.destroy());
    upstream.once('close', () => client.destroy());
    client.on('data', (chunk) => {
      if (!pair.dead && state === 'open') upstream.write(chunk);
    });
    upstream.on('data', (chunk) => {
      if (!pair.dead && state === 'open') client.write(chunk);
    });
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve());
  });
  const port = (server.address() as { port: number }).port;

  return {
    port,
    url: `redis://127.0.0.1:${port}`,
    get state() {
      return state;
    },
    cut(mode = 'blackhole') {
      state = mode;
      for (const pair of pairs) {
        pair.dead = true;
        if (mode === 'reset') {
          pair.client.resetAndDestroy();
          pair.upstream?.destroy();
        }
      }
    },
    heal() {
      state = 'open';
    },
    async close() {
      for (const pair of pairs) {
        pair.client.destroy();
        pair.upstream?.destroy();
      }
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
