/**
 * Optional caller authentication (CONTEXT_CACHE_AUTH_TOKEN_FILE): the cache
 * API and reflection need `authorization: Bearer <token>`, health stays open,
 * the token file is reloaded when it changes (in place or by a Kubernetes
 * symlink swap), and an API on the network without a token is warned about.
 */
import { credentials, Metadata, status, type ServiceError, type StatusObject } from '@grpc/grpc-js';
import { mkdirSync, mkdtempSync, renameSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { ContextCacheClient, ContextCacheError } from '../../src/client';
import { ConfigError, loadConfig } from '../../src/config';
import { GetRequest, type GetResponse } from '../../src/gen/contextcache/v1/context_cache';
import * as reflectionV1 from '../../src/gen/grpc/reflection/v1/reflection';
import * as reflectionV1alpha from '../../src/gen/grpc/reflection/v1alpha/reflection';
import { createLogger } from '../../src/log';
import { AuthToken, isLocalListen } from '../../src/server/auth';
import { Sidecar } from '../../src/sidecar';
import { checkHealth, healthClient, ServingStatus } from '../helpers/health';
import { ReflectionStream, type ReflectionVersion } from '../helpers/reflection';
import { closeAllSidecars, startSidecar, type TestSidecar } from '../helpers/sidecar';
import { captureLogs } from '../helpers/logs';
import { rejectionOf, waitFor } from '../helpers/wait';

const TOKEN = 'first-token-0123456789abcdef';
const ROTATED = 'second-token-fedcba9876543210';
const WRONG = 'wrong-token-0000000000000000';

const dirs: string[] = [];
function tempDir(): string {
  const dir = mkdtempSync(join(tmpdir(), 'context-cache-auth-'));
  dirs.push(dir);
  return dir;
}

/** A token file as an editor or `echo` writes it: with a trailing newline. */
function tokenFile(token: string): string {
  const file = join(tempDir(), 'token');
  writeFileSync(file, `${token}\n`);
  return file;
}

/** A grpc-js client interceptor that sends `authorization: Bearer <token()>` on every call. */
/** A ContextCacheClient whose calls carry the token (the client's authToken option). */
function clientWith(address: string, token: () => string): ContextCacheClient {
  const client = new ContextCacheClient(address, { authToken: token });
  clients.push(client);
  return client;
}
const clients: ContextCacheClient[] = [];

/** A Get through the raw generated client with explicit metadata; resolves with the status code. */
function rawGet(sc: TestSidecar, metadata: Metadata): Promise<{ code: number; details: string; response?: GetResponse }> {
  return new Promise((resolve) => {
    sc.client.raw.get(GetRequest.fromPartial({ key: 'k' }), metadata, { deadline: Date.now() + 5000 }, (error: ServiceError | null, response?: GetResponse) =>
      resolve(error ? { code: error.code, details: error.details } : { code: status.OK, details: '', response }),
    );
  });
}

function authMetadata(value: string | undefined): Metadata {
  const metadata = new Metadata();
  if (value !== undefined) metadata.set('authorization', value);
  return metadata;
}

/** The final status of a Watch stream opened with `client`, after its first message or its end. */
async function watchOutcome(client: ContextCacheClient): Promise<{ first?: string; status?: number }> {
  const stream = client.watch({ keyPrefixes: ['watched'] });
  try {
    for await (const message of stream) return { first: message.event?.$case };
    return {};
  } catch (error) {
    return { status: (error as ContextCacheError).code };
  } finally {
    stream.cancel();
  }
}

/** The status a reflection stream (v1 or v1alpha, helper without metadata) ends with after one query. */
async function reflectionWithoutToken(address: string, version: ReflectionVersion): Promise<StatusObject> {
  const stream = new ReflectionStream(address, version);
  const error = await rejectionOf(stream.ask({ $case: 'listServices', value: '*' }));
  expect(error.code).toBe(status.UNAUTHENTICATED);
  return stream.ended;
}


const started: Sidecar[] = [];
async function startLogged(env: Record<string, string>): Promise<{ sidecar: Sidecar; lines: Record<string, unknown>[] }> {
  const { lines, stream } = captureLogs();
  const config = loadConfig({ CONTEXT_CACHE_LISTEN: '127.0.0.1:0', CONTEXT_CACHE_ADMIN_LISTEN: 'off', CONTEXT_CACHE_SHUTDOWN_GRACE: '1s', ...env });
  const sidecar = await Sidecar.start(config, createLogger('info', stream));
  started.push(sidecar);
  return { sidecar, lines };
}

afterEach(async () => {
  for (const client of clients.splice(0)) client.close();
  await closeAllSidecars();
  await Promise.all(started.splice(0).map((sidecar) => sidecar.close()));
});
afterAll(() => {
  for (const dir of dirs) rmSync(dir, { recursive: true, force: true });
});

describe('caller authentication', () => {
  it('refuses a call without a token, or with a wrong or malformed one, with UNAUTHENTICATED, and never echoes a token', async () => {
    const sc = await startSidecar({ CONTEXT_CACHE_AUTH_TOKEN_FILE: tokenFile(TOKEN) });

    const without = await rejectionOf(sc.client.get({ key: 'k' }));
    expect(without).toBeInstanceOf(ContextCacheError);
    expect(without.code).toBe(status.UNAUTHENTICATED);
    expect(without.message).toMatch(/authorization: Bearer <token>/);

    for (const value of [`Bearer ${WRONG}`, `Bearer ${TOKEN}x`, `Bearer ${TOKEN.slice(0, -1)}`, `Bearer ${TOKEN.toUpperCase()}`, 'Bearer short']) {
      const outcome = await rawGet(sc, authMetadata(value));
      expect(outcome.code, value).toBe(status.UNAUTHENTICATED);
      expect(outcome.details, value).toMatch(/not valid/);
      expect(outcome.details).not.toContain(TOKEN);
      expect(outcome.details).not.toContain(WRONG);
    }
    for (const value of [TOKEN, `Basic ${TOKEN}`, `Bearer`, `Bearer ${TOKEN} extra`]) {
      const outcome = await rawGet(sc, authMetadata(value));
      expect(outcome.code, value).toBe(status.UNAUTHENTICATED);
      expect(outcome.details).not.toContain(TOKEN);
    }
  });

  it('counts refused calls in the RPC metrics, under their method and code 16', async () => {
    const sc = await startSidecar({ CONTEXT_CACHE_AUTH_TOKEN_FILE: tokenFile(TOKEN) });
    const refused = async () => {
      const values = await sc.sidecar.metrics!.rpcDuration.get();
      return values.values.find((v) => v.metricName?.endsWith('_count') && v.labels.method === 'Get' && v.labels.code === String(status.UNAUTHENTICATED))?.value ?? 0;
    };
    expect(await refused()).toBe(0);
    await rejectionOf(sc.client.get({ key: 'k' }));
    await rejectionOf(sc.client.get({ key: 'k' }));
    expect(await refused()).toBe(2);
  });

  it('accepts the right token on unary calls (raw client with Metadata, or a client interceptor) and on Watch', async () => {
    const sc = await startSidecar({ CONTEXT_CACHE_AUTH_TOKEN_FILE: tokenFile(TOKEN) });

    const raw = await rawGet(sc, authMetadata(`Bearer ${TOKEN}`));
    expect(raw.code).toBe(status.OK);
    expect(raw.response?.found).toBe(false);
    // The scheme is case-insensitive (RFC 7235).
    expect((await rawGet(sc, authMetadata(`bearer ${TOKEN}`))).code).toBe(status.OK);

    const client = clientWith(sc.address, () => TOKEN);
    await client.set({ key: 'k', value: Buffer.from('v') });
    expect((await client.get({ key: 'k' })).value.toString()).toBe('v');
    expect((await client.getStats()).sidecarId).toBe(sc.sidecar.sidecarId);

    expect(await watchOutcome(client)).toEqual({ first: 'started' });
    expect(await watchOutcome(sc.client)).toEqual({ status: status.UNAUTHENTICATED });
    expect(await watchOutcome(clientWith(sc.address, () => WRONG))).toEqual({ status: status.UNAUTHENTICATED });
  });

  it('checks streams when they start: HoldLock without a token is UNAUTHENTICATED before the lock code runs', async () => {
    const sc = await startSidecar({ CONTEXT_CACHE_AUTH_TOKEN_FILE: tokenFile(TOKEN) });
    const hold = async (client: ContextCacheClient) => {
      const stream = client.holdLock({ resource: 'r' });
      try {
        for await (const message of stream) return `message ${message.lost}`;
        return 'ended';
      } catch (error) {
        return (error as ContextCacheError).code;
      } finally {
        stream.cancel();
      }
    };
    expect(await hold(sc.client)).toBe(status.UNAUTHENTICATED);
    // With the token the call reaches the lock code: L1-only has no lock masters.
    expect(await hold(clientWith(sc.address, () => TOKEN))).toBe(status.UNAVAILABLE);
  });

  it('leaves grpc.health.v1 open, on the API address and on the health-only address', async () => {
    const sc = await startSidecar({ CONTEXT_CACHE_AUTH_TOKEN_FILE: tokenFile(TOKEN), CONTEXT_CACHE_HEALTH_LISTEN: '127.0.0.1:0' });
    for (const address of [sc.address, sc.sidecar.healthAddress!]) {
      const health = healthClient(address);
      try {
        expect(await checkHealth(health, '')).toBe(ServingStatus.SERVING);
        expect(await checkHealth(health, 'contextcache.v1.ContextCache')).toBe(ServingStatus.SERVING);
      } finally {
        health.close();
      }
    }
  });

  it.each(['v1', 'v1alpha'] as const)('refuses reflection %s without a token, and serves it with the token', async (version) => {
    const sc = await startSidecar({ CONTEXT_CACHE_AUTH_TOKEN_FILE: tokenFile(TOKEN) });
    const ended = await reflectionWithoutToken(sc.address, version);
    expect(ended.code).toBe(status.UNAUTHENTICATED);

    const Client = version === 'v1' ? reflectionV1.ServerReflectionClient : (reflectionV1alpha.ServerReflectionClient as unknown as typeof reflectionV1.ServerReflectionClient);
    const client = new Client(sc.address, credentials.createInsecure());
    try {
      const call = client.serverReflectionInfo(authMetadata(`Bearer ${TOKEN}`));
      const answer = new Promise<reflectionV1.ServerReflectionResponse>((resolve, reject) => {
        call.once('data', resolve);
        call.once('error', reject);
      });
      call.write({ host: '', messageRequest: { $case: 'listServices', value: '*' } });
      const response = await answer;
      expect(response.messageResponse?.$case).toBe('listServicesResponse');
      call.end();
    } finally {
      client.close();
    }
  });

  it('without CONTEXT_CACHE_AUTH_TOKEN_FILE every call is accepted, as before', async () => {
    const sc = await startSidecar();
    expect((await sc.client.get({ key: 'k' })).found).toBe(false);
    expect((await rawGet(sc, authMetadata(`Bearer ${WRONG}`))).code).toBe(status.OK);
  });
});

describe('token rotation', () => {
  it('picks up a token file rewritten in place: the new token works, the old one is refused', async () => {
    const file = tokenFile(TOKEN);
    const { sidecar, lines } = await startLogged({ CONTEXT_CACHE_AUTH_TOKEN_FILE: file });
    let current = TOKEN;
    const client = clientWith(sidecar.listenAddress, () => current);
    const old = clientWith(sidecar.listenAddress, () => TOKEN);
    await client.get({ key: 'k' });

    writeFileSync(file, `${ROTATED}\n`);
    current = ROTATED;
    await waitFor(
      () => client.get({ key: 'k' }).then(() => true, () => false),
      'the rotated token to be accepted',
    );
    expect((await rejectionOf(old.get({ key: 'k' }))).code).toBe(status.UNAUTHENTICATED);

    const reloaded = lines.filter((line) => line.msg === 'auth token reloaded: calls must now present the new token');
    expect(reloaded).toHaveLength(1);
    expect(reloaded[0]!.file).toBe(file);
    const text = lines.map((line) => JSON.stringify(line)).join('\n');
    expect(text).not.toContain(TOKEN);
    expect(text).not.toContain(ROTATED);
  });

  it('follows a Kubernetes Secret update (a ..data symlink swapped to a new directory)', async () => {
    // The layout the kubelet's atomic writer makes: token -> ..data/token, ..data -> ..<timestamp>.
    const dir = tempDir();
    const version = (name: string, token: string) => {
      mkdirSync(join(dir, name));
      writeFileSync(join(dir, name, 'token'), token);
    };
    version('..2024_01_01_00_00_00.1', TOKEN);
    symlinkSync('..2024_01_01_00_00_00.1', join(dir, '..data'));
    symlinkSync('..data/token', join(dir, 'token'));
    const sc = await startSidecar({ CONTEXT_CACHE_AUTH_TOKEN_FILE: join(dir, 'token') });
    const client = clientWith(sc.address, () => TOKEN);
    const rotated = clientWith(sc.address, () => ROTATED);
    await client.get({ key: 'k' });

    version('..2024_01_01_00_01_00.2', ROTATED);
    symlinkSync('..2024_01_01_00_01_00.2', join(dir, '..data_tmp'));
    renameSync(join(dir, '..data_tmp'), join(dir, '..data'));
    rmSync(join(dir, '..2024_01_01_00_00_00.1'), { recursive: true });

    await waitFor(
      () => rotated.get({ key: 'k' }).then(() => true, () => false),
      'the token of the new Secret version to be accepted',
    );
    expect((await rejectionOf(client.get({ key: 'k' }))).code).toBe(status.UNAUTHENTICATED);
  });

  it('keeps the last good token when the file becomes empty or disappears, warns once, and recovers', async () => {
    const file = tokenFile(TOKEN);
    const { sidecar, lines } = await startLogged({ CONTEXT_CACHE_AUTH_TOKEN_FILE: file });
    const client = clientWith(sidecar.listenAddress, () => TOKEN);
    const warnings = () => lines.filter((line) => line.msg === 'auth token file cannot be reloaded; keeping the last good token');

    writeFileSync(file, '\n');
    await waitFor(() => warnings().length === 1, 'the warning about the empty file');
    expect(warnings()[0]!.reason).toBe('the file is empty');
    expect((await client.get({ key: 'k' })).found).toBe(false);

    rmSync(file);
    await waitFor(() => warnings().length === 2, 'the warning about the missing file');
    expect(String(warnings()[1]!.reason)).toMatch(/ENOENT/);
    expect((await client.get({ key: 'k' })).found).toBe(false);

    writeFileSync(file, `${TOKEN}\n`);
    await waitFor(() => lines.some((line) => line.msg === 'auth token file is usable again; the token is unchanged'), 'the recovery line');
    expect((await client.get({ key: 'k' })).found).toBe(false);
    expect(warnings()).toHaveLength(2);
  });

  it('stops polling on shutdown (close is idempotent)', async () => {
    const file = tokenFile(TOKEN);
    const auth = new AuthToken(loadConfig({ CONTEXT_CACHE_AUTH_TOKEN_FILE: file }).auth!, createLogger('silent'), 5);
    auth.start();
    await auth.close();
    await auth.close();
    writeFileSync(file, ROTATED);
    auth.start(); // a closed reloader stays closed
    expect(auth.matches(TOKEN)).toBe(true);
    await auth.poll(); // an explicit check still reads nothing after close
    expect(auth.matches(ROTATED)).toBe(false);
  });
});

describe('the token comparison', () => {
  it('compares tokens of any length without throwing, and only the exact token matches', () => {
    const auth = new AuthToken(loadConfig({ CONTEXT_CACHE_AUTH_TOKEN_FILE: tokenFile(TOKEN) }).auth!, createLogger('silent'));
    expect(auth.matches(TOKEN)).toBe(true);
    for (const presented of ['', 'x', TOKEN.slice(0, -1), `${TOKEN}x`, TOKEN.repeat(100), WRONG]) expect(auth.matches(presented), presented).toBe(false);
  });
});

describe('CONTEXT_CACHE_AUTH_TOKEN_FILE at start-up', () => {
  function configError(file: string): ConfigError {
    try {
      loadConfig({ CONTEXT_CACHE_AUTH_TOKEN_FILE: file });
    } catch (error) {
      expect(error).toBeInstanceOf(ConfigError);
      return error as ConfigError;
    }
    throw new Error('expected loadConfig to throw');
  }

  it('refuses an empty, missing, short or non-ASCII token file, naming the variable and never the content', () => {
    const cases: [string, RegExp][] = [
      [tokenFile(''), /the file is empty/],
      [tokenFile('  \n\t\n'), /the file is empty/],
      [join(tempDir(), 'missing'), /cannot read it \(ENOENT\)/],
      [tempDir(), /cannot read it \(EISDIR\)/],
      [tokenFile('short-token'), /11 bytes; use at least 16/],
      [tokenFile('has a space in the middle'), /visible ASCII/],
      [tokenFile('ünïcode-token-ünïcode'), /visible ASCII/],
    ];
    for (const [file, message] of cases) {
      const error = configError(file);
      expect(error.variable).toBe('CONTEXT_CACHE_AUTH_TOKEN_FILE');
      expect(error.message.startsWith('CONTEXT_CACHE_AUTH_TOKEN_FILE: ')).toBe(true);
      expect(error.message).toMatch(message);
      expect(error.message).not.toContain('short-token');
      expect(error.message).not.toContain('in the middle');
    }
  });

  it('trims the newline, and keeps the token out of the configuration when it is logged or serialised', () => {
    const file = tokenFile(TOKEN);
    const config = loadConfig({ CONTEXT_CACHE_AUTH_TOKEN_FILE: file });
    expect(config.auth?.tokenFile).toBe(file);
    expect(config.auth?.token).toBe(TOKEN);
    expect(JSON.stringify(config)).not.toContain(TOKEN);
    expect(loadConfig({}).auth).toBeUndefined();
  });
});

describe('the start-up warning about an unauthenticated API on the network', () => {
  const WARNING = /^the API is reachable from the network without authentication/;

  it('is logged when listening on 0.0.0.0 without a token, and not with one or on loopback', async () => {
    const open = await startLogged({ CONTEXT_CACHE_LISTEN: '0.0.0.0:0' });
    const warnings = open.lines.filter((line) => WARNING.test(String(line.msg)));
    expect(warnings).toHaveLength(1);
    expect(warnings[0]).toMatchObject({ level: 'warn', address: '0.0.0.0:0' });

    const guarded = await startLogged({ CONTEXT_CACHE_LISTEN: '0.0.0.0:0', CONTEXT_CACHE_AUTH_TOKEN_FILE: tokenFile(TOKEN) });
    expect(guarded.lines.some((line) => line.msg === 'sidecar listening' && line.auth === 'bearer token')).toBe(true);
    expect(guarded.lines.filter((line) => WARNING.test(String(line.msg)))).toEqual([]);

    const loopback = await startLogged({});
    expect(loopback.lines.filter((line) => WARNING.test(String(line.msg)))).toEqual([]);
  });

  it.each([
    ['127.0.0.1:50051', true],
    ['127.1.2.3:50051', true],
    ['[::1]:50051', true],
    ['localhost:50051', true],
    ['LOCALHOST:50051', true],
    ['unix:/run/context-cache.sock', true],
    ['0.0.0.0:50051', false],
    ['[::]:50051', false],
    ['10.0.0.7:50051', false],
    ['[fe80::1]:50051', false],
    ['cache.internal:50051', false],
  ] as const)('treats %s as local: %s', (listen, local) => {
    expect(isLocalListen(listen)).toBe(local);
  });
});
