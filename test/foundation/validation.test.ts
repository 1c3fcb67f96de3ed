import { status } from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CONFIG_VARIABLES, ConfigError, loadConfig, type Config, type ConfigVariable } from '../../src/config';
import { closeAllSidecars, startSidecar, type TestSidecar } from '../helpers/sidecar';
import { rejectionOf } from '../helpers/wait';

const KiB = 1024;
const MiB = 1024 * KiB;

/** Request validation over real gRPC: every documented limit answers INVALID_ARGUMENT naming the field. */
describe('request validation', () => {
  let sc: TestSidecar;
  beforeAll(async () => {
    sc = await startSidecar({
      CONTEXT_CACHE_MAX_VALUE_BYTES: '1KiB',
      CONTEXT_CACHE_MAX_MESSAGE_BYTES: '64KiB',
      CONTEXT_CACHE_MAX_KEYS_PER_CALL: '10',
    });
  });
  afterAll(closeAllSidecars);

  async function invalid(call: Promise<unknown>, message: RegExp): Promise<void> {
    const error = await rejectionOf(call);
    expect(error.code, `${error.details}`).toBe(status.INVALID_ARGUMENT);
    expect(error.details).toMatch(message);
  }

  describe('keys', () => {
    it('refuses an empty key on every keyed RPC, naming the field', async () => {
      await invalid(sc.client.get({ key: '' }), /^key is empty/);
      await invalid(sc.client.set({ key: '', value: Buffer.from('x') }), /^key is empty/);
      await invalid(sc.client.getMany({ keys: ['ok', ''] }), /^keys\[1\] is empty/);
      await invalid(sc.client.delete({ keys: ['', 'ok'] }), /^keys\[0\] is empty/);
    });

    it('accepts a key of exactly 1024 bytes and refuses 1025', async () => {
      const exact = 'k'.repeat(1024);
      await sc.client.set({ key: exact, value: Buffer.from('x') });
      expect((await sc.client.get({ key: exact })).found).toBe(true);
      await invalid(sc.client.set({ key: exact + 'k', value: Buffer.from('x') }), /^key is 1025 bytes; the limit is 1024 bytes/);
      await invalid(sc.client.get({ key: exact + 'k' }), /^key is 1025 bytes/);
      await invalid(sc.client.getMany({ keys: ['a', 'b', exact + 'k'] }), /^keys\[2\] is 1025 bytes/);
      await invalid(sc.client.delete({ keys: [exact + 'k'] }), /^keys\[0\] is 1025 bytes/);
    });

    it('counts multibyte UTF-8 in bytes, not characters', async () => {
      // "é" is 2 bytes: 512 of them are 1024 bytes (accepted), 513 are 1026 bytes in 513 characters (refused).
      const twoByte = 'é'.repeat(512);
      expect(Buffer.byteLength(twoByte)).toBe(1024);
      await sc.client.set({ key: twoByte, value: Buffer.from('x') });
      expect((await sc.client.get({ key: twoByte })).found).toBe(true);
      await invalid(sc.client.set({ key: 'é'.repeat(513), value: Buffer.from('x') }), /^key is 1026 bytes/);

      // "🔑" is 4 bytes (2 UTF-16 code units): 256 are 1024 bytes, 257 are refused although only 514 code units long.
      await sc.client.set({ key: '🔑'.repeat(256), value: Buffer.from('x') });
      await invalid(sc.client.set({ key: '🔑'.repeat(257), value: Buffer.from('x') }), /^key is 1028 bytes/);
    });
  });

  describe('values', () => {
    it('accepts a value of exactly CONTEXT_CACHE_MAX_VALUE_BYTES and refuses one byte more', async () => {
      await sc.client.set({ key: 'v/exact', value: Buffer.alloc(KiB, 7) });
      expect((await sc.client.get({ key: 'v/exact' })).value.byteLength).toBe(KiB);
      await invalid(sc.client.set({ key: 'v/over', value: Buffer.alloc(KiB + 1) }), /^value is 1025 bytes; the limit is 1024 bytes/);
      expect((await sc.client.get({ key: 'v/over' })).found).toBe(false);
    });
  });

  describe('TTL', () => {
    it('refuses negative seconds', async () => {
      await invalid(sc.client.set({ key: 't/a', value: Buffer.from('x'), ttl: { seconds: -1, nanos: 0 } }), /^ttl is negative/);
    });

    it('refuses negative nanos', async () => {
      await invalid(sc.client.set({ key: 't/a', value: Buffer.from('x'), ttl: { seconds: 0, nanos: -1 } }), /^ttl is negative/);
      await invalid(sc.client.set({ key: 't/a', value: Buffer.from('x'), ttl: { seconds: 5, nanos: -500 } }), /^ttl is negative/);
    });

    it('refuses nanos out of range and a TTL over the limit', async () => {
      await invalid(sc.client.set({ key: 't/a', value: Buffer.from('x'), ttl: { seconds: 1, nanos: 1_000_000_000 } }), /^ttl\.nanos/);
      await invalid(sc.client.set({ key: 't/a', value: Buffer.from('x'), ttl: { seconds: 400 * 24 * 3600 } }), /^ttl is \d+ ms; the limit/);
      expect((await sc.client.get({ key: 't/a' })).found).toBe(false);
    });
  });

  describe('key counts', () => {
    it('refuses GetMany and Delete with no keys', async () => {
      await invalid(sc.client.getMany({ keys: [] }), /^keys is empty/);
      await invalid(sc.client.delete({ keys: [] }), /^keys is empty/);
    });

    it('accepts CONTEXT_CACHE_MAX_KEYS_PER_CALL keys and refuses one more', async () => {
      const keys = Array.from({ length: 10 }, (_, i) => `count/${i}`);
      expect((await sc.client.getMany({ keys })).results).toHaveLength(10);
      await invalid(sc.client.getMany({ keys: [...keys, 'count/10'] }), /^keys has 11 entries; the limit is 10 per call/);
      await invalid(sc.client.delete({ keys: [...keys, 'count/10'] }), /^keys has 11 entries/);
    });
  });

  describe('tags', () => {
    const tags = (n: number) => Array.from({ length: n }, (_, i) => `tag-${i}`);

    it('accepts 32 tags on an entry and refuses 33', async () => {
      const written = await sc.client.set({ key: 'tags/32', value: Buffer.from('x'), tags: tags(32) });
      expect(written.info?.tags).toHaveLength(32);
      await invalid(sc.client.set({ key: 'tags/33', value: Buffer.from('x'), tags: tags(33) }), /^tags has 33 entries/);
      expect((await sc.client.get({ key: 'tags/33' })).found).toBe(false);
    });

    it('refuses an empty or over-long tag, naming its index', async () => {
      await invalid(sc.client.set({ key: 'tags/x', value: Buffer.from('x'), tags: ['ok', ''] }), /^tags\[1\] is empty/);
      await invalid(sc.client.set({ key: 'tags/x', value: Buffer.from('x'), tags: ['t'.repeat(1025)] }), /^tags\[0\] is 1025 bytes/);
    });

    it('refuses InvalidateTags with no tags or too many', async () => {
      await invalid(sc.client.invalidateTags({ tags: [] }), /^tags has 0 entries; send 1 to 32/);
      await invalid(sc.client.invalidateTags({ tags: tags(33) }), /^tags has 33 entries/);
      await invalid(sc.client.invalidateTags({ tags: [''] }), /^tags\[0\] is empty/);
    });
  });

  describe('message size', () => {
    it('answers RESOURCE_EXHAUSTED to a message over CONTEXT_CACHE_MAX_MESSAGE_BYTES', async () => {
      const error = await rejectionOf(sc.client.set({ key: 'big', value: Buffer.alloc(70 * KiB) }));
      expect(error.code).toBe(status.RESOURCE_EXHAUSTED);
      expect(error.details).toMatch(/larger than max/);
      expect((await sc.client.get({ key: 'big' })).found).toBe(false);
    });

    it('keeps serving after all of the above', async () => {
      // Several refused calls in flight at once, then ordinary traffic on the same connection.
      const refused = await Promise.all([
        rejectionOf(sc.client.set({ key: 'big', value: Buffer.alloc(100 * KiB) })),
        rejectionOf(sc.client.set({ key: '', value: Buffer.from('x') })),
        rejectionOf(sc.client.getMany({ keys: [] })),
      ]);
      expect(refused.map((e) => e.code)).toEqual([status.RESOURCE_EXHAUSTED, status.INVALID_ARGUMENT, status.INVALID_ARGUMENT]);
      await sc.client.set({ key: 'still/alive', value: Buffer.from('yes') });
      expect(Buffer.from((await sc.client.get({ key: 'still/alive' })).value).toString()).toBe('yes');
      const stats = await sc.client.getStats();
      expect(stats.sidecarId).toBe(sc.sidecar.sidecarId);
      // The default-limit sidecar takes what this one refused.
      const roomy = await startSidecar();
      await roomy.client.set({ key: 'big', value: Buffer.alloc(100 * KiB) });
      expect((await roomy.client.get({ key: 'big' })).value.byteLength).toBe(100 * KiB);
    });
  });
});

/** Configuration: every bad variable stops start-up with a ConfigError naming it; defaults are as documented. */
describe('loadConfig', () => {
  function configError(env: Record<string, string>): ConfigError {
    try {
      loadConfig(env);
    } catch (error) {
      expect(error).toBeInstanceOf(ConfigError);
      return error as ConfigError;
    }
    throw new Error(`expected loadConfig(${JSON.stringify(env)}) to throw`);
  }

  function expectRefused(variable: ConfigVariable, value: string, extra: Record<string, string> = {}, message?: RegExp): void {
    const error = configError({ ...extra, [variable]: value });
    expect(error.variable).toBe(variable);
    expect(error.message.startsWith(`${variable}: `)).toBe(true);
    if (message) expect(error.message).toMatch(message);
  }

  it.each([
    ['CONTEXT_CACHE_L1_MAX_BYTES', 'lots'],
    ['CONTEXT_CACHE_L1_MAX_BYTES', '64 parsecs'],
    ['CONTEXT_CACHE_L1_MAX_BYTES', '-5MiB'],
    ['CONTEXT_CACHE_L1_MAX_BYTES', '1KiB'], // below the 1 MiB minimum
    ['CONTEXT_CACHE_MAX_VALUE_BYTES', '0'],
    ['CONTEXT_CACHE_MAX_VALUE_BYTES', '1TiB'],
    ['CONTEXT_CACHE_MAX_KEY_BYTES', '8'],
    ['CONTEXT_CACHE_MAX_MESSAGE_BYTES', 'big'],
  ] as const)('refuses the size %s=%s', (variable, value) => {
    expectRefused(variable, value, {}, /size|out of range/);
  });

  it('says what a size looks like', () => {
    expectRefused('CONTEXT_CACHE_L1_MAX_BYTES', 'lots', {}, /"lots" is not a size.*MiB/);
  });

  it.each([
    ['CONTEXT_CACHE_DEFAULT_TTL', 'soon'],
    ['CONTEXT_CACHE_DEFAULT_TTL', '15 minutes'],
    ['CONTEXT_CACHE_DEFAULT_TTL', '0'],
    ['CONTEXT_CACHE_DEFAULT_TTL', '-5s'],
    ['CONTEXT_CACHE_SHUTDOWN_GRACE', '1d'],
    ['CONTEXT_CACHE_SHUTDOWN_GRACE', '11m'],
  ] as const)('refuses the duration %s=%s', (variable, value) => {
    expectRefused(variable, value, {}, /duration|out of range/);
  });

  it.each([
    ['CONTEXT_CACHE_MAX_KEYS_PER_CALL', '0'],
    ['CONTEXT_CACHE_MAX_KEYS_PER_CALL', 'many'],
    ['CONTEXT_CACHE_MAX_KEYS_PER_CALL', '1.5'],
  ] as const)('refuses the count %s=%s', (variable, value) => {
    expectRefused(variable, value, {}, /whole number/);
  });

  it.each(['localhost', '127.0.0.1', ':50051', '127.0.0.1:99999', 'http://127.0.0.1:50051', 'unix:', '127.0.0.1:port', 'a b:1'])(
    'refuses the listen address %j',
    (address) => {
      expectRefused('CONTEXT_CACHE_LISTEN', address, {}, /not an address|names no socket path/);
      expectRefused('CONTEXT_CACHE_HEALTH_LISTEN', address, {}, /not an address|names no socket path/);
    },
  );

  it.each(['127.0.0.1:0', '0.0.0.0:50051', '[::1]:50051', 'localhost:7000', 'unix:/run/context-cache.sock'])('accepts the listen address %j', (address) => {
    expect(loadConfig({ CONTEXT_CACHE_LISTEN: address }).listen).toBe(address);
    expect(loadConfig({ CONTEXT_CACHE_HEALTH_LISTEN: address }).healthListen).toBe(address);
  });

  it.each(['has space', '-leading-dash', '.dot', 'a/b', 'x'.repeat(65), 'ünïcode'])('refuses the namespace %j', (namespace) => {
    expectRefused('CONTEXT_CACHE_NAMESPACE', namespace, {}, /is not allowed/);
  });

  it('accepts a namespace of 64 allowed characters', () => {
    const namespace = 'A9_.-' + 'x'.repeat(59);
    expect(loadConfig({ CONTEXT_CACHE_NAMESPACE: namespace }).namespace).toBe(namespace);
  });

  it.each(['verbose', 'INFO', 'warning', '0'])('refuses the log level %j', (level) => {
    expectRefused('CONTEXT_CACHE_LOG_LEVEL', level, {}, /is not a level; use one of fatal, error, warn, info, debug, trace, silent/);
  });

  it('refuses REDIS_URL and REDIS_HOST together', () => {
    const error = configError({ REDIS_URL: 'redis://a:6379', REDIS_HOST: 'b' });
    expect(error.variable).toBe('REDIS_URL');
    expect(error.message).toMatch(/REDIS_URL or REDIS_HOST/);
  });

  describe('Redis Cluster and Sentinel', () => {
    it('reads a Cluster from its seeds, with the shared credentials and TLS', () => {
      const redis = loadConfig({ REDIS_CLUSTER_NODES: 'redis-0.redis:6379, 10.0.0.2:7000,[::1]:7001', REDIS_PASSWORD: 'pw', REDIS_TLS: 'true' }).redis!;
      expect(redis.topology).toEqual({ kind: 'cluster', seeds: [{ host: 'redis-0.redis', port: 6379 }, { host: '10.0.0.2', port: 7000 }, { host: '::1', port: 7001 }] });
      expect(redis.password).toBe('pw');
      expect(redis.tls).toBe(true);
      expect(redis.describe).not.toContain('pw');
    });

    it('reads Sentinel mode with its own credentials', () => {
      const redis = loadConfig({ REDIS_SENTINELS: 's1:26379,s2:26379', REDIS_SENTINEL_MASTER_NAME: 'mymaster', REDIS_SENTINEL_PASSWORD: 'spw', REDIS_PASSWORD: 'pw', REDIS_DB: '2' }).redis!;
      expect(redis.topology).toEqual({ kind: 'sentinel', sentinels: [{ host: 's1', port: 26379 }, { host: 's2', port: 26379 }], masterName: 'mymaster', sentinelUsername: undefined, sentinelPassword: 'spw' });
      expect(redis.password).toBe('pw');
      expect(redis.db).toBe(2);
      expect(redis.describe).not.toMatch(/spw|pw\b/);
    });

    it.each([
      [{ REDIS_URL: 'redis://a:6379', REDIS_CLUSTER_NODES: 'b:7000' }, 'REDIS_URL', /REDIS_URL and REDIS_CLUSTER_NODES are both set/],
      [{ REDIS_HOST: 'a', REDIS_SENTINELS: 's:26379', REDIS_SENTINEL_MASTER_NAME: 'm' }, 'REDIS_HOST', /REDIS_HOST and REDIS_SENTINELS are both set/],
      [{ REDIS_CLUSTER_NODES: 'b:7000', REDIS_SENTINELS: 's:26379', REDIS_SENTINEL_MASTER_NAME: 'm' }, 'REDIS_CLUSTER_NODES', /REDIS_CLUSTER_NODES and REDIS_SENTINELS are both set/],
      [{ REDIS_SENTINELS: 's:26379' }, 'REDIS_SENTINEL_MASTER_NAME', /is required with REDIS_SENTINELS/],
      [{ REDIS_SENTINEL_MASTER_NAME: 'm' }, 'REDIS_SENTINEL_MASTER_NAME', /without REDIS_SENTINELS/],
      [{ REDIS_HOST: 'a', REDIS_SENTINEL_PASSWORD: 'x' }, 'REDIS_SENTINEL_PASSWORD', /without REDIS_SENTINELS/],
      [{ REDIS_CLUSTER_NODES: 'b:7000', REDIS_DB: '1' }, 'REDIS_DB', /a Redis Cluster has only database 0/],
      [{ REDIS_CLUSTER_NODES: 'b:7000,nope' }, 'REDIS_CLUSTER_NODES', /item 2 \("nope"\) is not host:port/],
      [{ REDIS_SENTINELS: 's:0', REDIS_SENTINEL_MASTER_NAME: 'm' }, 'REDIS_SENTINELS', /item 1 \("s:0"\) is not host:port/],
      [{ REDIS_SENTINELS: 's:26379', REDIS_SENTINEL_MASTER_NAME: 'my master' }, 'REDIS_SENTINEL_MASTER_NAME', /is not a master name/],
    ])('refuses %j, naming %s', (env, variable, message) => {
      const error = configError(env as Record<string, string>);
      expect(error.variable).toBe(variable);
      expect(error.message).toMatch(message);
    });
  });

  it('keeps the Redis database within 0 to 15 (the lock library only selects those)', () => {
    expect(configError({ REDIS_HOST: 'redis', REDIS_DB: '16' }).variable).toBe('REDIS_DB');
    const fromUrl = configError({ REDIS_URL: 'redis://redis:6379/16' });
    expect(fromUrl.variable).toBe('REDIS_URL');
    expect(fromUrl.message).toMatch(/0 to 15/);
    expect(loadConfig({ REDIS_URL: 'redis://redis:6379/15' }).redis?.db).toBe(15);
  });

  it('explains a Kubernetes service link in REDIS_PORT', () => {
    const error = configError({ REDIS_HOST: 'redis', REDIS_PORT: 'tcp://10.0.0.1:6379' });
    expect(error.variable).toBe('REDIS_PORT');
    expect(error.message).toMatch(/Kubernetes service link/);
    expect(error.message).toMatch(/enableServiceLinks: false/);
    expect(error.message).toContain('tcp://10.0.0.1:6379');
  });

  it.each([
    ['REDIS_URL', 'not a url', {}],
    ['REDIS_URL', 'http://redis:6379', {}],
    ['REDIS_URL', 'redis://redis:6379/zero', {}],
    ['REDIS_PORT', '70000', { REDIS_HOST: 'redis' }],
    ['REDIS_PORT', 'six', { REDIS_HOST: 'redis' }],
    ['REDIS_TLS', 'yes', { REDIS_HOST: 'redis' }],
    ['REDIS_DB', '-1', { REDIS_HOST: 'redis' }],
  ] as const)('refuses %s=%j', (variable, value, extra) => {
    expectRefused(variable, value, extra);
  });

  it('refuses a message limit that a maximal value would not fit in', () => {
    const error = configError({ CONTEXT_CACHE_MAX_VALUE_BYTES: '1MiB', CONTEXT_CACHE_MAX_MESSAGE_BYTES: '1MiB' });
    expect(error.variable).toBe('CONTEXT_CACHE_MAX_MESSAGE_BYTES');
    expect(error.message).toContain('CONTEXT_CACHE_MAX_VALUE_BYTES');
  });

  it('raises the default message limit with a large value limit', () => {
    const config = loadConfig({ CONTEXT_CACHE_MAX_VALUE_BYTES: '32MiB' });
    expect(config.maxMessageBytes).toBeGreaterThan(32 * MiB);
  });

  it('has the documented defaults', () => {
    const config = loadConfig({});
    expect(config).toMatchObject({
      listen: '127.0.0.1:50051',
      healthListen: undefined,
      namespace: 'default',
      l1MaxBytes: 256 * MiB,
      defaultTtlMs: 900_000,
      maxKeyBytes: 1024,
      maxValueBytes: 8 * MiB,
      maxKeysPerCall: 1000,
      maxTagsPerEntry: 32,
      maxMessageBytes: 16 * MiB,
      shutdownGraceMs: 10_000,
      logLevel: 'info',
      redis: undefined,
    } satisfies Partial<Config>);
    expect(Object.isFrozen(config)).toBe(true);
  });

  it('gives the same configuration for every documented default written out as for the variable unset', () => {
    const unset = loadConfig({});
    const documented = Object.entries(CONFIG_VARIABLES).filter(([name, { default: value }]) => !value.startsWith('(') && !name.startsWith('REDIS_'));
    expect(documented.length).toBeGreaterThan(5);
    for (const [name, { default: value }] of documented) {
      expect(loadConfig({ [name]: value }), `${name}=${value}`).toEqual(unset);
    }
  });

  it('has the documented Redis defaults', () => {
    const redis = loadConfig({ REDIS_HOST: 'redis.internal' }).redis;
    expect(redis).toMatchObject({ host: 'redis.internal', port: 6379, db: 0, tls: false, username: undefined, password: undefined });
    expect(redis).toEqual(
      loadConfig({ REDIS_HOST: 'redis.internal', REDIS_PORT: CONFIG_VARIABLES.REDIS_PORT.default, REDIS_DB: CONFIG_VARIABLES.REDIS_DB.default, REDIS_TLS: CONFIG_VARIABLES.REDIS_TLS.default }).redis,
    );
  });

  it('parses a REDIS_URL and never puts the password in its description', () => {
    const redis = loadConfig({ REDIS_URL: 'rediss://app:s3cr%40t@cache.example:6380/3' }).redis!;
    expect(redis).toMatchObject({ host: 'cache.example', port: 6380, username: 'app', password: 's3cr@t', db: 3, tls: true });
    expect(redis.describe).not.toContain('s3cr');
  });

  it('parses sizes and durations with units', () => {
    const config = loadConfig({ CONTEXT_CACHE_L1_MAX_BYTES: '1.5GiB', CONTEXT_CACHE_DEFAULT_TTL: '15m', CONTEXT_CACHE_SHUTDOWN_GRACE: '250ms', CONTEXT_CACHE_MAX_VALUE_BYTES: '512kb' });
    expect(config.l1MaxBytes).toBe(1.5 * 1024 * MiB);
    expect(config.defaultTtlMs).toBe(15 * 60_000);
    expect(config.shutdownGraceMs).toBe(250);
    expect(config.maxValueBytes).toBe(512_000);
    expect(loadConfig({ CONTEXT_CACHE_DEFAULT_TTL: '90' }).defaultTtlMs).toBe(90_000);
  });

  it('treats an empty or blank variable as unset', () => {
    expect(loadConfig({ CONTEXT_CACHE_L1_MAX_BYTES: '', CONTEXT_CACHE_NAMESPACE: '  ', REDIS_HOST: '' })).toEqual(loadConfig({}));
  });

  it('reads only the variables it documents', () => {
    const read = new Set<string>();
    const env = new Proxy({ REDIS_HOST: 'redis', REDIS_URL: undefined } as Record<string, string | undefined>, {
      get(target, name) {
        if (typeof name === 'string') read.add(name);
        return target[name as string];
      },
    });
    loadConfig(env);
    expect(read.size).toBeGreaterThan(10);
    const undocumented = [...read].filter((name) => !(name in CONFIG_VARIABLES));
    expect(undocumented).toEqual([]);
  });
});
