import { status } from '@grpc/grpc-js';
import { lstatSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { ContextCacheClient, LinkState } from '../../src/client';
import { checkHealth, healthClient, ServingStatus, watchHealth } from '../helpers/health';
import { spawnSidecar, stopAllSidecarProcesses, type LogLine, type SidecarProcess } from '../helpers/process';
import { freePort } from '../helpers/redis';
import { rejectionOf, waitFor } from '../helpers/wait';

/**
 * The sidecar as a real process (src/main.ts through the tsx loader), the
 * way a pod runs it: configured by environment, logging JSON on stdout,
 * stopped by SIGTERM.
 */
describe('the sidecar process', () => {
  const clients: { close(): void }[] = [];
  const track = <T extends { close(): void }>(client: T): T => {
    clients.push(client);
    return client;
  };
  afterEach(async () => {
    for (const client of clients.splice(0)) client.close();
    await stopAllSidecarProcesses();
  });

  const messages = (proc: SidecarProcess) => proc.logs.map((line) => line.msg);
  const logged = (proc: SidecarProcess, msg: string): LogLine | undefined => proc.logs.find((line) => line.msg === msg);

  async function startOnTcp(extra: Record<string, string> = {}): Promise<{ proc: SidecarProcess; address: string }> {
    const address = `127.0.0.1:${await freePort()}`;
    const proc = spawnSidecar({ CONTEXT_CACHE_LISTEN: address, CONTEXT_CACHE_SHUTDOWN_GRACE: '5s', ...extra });
    await proc.waitUntilServing(address);
    return { proc, address };
  }

  describe('graceful shutdown', () => {
    it('on SIGTERM: NOT_SERVING, refuses new calls, exits 0 within the grace period, logs it', async () => {
      const { proc, address } = await startOnTcp({ CONTEXT_CACHE_SHUTDOWN_GRACE: '10s' });
      const client = track(new ContextCacheClient(address));
      await client.set({ key: 'k', value: Buffer.from('v') });
      expect((await client.get({ key: 'k' })).found).toBe(true);

      // A long-lived stream open across the signal: it must see the sidecar go NOT_SERVING.
      const health = track(healthClient(address));
      const watch = watchHealth(health, '');
      await waitFor(() => watch.statuses.length > 0, 'the health Watch to start');
      expect(watch.statuses).toEqual([ServingStatus.SERVING]);

      const signalledAt = Date.now();
      expect(proc.child.kill('SIGTERM')).toBe(true);
      await waitFor(() => watch.statuses.includes(ServingStatus.NOT_SERVING) || watch.isEnded(), 'NOT_SERVING on the Watch stream or its end');
      expect(watch.statuses).toEqual([ServingStatus.SERVING, ServingStatus.NOT_SERVING]);

      // New calls are refused, on the existing connection and on a new one.
      const onExisting = await rejectionOf(client.get({ key: 'k' }, { deadline: 3000 }));
      expect(onExisting.code).toBe(status.UNAVAILABLE);
      const fresh = track(new ContextCacheClient(address));
      const onNew = await rejectionOf(fresh.get({ key: 'k' }, { deadline: 3000 }));
      expect(onNew.code).toBe(status.UNAVAILABLE);
      // ...while the process is still draining (the Watch stream holds it).
      expect(proc.hasExited()).toBe(false);

      watch.cancel();
      const exit = await proc.exited;
      const tookMs = Date.now() - signalledAt;
      expect(exit, proc.output()).toEqual({ code: 0, signal: null });
      // Within the grace period by the sidecar's own account, and by the wall clock with slack for a loaded machine.
      expect(logged(proc, 'shutdown complete')?.tookMs).toBeLessThanOrEqual(10_000 + 250);
      expect(tookMs).toBeLessThan(10_000 + 3000);

      expect(logged(proc, 'signal received')?.signal).toBe('SIGTERM');
      const order = messages(proc);
      expect(order).toContain('shutting down');
      expect(order).toContain('shutdown complete');
      expect(order.indexOf('shutting down')).toBeLessThan(order.indexOf('shutdown complete'));
      expect(logged(proc, 'shutting down')?.graceMs).toBe(10_000);
      expect(proc.logs.filter((line) => line.level === 'error' || line.level === 'fatal')).toEqual([]);

      // Afterwards the port is closed.
      const after = await rejectionOf(checkHealth(health, '', 2000));
      expect(after.code).toBe(status.UNAVAILABLE);
    });

    it('lets a call in flight finish while refusing new ones with UNAVAILABLE', async () => {
      const { proc, address } = await startOnTcp({ CONTEXT_CACHE_SHUTDOWN_GRACE: '10s' });
      const client = track(new ContextCacheClient(address));
      // A slow call: caller A takes the fill lease of a missing key, caller B waits for A's fill.
      const holder = await client.get({ key: 'slow', leaseOnMiss: true });
      expect(holder.lease?.token).toBeTruthy();
      const waiterStarted = Date.now();
      const waiter = client.get({ key: 'slow', leaseOnMiss: true, leaseWait: { seconds: 4 } }, { deadline: 15_000 });
      await waitFor(async () => (await client.getStats()).leases!.waits >= 1, 'the second caller to wait for the fill');

      const signalledAt = Date.now();
      proc.child.kill('SIGTERM');
      const health = track(healthClient(address));
      await waitFor(async () => (await checkHealth(health, '')) === ServingStatus.NOT_SERVING, 'health to turn NOT_SERVING');

      // Still listening (a call is in flight), but new calls are refused with a reason.
      const refused = await rejectionOf(client.get({ key: 'other' }));
      expect(refused.code).toBe(status.UNAVAILABLE);
      expect(refused.details).toMatch(/shutting down/);
      const fill = await rejectionOf(client.set({ key: 'slow', value: Buffer.from('late'), leaseToken: holder.lease!.token }));
      expect(fill.code).toBe(status.UNAVAILABLE);

      // The call in flight is not cut: it ends normally (a plain miss once its wait runs out).
      const waited = await waiter;
      expect(waited.found).toBe(false);
      expect(Date.now() - waiterStarted).toBeGreaterThanOrEqual(4000 - 50);
      expect(proc.hasExited()).toBe(false);

      const exit = await proc.exited;
      expect(exit, proc.output()).toEqual({ code: 0, signal: null });
      const took = logged(proc, 'shutdown complete')?.tookMs as number;
      // It waited for the call (which had about 4 s to run after the signal) and not for the whole grace period.
      expect(took).toBeGreaterThanOrEqual(4000 - (signalledAt - waiterStarted) - 100);
      expect(took).toBeLessThan(10_000);
    });

    it('on SIGINT: exits 0 and logs the shutdown', async () => {
      const { proc, address } = await startOnTcp();
      const client = track(new ContextCacheClient(address));
      await client.set({ key: 'k', value: Buffer.from('v') });
      const signalledAt = Date.now();
      proc.child.kill('SIGINT');
      const exit = await proc.exited;
      expect(exit, proc.output()).toEqual({ code: 0, signal: null });
      // Nothing was in flight: no reason to wait for the grace period.
      expect(logged(proc, 'shutdown complete')?.tookMs).toBeLessThan(2500);
      expect(Date.now() - signalledAt).toBeLessThan(5000);
      expect(logged(proc, 'signal received')?.signal).toBe('SIGINT');
      expect(messages(proc)).toEqual(expect.arrayContaining(['shutting down', 'shutdown complete']));
      const error = await rejectionOf(client.get({ key: 'k' }, { deadline: 2000 }));
      expect(error.code).toBe(status.UNAVAILABLE);
    });

    it('finishes within the grace period even when a stream never ends', async () => {
      const { proc, address } = await startOnTcp({ CONTEXT_CACHE_SHUTDOWN_GRACE: '1s' });
      const health = track(healthClient(address));
      const watch = watchHealth(health, '');
      await waitFor(() => watch.statuses.length > 0, 'the health Watch to start');
      const signalledAt = Date.now();
      proc.child.kill('SIGTERM');
      const exit = await proc.exited;
      expect(exit, proc.output()).toEqual({ code: 0, signal: null });
      // The stream is cut when the 1 s grace period runs out (a little slack for timers).
      expect(logged(proc, 'shutdown complete')?.tookMs).toBeLessThanOrEqual(1000 + 250);
      expect(Date.now() - signalledAt).toBeLessThan(1000 + 4000);
      const ended = await watch.ended;
      expect(ended.code).not.toBe(status.OK);
    });
  });

  describe('start-up', () => {
    it('runs L1-only without Redis and says so', async () => {
      const { proc, address } = await startOnTcp();
      const listening = await proc.waitForLog((line) => line.msg === 'sidecar listening', 'the listening log line');
      expect(listening.address).toBe(address);
      const warning = await proc.waitForLog((line) => /L1-only/.test(line.msg ?? ''), 'the L1-only log line');
      expect(warning.level).toBe('warn');
      expect(warning.msg).toMatch(/REDIS_URL/);
      const client = track(new ContextCacheClient(address));
      const stats = await client.getStats();
      expect(stats.l2?.state).toBe(LinkState.LINK_STATE_DISABLED);
      proc.child.kill('SIGTERM');
      expect((await proc.exited).code).toBe(0);
    });

    it.each([
      ['CONTEXT_CACHE_L1_MAX_BYTES', { CONTEXT_CACHE_L1_MAX_BYTES: 'lots' }, /not a size/],
      ['CONTEXT_CACHE_LISTEN', { CONTEXT_CACHE_LISTEN: 'localhost' }, /not an address/],
      ['REDIS_PORT', { REDIS_HOST: 'redis', REDIS_PORT: 'tcp://10.0.0.1:6379' }, /enableServiceLinks/],
    ] as const)('exits non-zero on an invalid %s and names it', async (variable, env, why) => {
      const proc = spawnSidecar({ CONTEXT_CACHE_LISTEN: '127.0.0.1:0', ...env });
      const exit = await proc.exited;
      expect(exit.code, proc.output()).not.toBe(0);
      expect(exit.code).not.toBeNull();
      expect(proc.output()).toContain(variable);
      const fatal = proc.logs.find((line) => line.level === 'fatal');
      expect(fatal?.variable).toBe(variable);
      expect(fatal?.msg).toMatch(why);
      expect(messages(proc)).not.toContain('sidecar listening');
    });

    it('exits non-zero when the port is taken', async () => {
      const { address } = await startOnTcp();
      const second = spawnSidecar({ CONTEXT_CACHE_LISTEN: address });
      const exit = await second.exited;
      expect(exit.code, second.output()).not.toBe(0);
      expect(exit.code).not.toBeNull();
      expect(second.logs.find((line) => line.level === 'fatal')?.msg).toBe('start-up failed');
      expect(second.output()).toMatch(/EADDRINUSE/);
    });
  });

  describe('on a Unix socket', () => {
    const dir = mkdtempSync(join(tmpdir(), 'cc-sock-'));
    afterAll(() => rmSync(dir, { recursive: true, force: true }));

    it('serves on unix:/path', async () => {
      const address = `unix:${join(dir, 'serve.sock')}`;
      const proc = spawnSidecar({ CONTEXT_CACHE_LISTEN: address, CONTEXT_CACHE_SHUTDOWN_GRACE: '5s' });
      await proc.waitUntilServing(address);
      expect((await proc.waitForLog((line) => line.msg === 'sidecar listening', 'the listening log line')).address).toBe(address);
      const client = track(new ContextCacheClient(address));
      await client.set({ key: 'over-uds', value: Buffer.from('yes') });
      expect(Buffer.from((await client.get({ key: 'over-uds' })).value).toString()).toBe('yes');
      proc.child.kill('SIGTERM');
      expect((await proc.exited).code).toBe(0);
    });

    it('replaces a stale socket file left by a process that died', async () => {
      const path = join(dir, 'stale.sock');
      const address = `unix:${path}`;
      const first = spawnSidecar({ CONTEXT_CACHE_LISTEN: address });
      await first.waitUntilServing(address);
      first.child.kill('SIGKILL');
      await first.exited;
      expect(lstatSync(path).isSocket()).toBe(true); // left behind, nobody listening

      const second = spawnSidecar({ CONTEXT_CACHE_LISTEN: address, CONTEXT_CACHE_SHUTDOWN_GRACE: '5s' });
      await second.waitUntilServing(address);
      const client = track(new ContextCacheClient(address));
      await client.set({ key: 'after-restart', value: Buffer.from('ok') });
      expect((await client.get({ key: 'after-restart' })).found).toBe(true);
      second.child.kill('SIGTERM');
      expect((await second.exited).code).toBe(0);
    });

    it('never takes over a socket that another sidecar still serves', async () => {
      const address = `unix:${join(dir, 'live.sock')}`;
      const owner = spawnSidecar({ CONTEXT_CACHE_LISTEN: address });
      await owner.waitUntilServing(address);
      const client = track(new ContextCacheClient(address));
      await client.set({ key: 'owned', value: Buffer.from('by the first') });

      const intruder = spawnSidecar({ CONTEXT_CACHE_LISTEN: address });
      const exit = await intruder.exited;
      expect(exit.code, intruder.output()).not.toBe(0);
      expect(exit.code).not.toBeNull();
      expect(intruder.output()).toMatch(/EADDRINUSE/);

      // The first sidecar still owns the socket, with its data.
      expect(Buffer.from((await client.get({ key: 'owned' })).value).toString()).toBe('by the first');
      const health = track(healthClient(address));
      expect(await checkHealth(health, '')).toBe(ServingStatus.SERVING);
    });

    it('refuses to start over a regular file at the socket path', async () => {
      const path = join(dir, 'not-a-socket');
      writeFileSync(path, 'important data');
      const proc = spawnSidecar({ CONTEXT_CACHE_LISTEN: `unix:${path}` });
      const exit = await proc.exited;
      expect(exit.code, proc.output()).not.toBe(0);
      expect(proc.output()).toMatch(/EADDRINUSE/);
      expect(lstatSync(path).isFile()).toBe(true);
    });
  });
});
