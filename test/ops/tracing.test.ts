/**
 * OpenTelemetry tracing against a real OTLP receiver started here
 * (test/helpers/otlp.ts decodes the export requests itself): span names,
 * kinds, attributes and parents as a collector sees them, over OTLP/HTTP
 * (protobuf and JSON) and OTLP/gRPC; the caller's W3C traceparent continued;
 * no key or value on a span unless CONTEXT_CACHE_TRACE_KEYS asks for keys;
 * and with tracing off, nothing of OpenTelemetry loaded at all.
 */
import { InterceptingCall, type Interceptor } from '@grpc/grpc-js';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ContextCacheClient } from '../../src/client';
import { ConfigError, loadConfig } from '../../src/config';
import { createLogger } from '../../src/log';
import { Sidecar } from '../../src/sidecar';
import { VERSION } from '../../src/version';
import { captureLogs } from '../helpers/logs';
import { startOtlpReceiver, type OtlpReceiver, type ReceivedSpan } from '../helpers/otlp';
import { spawnSidecar } from '../helpers/process';
import { freePort, startRedis, type TestRedis } from '../helpers/redis';
import { closeAllSidecars, startSidecar, type TestSidecar } from '../helpers/sidecar';
import { rejectionOf, waitFor } from '../helpers/wait';

const SERVER = 2;
const CLIENT = 3;
const INTERNAL = 1;

/** Sends `traceparent` (when set) on every call of the client, as an instrumented app would. */
function tracingClient(address: string): { client: ContextCacheClient; parent: { value: string | undefined } } {
  const parent = { value: undefined as string | undefined };
  const interceptor: Interceptor = (options, next) =>
    new InterceptingCall(next(options), {
      start(metadata, listener, proceed) {
        if (parent.value !== undefined) metadata.set('traceparent', parent.value);
        proceed(metadata, listener);
      },
    });
  return { client: new ContextCacheClient(address, { interceptors: [interceptor] }), parent };
}

const newTraceId = () => randomBytes(16).toString('hex');
const newSpanId = () => randomBytes(8).toString('hex');

function childrenOf(receiver: OtlpReceiver, span: ReceivedSpan): ReceivedSpan[] {
  return receiver.spans().filter((s) => s.traceId === span.traceId && s.parentSpanId === span.spanId);
}

describe('tracing configuration (the standard OTEL_* variables)', () => {
  it('is off by default, and with OTEL_SDK_DISABLED or OTEL_TRACES_EXPORTER=none whatever else is set', () => {
    expect(loadConfig({}).tracing).toBeUndefined();
    expect(loadConfig({ OTEL_EXPORTER_OTLP_ENDPOINT: 'http://collector:4318', OTEL_SDK_DISABLED: 'true' }).tracing).toBeUndefined();
    expect(loadConfig({ OTEL_EXPORTER_OTLP_ENDPOINT: 'http://collector:4318', OTEL_TRACES_EXPORTER: 'none' }).tracing).toBeUndefined();
  });

  it('is on with an endpoint or OTEL_TRACES_EXPORTER=otlp, with the specification defaults', () => {
    expect(loadConfig({ OTEL_EXPORTER_OTLP_ENDPOINT: 'http://collector:4318/' }).tracing).toMatchObject({ protocol: 'http/protobuf', endpoint: 'http://collector:4318/v1/traces', sampler: 'parentbased_always_on', samplerRatio: 1, timeoutMs: 10_000, serviceName: 'context-cache', traceKeys: false });
    expect(loadConfig({ OTEL_TRACES_EXPORTER: 'otlp' }).tracing?.endpoint).toBe('http://localhost:4318/v1/traces');
    expect(loadConfig({ OTEL_TRACES_EXPORTER: 'otlp', OTEL_EXPORTER_OTLP_PROTOCOL: 'grpc' }).tracing?.endpoint).toBe('http://localhost:4317/');
    const specific = loadConfig({
      OTEL_EXPORTER_OTLP_ENDPOINT: 'http://collector:4318',
      OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: 'https://traces.example.com/custom/path',
      OTEL_EXPORTER_OTLP_PROTOCOL: 'grpc',
      OTEL_EXPORTER_OTLP_TRACES_PROTOCOL: 'http/json',
      OTEL_EXPORTER_OTLP_TIMEOUT: '2000',
      OTEL_EXPORTER_OTLP_TRACES_TIMEOUT: '3000',
      OTEL_EXPORTER_OTLP_HEADERS: 'x-api-key=general,x-team=a%20b',
      OTEL_EXPORTER_OTLP_TRACES_HEADERS: 'x-api-key=traces',
      OTEL_TRACES_SAMPLER: 'traceidratio',
      OTEL_TRACES_SAMPLER_ARG: '0.25',
      OTEL_RESOURCE_ATTRIBUTES: 'service.name=from-resource,k8s.pod.name=chat-app-7d9',
    }).tracing!;
    expect(specific).toMatchObject({ endpoint: 'https://traces.example.com/custom/path', protocol: 'http/json', timeoutMs: 3000, sampler: 'traceidratio', samplerRatio: 0.25, serviceName: 'from-resource' });
    expect(specific.headers).toEqual({ 'x-api-key': 'traces', 'x-team': 'a b' });
    expect(specific.resourceAttributes).toEqual({ 'service.name': 'from-resource', 'k8s.pod.name': 'chat-app-7d9' });
    // The headers often hold a collector's API key: not enumerable, so a logged configuration never shows them.
    expect(JSON.stringify(specific)).not.toContain('traces"');
    expect(Object.keys(specific)).not.toContain('headers');
    expect(loadConfig({ OTEL_TRACES_EXPORTER: 'otlp', OTEL_SERVICE_NAME: 'cache-a', OTEL_RESOURCE_ATTRIBUTES: 'service.name=other' }).tracing?.serviceName).toBe('cache-a');
  });

  it.each([
    ['OTEL_TRACES_EXPORTER', { OTEL_TRACES_EXPORTER: 'zipkin' }],
    ['OTEL_SDK_DISABLED', { OTEL_SDK_DISABLED: 'yes' }],
    ['OTEL_EXPORTER_OTLP_ENDPOINT', { OTEL_EXPORTER_OTLP_ENDPOINT: 'collector:4318' }],
    ['OTEL_EXPORTER_OTLP_TRACES_ENDPOINT', { OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: 'ftp://collector/v1/traces' }],
    ['OTEL_EXPORTER_OTLP_PROTOCOL', { OTEL_TRACES_EXPORTER: 'otlp', OTEL_EXPORTER_OTLP_PROTOCOL: 'thrift' }],
    ['OTEL_EXPORTER_OTLP_TRACES_PROTOCOL', { OTEL_TRACES_EXPORTER: 'otlp', OTEL_EXPORTER_OTLP_TRACES_PROTOCOL: 'http' }],
    ['OTEL_EXPORTER_OTLP_HEADERS', { OTEL_TRACES_EXPORTER: 'otlp', OTEL_EXPORTER_OTLP_HEADERS: 'novalue' }],
    ['OTEL_EXPORTER_OTLP_TRACES_HEADERS', { OTEL_TRACES_EXPORTER: 'otlp', OTEL_EXPORTER_OTLP_TRACES_HEADERS: 'k=%zz' }],
    ['OTEL_EXPORTER_OTLP_TIMEOUT', { OTEL_TRACES_EXPORTER: 'otlp', OTEL_EXPORTER_OTLP_TIMEOUT: '10s' }],
    ['OTEL_EXPORTER_OTLP_TRACES_TIMEOUT', { OTEL_TRACES_EXPORTER: 'otlp', OTEL_EXPORTER_OTLP_TRACES_TIMEOUT: '0' }],
    ['OTEL_EXPORTER_OTLP_CERTIFICATE', { OTEL_TRACES_EXPORTER: 'otlp', OTEL_EXPORTER_OTLP_CERTIFICATE: '/nonexistent/ca.pem' }],
    ['OTEL_TRACES_SAMPLER', { OTEL_TRACES_EXPORTER: 'otlp', OTEL_TRACES_SAMPLER: 'sometimes' }],
    ['OTEL_TRACES_SAMPLER_ARG', { OTEL_TRACES_EXPORTER: 'otlp', OTEL_TRACES_SAMPLER_ARG: '1.5' }],
    ['OTEL_RESOURCE_ATTRIBUTES', { OTEL_TRACES_EXPORTER: 'otlp', OTEL_RESOURCE_ATTRIBUTES: '=x' }],
    ['CONTEXT_CACHE_TRACE_KEYS', { OTEL_TRACES_EXPORTER: 'otlp', CONTEXT_CACHE_TRACE_KEYS: 'yes' }],
  ])('stops start-up naming %s when it is invalid', (variable, env) => {
    let error: unknown;
    try {
      loadConfig(env);
    } catch (caught) {
      error = caught;
    }
    expect(error).toBeInstanceOf(ConfigError);
    expect((error as ConfigError).variable).toBe(variable);
  });
});

describe('spans of a sidecar on Redis, over OTLP/HTTP protobuf', () => {
  let receiver: OtlpReceiver;
  let redis: TestRedis;
  let traced: TestSidecar;
  let client: ContextCacheClient;
  let parent: { value: string | undefined };

  beforeAll(async () => {
    receiver = await startOtlpReceiver();
    redis = await startRedis();
    traced = await startSidecar({
      REDIS_URL: redis.url,
      CONTEXT_CACHE_NAMESPACE: 'traced',
      OTEL_EXPORTER_OTLP_ENDPOINT: receiver.httpEndpoint,
      OTEL_EXPORTER_OTLP_HEADERS: 'x-api-key=secret-for-the-collector',
      OTEL_RESOURCE_ATTRIBUTES: 'k8s.pod.name=chat-app-7d9,deployment.environment.name=test',
    });
    await waitFor(() => traced.sidecar.tiers.mode === 'coherent', 'the traced sidecar to subscribe');
    ({ client, parent } = tracingClient(traced.address));
  });
  afterAll(async () => {
    client?.close();
    await closeAllSidecars();
    await redis?.stop();
    await receiver?.close();
  });

  /** Makes one call under a fresh sampled traceparent; resolves with the call's server span as the receiver got it. */
  async function tracedCall(method: string, call: () => Promise<unknown>): Promise<{ span: ReceivedSpan; traceId: string; parentId: string }> {
    const traceId = newTraceId();
    const parentId = newSpanId();
    parent.value = `00-${traceId}-${parentId}-01`;
    try {
      await call();
    } finally {
      parent.value = undefined;
    }
    await traced.sidecar.flushTraces();
    const span = await receiver.waitForSpan((s) => s.traceId === traceId && s.name === `contextcache.v1.ContextCache/${method}`, `the ${method} span of trace ${traceId}`);
    return { span, traceId, parentId };
  }

  it('continues the caller\'s traceparent: a SERVER span per RPC with method, status, tier, hit and key count, never the key or value', async () => {
    await client.set({ key: 'user:42:profile', value: Buffer.from('the-secret-value'), tags: ['profile'] });
    const { span, parentId } = await tracedCall('Get', () => client.get({ key: 'user:42:profile' }));
    expect(span.parentSpanId).toBe(parentId);
    expect(span.kind).toBe(SERVER);
    expect(span.scope).toBe('context-cache');
    expect(span.attributes).toMatchObject({
      'rpc.system': 'grpc',
      'rpc.service': 'contextcache.v1.ContextCache',
      'rpc.method': 'Get',
      'rpc.grpc.status_code': 0,
      'context_cache.hit': true,
      'context_cache.tier': 'l1',
      'context_cache.key_count': 1,
    });
    expect(span.status.code).toBe(0);
    const everything = JSON.stringify(receiver.spans());
    expect(everything).not.toContain('user:42:profile');
    expect(everything).not.toContain('the-secret-value');
    expect(everything).not.toContain('profile"');
    // The exporter sent OTEL_EXPORTER_OTLP_HEADERS with every request.
    expect(receiver.requests.every((request) => request.transport === 'http/protobuf' && request.headers['x-api-key'] === 'secret-for-the-collector')).toBe(true);
  });

  it('names the sidecar in the resource: service name, version, instance (the sidecar ID), namespace, and OTEL_RESOURCE_ATTRIBUTES', async () => {
    const { span } = await tracedCall('GetStats', () => client.getStats());
    expect(span.resource).toMatchObject({
      'service.name': 'context-cache',
      'service.version': VERSION,
      'service.instance.id': traced.sidecar.sidecarId,
      'context_cache.namespace': 'traced',
      'k8s.pod.name': 'chat-app-7d9',
      'deployment.environment.name': 'test',
      'telemetry.sdk.language': 'nodejs',
      'process.pid': process.pid,
    });
  });

  it('has a CLIENT child span per Redis round trip, and says the tier is L2 when Redis answered', async () => {
    await client.set({ key: 'l2-only', value: Buffer.from('v') });
    traced.sidecar.l1.clear();
    const { span } = await tracedCall('Get', () => client.get({ key: 'l2-only' }));
    expect(span.attributes).toMatchObject({ 'context_cache.hit': true, 'context_cache.tier': 'l2' });
    const redisSpans = childrenOf(receiver, span);
    expect(redisSpans.map((s) => s.name)).toContain('redis ccEntryRead');
    const read = redisSpans.find((s) => s.name === 'redis ccEntryRead')!;
    expect(read.kind).toBe(CLIENT);
    expect(read.attributes).toMatchObject({ 'db.system.name': 'redis', 'db.operation.name': 'ccEntryRead', 'db.operation.batch.size': 1, 'context_cache.redis.link': 'commands' });

    const miss = await tracedCall('GetMany', () => client.getMany({ keys: ['l2-only', 'absent-1', 'absent-2'] }));
    expect(miss.span.attributes).toMatchObject({ 'context_cache.key_count': 3, 'context_cache.hits': 1, 'context_cache.hit': true, 'context_cache.tier': 'l1' });
    const write = await tracedCall('Set', () => client.set({ key: 'written', value: Buffer.from('v'), tags: ['a', 'b'] }));
    expect(write.span.attributes).toMatchObject({ 'context_cache.tag_count': 2 });
    expect(childrenOf(receiver, write.span).map((s) => s.name)).toContain('redis ccEntrySet');
  });

  it('marks a failed call with its status code; only server faults are span errors', async () => {
    const invalid = await tracedCall('Get', () => rejectionOf(client.get({ key: '' })));
    expect(invalid.span.attributes['rpc.grpc.status_code']).toBe(3);
    expect(invalid.span.status.code).toBe(0);
    const unavailable = await tracedCall('Get', async () => {
      await redis.pause();
      try {
        await client.get({ key: 'while-paused' });
      } finally {
        await redis.resume();
      }
    });
    // Redis hung: the round trip timed out (an error span), the Get answered from L1 (a miss, OK).
    const failed = childrenOf(receiver, unavailable.span).find((s) => s.name === 'redis ccEntryRead');
    expect(failed?.status.code).toBe(2);
    expect(failed?.attributes).toMatchObject({ 'error.type': 'Error', 'context_cache.redis.failed_calls': 1 });
    expect(failed?.status.message).toMatch(/timed out/i);
    expect(unavailable.span.attributes['rpc.grpc.status_code']).toBe(0);
    await waitFor(() => traced.sidecar.tiers.mode === 'coherent', 'the sidecar to be coherent again');
  });

  it('shows a wait for another caller\'s fill as a child span, with its outcome', async () => {
    const other = new ContextCacheClient(traced.address);
    try {
      const first = await other.get({ key: 'stampede', leaseOnMiss: true, leaseTtl: { seconds: 10 } });
      expect(first.lease?.token).toBeTruthy();
      const waited = tracedCall('Get', () => client.get({ key: 'stampede', leaseOnMiss: true, leaseWait: { seconds: 5 } }));
      await waitFor(() => traced.sidecar.tiers.leases.counters.waits > 0, 'the second caller to wait');
      await other.set({ key: 'stampede', value: Buffer.from('filled'), leaseToken: first.lease!.token });
      const { span } = await waited;
      expect(span.attributes).toMatchObject({ 'context_cache.hit': true, 'context_cache.lease': 'waited' });
      const wait = childrenOf(receiver, span).find((s) => s.name === 'lease wait');
      expect(wait?.kind).toBe(INTERNAL);
      expect(wait?.attributes).toMatchObject({ 'context_cache.subject.kind': 'entry', 'context_cache.lease.outcome': 'filled' });
    } finally {
      other.close();
    }
  });

  it('follows the caller\'s sampling decision: a call whose traceparent is not sampled leaves no span', async () => {
    const unsampled = newTraceId();
    parent.value = `00-${unsampled}-${newSpanId()}-00`;
    await client.get({ key: 'user:42:profile' });
    parent.value = undefined;
    // A sampled call after it: once its span has arrived, the unsampled one would have too.
    await tracedCall('Get', () => client.get({ key: 'user:42:profile' }));
    expect(receiver.spans().filter((s) => s.traceId === unsampled)).toEqual([]);
  });

  it('starts a new trace for a call without traceparent, and traces session RPCs and Watch streams', async () => {
    const before = receiver.spans().length;
    await client.putSessionNodes({ sessionId: 'chat-9', nodes: [{ id: 'a', role: 1, content: 'hello' }, { id: 'b', parentId: 'a', role: 2, content: 'hi' }] });
    await client.buildContext({ sessionId: 'chat-9', headNodeId: 'b' });
    const stream = client.watch({ keyPrefixes: ['w'] });
    const iterator = stream[Symbol.asyncIterator]();
    await iterator.next();
    stream.cancel();
    await rejectionOf(iterator.next());
    await waitFor(async () => {
      await traced.sidecar.flushTraces();
      return receiver.spans().some((s) => s.name === 'contextcache.v1.ContextCache/Watch');
    }, 'the Watch span');
    const spans = receiver.spans().slice(before);
    const put = spans.find((s) => s.name === 'contextcache.v1.ContextCache/PutSessionNodes')!;
    expect(put.parentSpanId).toBe('');
    expect(put.attributes['context_cache.node_count']).toBe(2);
    const built = spans.find((s) => s.name === 'contextcache.v1.ContextCache/BuildContext')!;
    expect(built.attributes).toMatchObject({ 'context_cache.hit': true, 'context_cache.tier': 'l1', 'context_cache.node_count': 2 });
    expect(JSON.stringify(spans)).not.toContain('chat-9');
    const watch = spans.find((s) => s.name === 'contextcache.v1.ContextCache/Watch')!;
    expect(watch.attributes['rpc.grpc.status_code']).toBe(1);
  });
});

describe('other transports and settings', () => {
  let receiver: OtlpReceiver;
  beforeAll(async () => {
    receiver = await startOtlpReceiver();
  });
  afterAll(async () => {
    await closeAllSidecars();
    await receiver?.close();
  });

  it.each([
    ['http/json', () => receiver.httpEndpoint],
    ['grpc', () => receiver.grpcEndpoint],
  ] as const)('exports over OTLP %s, with the headers', async (protocol, endpoint) => {
    const sidecar = await startSidecar({ OTEL_EXPORTER_OTLP_ENDPOINT: endpoint(), OTEL_EXPORTER_OTLP_PROTOCOL: protocol, OTEL_EXPORTER_OTLP_HEADERS: `x-api-key=${protocol}`, OTEL_SERVICE_NAME: `cache-${protocol}` });
    const { client, parent } = tracingClient(sidecar.address);
    const traceId = newTraceId();
    parent.value = `00-${traceId}-${newSpanId()}-01`;
    await client.set({ key: 'k', value: Buffer.from('v') });
    client.close();
    await sidecar.close();
    const span = await receiver.waitForSpan((s) => s.traceId === traceId, `the ${protocol} span`);
    expect(span).toMatchObject({ name: 'contextcache.v1.ContextCache/Set', kind: SERVER, resource: { 'service.name': `cache-${protocol}` } });
    expect(receiver.requests.find((request) => request.spans.includes(span))).toMatchObject({ transport: protocol, headers: { 'x-api-key': protocol } });
  });

  it('puts keys, session IDs and lock resources on spans only with CONTEXT_CACHE_TRACE_KEYS=true, values never', async () => {
    const sidecar = await startSidecar({ OTEL_EXPORTER_OTLP_ENDPOINT: receiver.httpEndpoint, OTEL_SERVICE_NAME: 'with-keys', CONTEXT_CACHE_TRACE_KEYS: 'true' });
    await sidecar.client.set({ key: 'visible-key', value: Buffer.from('invisible-value') });
    await sidecar.client.getMany({ keys: Array.from({ length: 40 }, (_, i) => `many-${i}`) });
    await sidecar.client.appendNode({ node: { id: 'n1', sessionId: 'visible-session', role: 1, content: 'invisible-content' } });
    await sidecar.sidecar.flushTraces();
    const mine = () => receiver.spans().filter((s) => s.resource['service.name'] === 'with-keys');
    await waitFor(() => mine().length >= 3, 'three spans with keys');
    expect(mine().find((s) => s.attributes['rpc.method'] === 'Set')?.attributes['context_cache.keys']).toEqual(['visible-key']);
    expect(mine().find((s) => s.attributes['rpc.method'] === 'GetMany')?.attributes['context_cache.keys']).toHaveLength(16);
    expect(mine().find((s) => s.attributes['rpc.method'] === 'AppendNode')?.attributes['context_cache.session_id']).toBe('visible-session');
    expect(JSON.stringify(mine())).not.toMatch(/invisible/);
  });

  it('keeps serving when the collector is unreachable, and says so once in the log', async () => {
    const logs = captureLogs();
    const config = loadConfig({ CONTEXT_CACHE_LISTEN: '127.0.0.1:0', CONTEXT_CACHE_ADMIN_LISTEN: 'off', OTEL_EXPORTER_OTLP_ENDPOINT: `http://127.0.0.1:${await freePort()}`, OTEL_EXPORTER_OTLP_TIMEOUT: '500' });
    const sidecar = await Sidecar.start(config, createLogger('info', logs.stream));
    const client = new ContextCacheClient(sidecar.listenAddress);
    try {
      for (let round = 0; round < 3; round++) {
        for (let i = 0; i < 5; i++) await client.set({ key: `k${i}`, value: Buffer.from('v') });
        await sidecar.flushTraces();
      }
      expect((await client.get({ key: 'k4' })).found).toBe(true);
      expect(logs.lines.filter((line) => String(line.msg).startsWith('exporting spans failed'))).toHaveLength(1);
    } finally {
      client.close();
      await sidecar.close();
    }
  });
});

describe('with tracing off', () => {
  it('loads nothing of OpenTelemetry, as deployed (a sidecar process; the probe is shown to see it when tracing is on)', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'otel-probe-'));
    const probe = join(__dirname, '..', 'helpers', 'module-probe.cjs');
    try {
      const run = async (extra: Record<string, string>, name: string) => {
        const port = await freePort();
        const out = join(dir, `${name}.json`);
        const child = spawnSidecar({ CONTEXT_CACHE_LISTEN: `127.0.0.1:${port}`, NODE_OPTIONS: `--require ${probe}`, MODULE_PROBE_OUT: out, MODULE_PROBE_MATCH: '@opentelemetry', ...extra });
        try {
          await child.waitUntilServing(`127.0.0.1:${port}`);
          const client = new ContextCacheClient(`127.0.0.1:${port}`);
          await client.set({ key: 'k', value: Buffer.from('v') });
          await client.get({ key: 'k' });
          client.close();
          child.child.kill('SIGTERM');
          expect((await child.exited).code).toBe(0);
        } finally {
          await child.stop();
        }
        return JSON.parse(readFileSync(out, 'utf8')) as string[];
      };
      // prom-client requires @opentelemetry/api (a no-op without an SDK) for exemplars, as it did before tracing existed.
      const sdk = (modules: string[]) => modules.filter((module) => !module.includes('/@opentelemetry/api/'));
      const off = await run({}, 'off');
      expect(sdk(off)).toEqual([]);
      const receiver = await startOtlpReceiver();
      try {
        const on = await run({ OTEL_EXPORTER_OTLP_ENDPOINT: receiver.httpEndpoint }, 'on');
        expect(sdk(on).some((module) => module.includes('/@opentelemetry/sdk-trace/'))).toBe(true);
        // SIGTERM flushed the spans of the calls before the exit.
        await receiver.waitForSpan((s) => s.name === 'contextcache.v1.ContextCache/Get', 'the Get span sent at shutdown', 2000);
      } finally {
        await receiver.close();
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
