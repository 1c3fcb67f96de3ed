import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ConfigError, loadConfig } from '../../src/config';
import { Source, WriteScope } from '../../src/client';
import { freePort, respCommand } from '../helpers/redis';
import { closeAllSidecars, startSidecar } from '../helpers/sidecar';
import { waitFor } from '../helpers/wait';

/** A private CA and a server certificate for 127.0.0.1, made with openssl for this test. */
function makeCertificates(dir: string): { ca: string; cert: string; key: string } {
  const openssl = (...args: string[]) => execFileSync('openssl', args, { cwd: dir, stdio: 'ignore' });
  openssl('req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '2', '-subj', '/CN=context-cache test CA', '-keyout', 'ca.key', '-out', 'ca.pem');
  openssl('req', '-newkey', 'rsa:2048', '-nodes', '-subj', '/CN=127.0.0.1', '-keyout', 'server.key', '-out', 'server.csr');
  writeFileSync(join(dir, 'san.ext'), 'subjectAltName=IP:127.0.0.1\n');
  openssl('x509', '-req', '-in', 'server.csr', '-CA', 'ca.pem', '-CAkey', 'ca.key', '-CAcreateserial', '-days', '2', '-extfile', 'san.ext', '-out', 'server.pem');
  return { ca: join(dir, 'ca.pem'), cert: join(dir, 'server.pem'), key: join(dir, 'server.key') };
}

describe('Redis over TLS (rediss://)', () => {
  let dir: string;
  let files: { ca: string; cert: string; key: string };
  let redis: ChildProcess;
  let tlsPort: number;

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'cc-tls-'));
    files = makeCertificates(dir);
    const plainPort = await freePort();
    tlsPort = await freePort();
    redis = spawn(
      'redis-server',
      ['--port', String(plainPort), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--tls-port', String(tlsPort), '--tls-cert-file', files.cert, '--tls-key-file', files.key, '--tls-ca-cert-file', files.ca, '--tls-auth-clients', 'no'],
      { stdio: 'ignore' },
    );
    await waitFor(async () => (await respCommand(plainPort, ['PING'])) === 'PONG', 'redis-server with TLS');
  });
  afterAll(async () => {
    await closeAllSidecars();
    redis.kill('SIGKILL');
    rmSync(dir, { recursive: true, force: true });
  });

  it('connects with REDIS_TLS_CA_FILE and serves through L2', async () => {
    const env = { REDIS_URL: `rediss://127.0.0.1:${tlsPort}`, REDIS_TLS_CA_FILE: files.ca, CONTEXT_CACHE_NAMESPACE: 'tls' };
    const a = await startSidecar(env);
    const b = await startSidecar(env);
    await waitFor(() => a.sidecar.tiers.mode === 'coherent' && b.sidecar.tiers.mode === 'coherent', 'both sidecars connected over TLS');
    expect((await a.client.set({ key: 'secret', value: Buffer.from('over tls') })).scope).toBe(WriteScope.WRITE_SCOPE_SHARED);
    const read = await b.client.get({ key: 'secret' });
    expect(read.info?.source).toBe(Source.SOURCE_L2);
    expect(Buffer.from(read.value).toString()).toBe('over tls');
  });

  it('refuses a server certificate it cannot verify (no CA given): stays degraded instead of trusting it', async () => {
    const sc = await startSidecar({ REDIS_URL: `rediss://127.0.0.1:${tlsPort}`, CONTEXT_CACHE_NAMESPACE: 'tls' });
    await waitFor(() => sc.sidecar.redis!.link.state === 'down', 'the TLS handshake to fail');
    expect(sc.sidecar.tiers.mode).toBe('degraded');
    expect((await sc.client.set({ key: 'k', value: Buffer.from('v') })).scope).toBe(WriteScope.WRITE_SCOPE_LOCAL);
  });

  it('stops start-up when REDIS_TLS_CA_FILE cannot be read', () => {
    expect(() => loadConfig({ REDIS_URL: 'rediss://127.0.0.1:1', REDIS_TLS_CA_FILE: join(dir, 'missing.pem') })).toThrow(ConfigError);
    expect(() => loadConfig({ REDIS_URL: 'rediss://127.0.0.1:1', REDIS_TLS_CA_FILE: join(dir, 'missing.pem') })).toThrow(/REDIS_TLS_CA_FILE: cannot use/);
  });
});
