/**
 * The test harness's container path (test/helpers/redis.ts), through
 * testcontainers on the podman socket that `npm run test:image` sets up:
 * the Redis really is a container of the locally built image, and the
 * faults the suites inject (kill, pause, restart on the same port) work on
 * it. scripts/image/test-image.sh then runs whole suites this way.
 */
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { afterAll, describe, expect, it } from 'vitest';
import { startRedis, TEST_REDIS_IMAGE, type TestRedis } from '../helpers/redis';
import { rejectionOf } from '../helpers/wait';

const run = promisify(execFile);
let redis: TestRedis | undefined;
afterAll(async () => redis?.stop());

describe.skipIf(process.env.TEST_REDIS !== 'container')('Redis through testcontainers (TEST_REDIS=container)', () => {
  it('is a container of the test image, published on a loopback port, that can be killed, paused and restarted empty', async () => {
    redis = await startRedis();
    expect(redis.kind).toBe('container');
    const { stdout } = await run('podman', ['inspect', '--format', '{{.ImageName}} {{.State.Status}}', redis.containerId!], { encoding: 'utf8' });
    expect(stdout.trim()).toBe(`${TEST_REDIS_IMAGE} running`);
    await redis.command('SET', 'k', 'v');
    const runId = String(/run_id:(\w+)/.exec(String(await redis.command('INFO', 'server')))?.[1]);
    await redis.pause();
    await rejectionOf(redis.command('PING'));
    await redis.resume();
    expect(await redis.command('PING')).toBe('PONG');
    await redis.kill();
    await rejectionOf(redis.command('PING'));
    await redis.restart();
    expect(await redis.command('GET', 'k')).toBeNull();
    expect(String(await redis.command('INFO', 'server'))).not.toContain(runId);
  });
});
