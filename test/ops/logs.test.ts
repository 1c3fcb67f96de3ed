import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ContextCacheClient } from '../../src/client';
import { loadConfig } from '../../src/config';
import { createLogger } from '../../src/log';
import { Sidecar } from '../../src/sidecar';
import { startRedis, type TestRedis } from '../helpers/redis';
import { captureLogs } from '../helpers/logs';
import { waitFor } from '../helpers/wait';

const PASSWORD = 'pa55-word-that-must-not-leak';


describe('structured logs', () => {
  let redis: TestRedis;
  beforeAll(async () => {
    redis = await startRedis();
    await redis.command('CONFIG', 'SET', 'requirepass', PASSWORD);
  });
  afterAll(async () => {
    await redis.stop();
  });

  it('are JSON, one line per state change, never one per request at info, and never contain the Redis password', async () => {
    const { lines, stream } = captureLogs();
    const config = loadConfig({
      CONTEXT_CACHE_LISTEN: '127.0.0.1:0',
      CONTEXT_CACHE_ADMIN_LISTEN: 'off',
      REDIS_URL: `redis://:${PASSWORD}@127.0.0.1:${redis.port}`,
      CONTEXT_CACHE_REDIS_RECONNECT_MAX: '200ms',
    });
    const sidecar = await Sidecar.start(config, createLogger('info', stream));
    const client = new ContextCacheClient(sidecar.listenAddress);
    try {
      await waitFor(() => sidecar.tiers.mode === 'coherent', 'the sidecar to connect with the password');
      const before = lines.length;
      for (let i = 0; i < 50; i++) await client.set({ key: `k${i}`, value: Buffer.from('v') });
      for (let i = 0; i < 50; i++) await client.get({ key: `k${i}` });
      expect(lines.length - before).toBe(0);

      await redis.kill();
      await waitFor(() => lines.some((line) => line.msg === 'redis lost; serving from L1 and reconnecting with backoff'), 'the "redis lost" line');
      await redis.restart();
      await redis.command('CONFIG', 'SET', 'requirepass', PASSWORD);
      await waitFor(() => lines.some((line) => line.msg === 'redis restored'), 'the "redis restored" line');
      await waitFor(() => lines.some((line) => String(line.msg).startsWith('resync')), 'the resync line');
    } finally {
      client.close();
      await sidecar.close();
    }
    expect(lines.some((line) => line.msg === 'shutdown complete')).toBe(true);
    for (const line of lines) {
      expect(typeof line.level).toBe('string');
      expect(typeof line.time).toBe('string');
    }
    const text = lines.map((line) => JSON.stringify(line)).join('\n');
    expect(text).not.toContain(PASSWORD);
    expect(text).toContain(`redis://127.0.0.1:${redis.port}`);
  });
});
