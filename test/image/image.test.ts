/**
 * The built image, run for real with podman (`npm run test:image`, which
 * builds it and sets CONTEXT_CACHE_IMAGE; see scripts/image/test-image.sh):
 * the user it runs as, a read-only root filesystem, health on the health
 * port, /readyz, the API published to loopback, Redis in the same pod as
 * Kubernetes would run it, and SIGTERM. Not part of `npm test` (it needs a
 * container engine and a built image).
 */
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ContextCacheClient } from '../../src/client';
import { checkHealth, healthClient, ServingStatus } from '../helpers/health';
import { freePort, TEST_REDIS_IMAGE } from '../helpers/redis';
import { waitFor } from '../helpers/wait';

const run = promisify(execFile);
const IMAGE = process.env.CONTEXT_CACHE_IMAGE;
const podman = async (...args: string[]) => (await run('podman', args, { encoding: 'utf8', maxBuffer: 16 * 1024 * 1024 })).stdout.trim();

/** The Dockerfile's default; the manifests' terminationGracePeriodSeconds covers it. */
const SHUTDOWN_GRACE_MS = 10_000;

const started: string[] = [];
const pods: string[] = [];
afterAll(async () => {
  for (const id of started) await podman('rm', '--force', '--time', '0', id).catch(() => undefined);
  for (const pod of pods) await podman('pod', 'rm', '--force', pod).catch(() => undefined);
});

async function readyz(port: number): Promise<{ status: number; body: { status: string; components: Record<string, string> } }> {
  const response = await fetch(`http://127.0.0.1:${port}/readyz`);
  return { status: response.status, body: (await response.json()) as { status: string; components: Record<string, string> } };
}

/** Distinct free ports: freePort() twice in a row may give the same one (each is closed before the next is asked for). */
async function freePorts(count: number): Promise<number[]> {
  const ports = new Set<number>();
  while (ports.size < count) ports.add(await freePort());
  return [...ports];
}

/** Waits for a container to exit; resolves with its exit code. */
async function exitCode(id: string): Promise<number> {
  return Number(await podman('wait', id));
}

describe.skipIf(IMAGE === undefined)(`the image ${IMAGE ?? '(CONTEXT_CACHE_IMAGE unset: skipped)'}`, () => {
  it('runs as uid 1000 (numeric, for runAsNonRoot), with the application owned by root and read-only to it', async () => {
    expect(await podman('image', 'inspect', '--format', '{{.Config.User}}', IMAGE!)).toBe('1000:1000');
    const check = await podman(
      'run', '--rm', '--read-only', '--entrypoint', 'sh', IMAGE!, '-c',
      'id -u; id -g; stat -c "%u %a" /app /app/dist /app/node_modules; test -w /app/dist && echo writable || echo read-only; node --version',
    );
    const [uid, gid, ...rest] = check.split('\n');
    expect({ uid, gid }).toEqual({ uid: '1000', gid: '1000' });
    expect(rest.slice(0, 3).every((line) => line.startsWith('0 '))).toBe(true);
    expect(rest[3]).toBe('read-only');
    expect(rest[4]).toMatch(/^v24\./);
  });

  it('starts with a read-only root filesystem, answers health and /readyz, serves the API published to loopback, and exits 0 on SIGTERM', async () => {
    const [api, health, admin] = await freePorts(3);
    const before = Date.now();
    const id = await podman(
      'run', '--detach', '--read-only', '--cap-drop=ALL', '--security-opt=no-new-privileges',
      '--env', 'CONTEXT_CACHE_LISTEN=0.0.0.0:50051',
      '--publish', `127.0.0.1:${api}:50051`, '--publish', `127.0.0.1:${health}:50052`, '--publish', `127.0.0.1:${admin}:50053`,
      IMAGE!,
    );
    started.push(id);
    await waitFor(async () => (await readyz(admin)).status === 200, 'the container to answer /readyz', 30_000, 20);
    const readyMs = Date.now() - before;
    console.log(`image: container start to /readyz 200: ${readyMs} ms`);
    expect((await readyz(admin)).body.status).toBe('SERVING');

    const probe = healthClient(`127.0.0.1:${health}`);
    try {
      expect(await checkHealth(probe, '')).toBe(ServingStatus.SERVING);
      expect(await checkHealth(probe, 'contextcache.v1.ContextCache')).toBe(ServingStatus.SERVING);
    } finally {
      probe.close();
    }

    const client = new ContextCacheClient(`127.0.0.1:${api}`);
    try {
      await client.set({ key: 'from-the-host', value: Buffer.from('hello from the image') });
      expect((await client.get({ key: 'from-the-host' })).value.toString()).toBe('hello from the image');
      // The tokenizer (a worker thread over gpt-tokenizer's data) works from the pruned modules.
      await client.putSessionNodes({ sessionId: 's', nodes: [{ id: 'a', role: 1, content: 'How is the cache shared between pods?' }] });
      const built = await client.buildContext({ sessionId: 's', headNodeId: 'a', maxTokens: 100, tokenizer: 'o200k_base' });
      expect(built.totalTokens).toBeGreaterThan(5);
    } finally {
      client.close();
    }
    const metrics = await (await fetch(`http://127.0.0.1:${admin}/metrics`)).text();
    expect(metrics).toMatch(/^context_cache_rpc_duration_seconds_count\{method="Set",code="0"\} 1$/m);

    const stopping = Date.now();
    await podman('kill', '--signal', 'TERM', id);
    expect(await exitCode(id)).toBe(0);
    const stopMs = Date.now() - stopping;
    console.log(`image: SIGTERM to exit: ${stopMs} ms`);
    expect(stopMs).toBeLessThan(SHUTDOWN_GRACE_MS);
    const logs = await podman('logs', id);
    expect(logs).toContain('"msg":"shutdown complete"');
    expect(logs).not.toMatch(/EROFS|read-only file system/i);
  });

  it('runs as a sidecar would: in a pod with Redis on its loopback, the API left on 127.0.0.1 by the image, health and metrics published', async () => {
    const [health, admin] = await freePorts(2);
    const pod = `context-cache-test-${process.pid}-${Date.now()}`;
    await podman('pod', 'create', '--name', pod, '--publish', `127.0.0.1:${health}:50052`, '--publish', `127.0.0.1:${admin}:50053`);
    pods.push(pod);
    started.push(await podman('run', '--detach', '--pod', pod, TEST_REDIS_IMAGE));
    const sidecar = await podman('run', '--detach', '--pod', pod, '--read-only', '--cap-drop=ALL', '--env', 'REDIS_URL=redis://127.0.0.1:6379', IMAGE!);
    started.push(sidecar);
    await waitFor(async () => (await readyz(admin)).body.components?.['contextcache.v1.ContextCache/pubsub'] === 'SERVING', 'the sidecar to subscribe to the pod\'s Redis', 30_000, 50);
    const metrics = await (await fetch(`http://127.0.0.1:${admin}/metrics`)).text();
    expect(metrics).toMatch(/^context_cache_redis_up\{link="commands"\} 1$/m);
    expect(metrics).toMatch(/^context_cache_redis_node_up\{[^}]*role="primary"[^}]*\} 1$/m);
    // The API is on the pod's loopback only: what the app container would dial, and nothing outside.
    const inside = await podman('run', '--rm', '--pod', pod, '--entrypoint', 'node', IMAGE!, '-e',
      "require('net').connect(50051, '127.0.0.1').on('connect', function () { console.log('reachable'); this.destroy(); }).on('error', () => console.log('unreachable'))");
    expect(inside).toBe('reachable');
    await podman('kill', '--signal', 'TERM', sidecar);
    expect(await exitCode(sidecar)).toBe(0);
  });
});
