import type { Metadata, ServerUnaryCall, ServerWritableStream, ServiceError } from '@grpc/grpc-js';
import type { AttributeValue, Context, Span, TextMapGetter } from '@opentelemetry/api';
import type { ReadableSpan, Sampler, SpanExporter } from '@opentelemetry/sdk-trace';
import type { TraceAttributes, TracedWork, WorkTracer } from '../cache/ports';
import type { TracingConfig } from '../config';
import type { Logger } from '../log';
import type { CallTracer, TracedCall } from '../server/calls';

/**
 * OpenTelemetry tracing of the sidecar: a SERVER span per RPC (continuing
 * the caller's W3C `traceparent` from the call's metadata), and as its
 * children a CLIENT span per Redis round trip and a span per wait for
 * another caller's fill. Configured by the standard OTEL_* variables
 * (config.ts parses them; every value is handed to the SDK explicitly).
 *
 * Nothing of OpenTelemetry is loaded unless tracing is configured: the
 * imports below are types only, and `startTracing` loads the SDK. With
 * tracing off the call path asks one `undefined` hook and nothing else.
 *
 * Spans never carry values. Keys, session IDs and lock resources only with
 * CONTEXT_CACHE_TRACE_KEYS=true; otherwise counts, tiers and outcomes.
 *
 * Nothing is registered globally (no global tracer provider, context
 * manager or propagator): several sidecars in one process (the tests) each
 * keep their own.
 */
export interface Tracing {
  readonly calls: CallTracer;
  /** For the Redis links and the lease manager. */
  readonly work: WorkTracer;
  /** Exports every span ended so far; resolves when the export is done, whether or not it succeeded. */
  flush(): Promise<void>;
  /** Exports what is left and stops; idempotent. */
  close(): Promise<void>;
}

/** Who is tracing: the resource attributes that identify this sidecar. */
export interface TracingIdentity {
  sidecarId: string;
  namespace: string;
  version: string;
}

const SERVICE = 'contextcache.v1.ContextCache';
/** Keys (or session IDs, tags) put on one span at most, with CONTEXT_CACHE_TRACE_KEYS. */
const MAX_TRACED_KEYS = 16;
/** Spans waiting for export; past it new spans are dropped (the SDK counts them), never memory without bound. */
const MAX_QUEUED_SPANS = 2048;
const EXPORT_BATCH = 512;
const EXPORT_DELAY_MS = 1000;
/**
 * The gRPC status codes that make a server span an error (OpenTelemetry's
 * RPC conventions): the others (NOT_FOUND, ABORTED, INVALID_ARGUMENT, …)
 * are answers the caller asked for.
 */
const SERVER_ERROR_CODES = new Set([2, 4, 12, 13, 14, 15]);

const metadataGetter: TextMapGetter<Metadata> = {
  keys: (metadata) => Object.keys(metadata.getMap()),
  get: (metadata, key) => {
    const values = metadata.get(key);
    return values.length === 0 ? undefined : values.map(String);
  },
};

type Request = Record<string, unknown>;

/** What a request says that a trace may show: counts, and with `traceKeys` the keys themselves (at most MAX_TRACED_KEYS). */
export function requestAttributes(request: unknown, traceKeys: boolean): Record<string, AttributeValue> {
  const attributes: Record<string, AttributeValue> = {};
  if (typeof request !== 'object' || request === null) return attributes;
  const r = request as Request;
  const some = (values: unknown[]) => values.slice(0, MAX_TRACED_KEYS).map(String);
  if (typeof r.key === 'string') {
    attributes['context_cache.key_count'] = 1;
    if (traceKeys) attributes['context_cache.keys'] = [r.key];
  }
  if (Array.isArray(r.keys)) {
    attributes['context_cache.key_count'] = r.keys.length;
    if (traceKeys) attributes['context_cache.keys'] = some(r.keys);
  }
  if (Array.isArray(r.tags) && r.tags.length > 0) {
    attributes['context_cache.tag_count'] = r.tags.length;
    if (traceKeys) attributes['context_cache.tags'] = some(r.tags);
  }
  if (Array.isArray(r.shortIds)) {
    attributes['context_cache.short_id_count'] = r.shortIds.length;
    if (traceKeys) attributes['context_cache.short_ids'] = some(r.shortIds);
  }
  if (Array.isArray(r.nodes)) attributes['context_cache.node_count'] = r.nodes.length;
  const node = typeof r.node === 'object' && r.node !== null ? (r.node as Request) : undefined;
  const sessionId = typeof r.sessionId === 'string' && r.sessionId !== '' ? r.sessionId : typeof node?.sessionId === 'string' ? node.sessionId : undefined;
  if (traceKeys && sessionId !== undefined) attributes['context_cache.session_id'] = sessionId;
  if (traceKeys && typeof r.resource === 'string') attributes['context_cache.lock.resource'] = r.resource;
  return attributes;
}

function errorOf(error: unknown): { type: string; message: string } {
  const type = error instanceof Error ? error.name : typeof error;
  // Redis errors name the command or the fault, never our keys; kept short anyway.
  const message = error instanceof Error ? error.message.slice(0, 256) : String(error).slice(0, 256);
  return { type, message };
}

/**
 * Reports failed exports once per change (the collector is down; it is
 * back), not once per batch. Exports are never retried beyond the SDK's
 * own: a tracing outage costs spans, never the sidecar's memory.
 */
function reportingExports(exporter: SpanExporter, endpoint: string, log: Logger): SpanExporter {
  let failing = false;
  return {
    export(spans: ReadableSpan[], done) {
      exporter.export(spans, (result) => {
        const failed = result.code !== 0;
        if (failed && !failing) log.warn({ endpoint, err: result.error?.message, spans: spans.length }, 'exporting spans failed; dropping them and trying again with the next batch');
        if (!failed && failing) log.info({ endpoint }, 'exporting spans works again');
        failing = failed;
        done(result);
      });
    },
    shutdown: () => exporter.shutdown(),
    forceFlush: () => exporter.forceFlush?.() ?? Promise.resolve(),
  };
}

async function createExporter(config: TracingConfig): Promise<SpanExporter> {
  const headers = { ...config.headers };
  switch (config.protocol) {
    case 'http/protobuf': {
      const { OTLPTraceExporter } = await import('@opentelemetry/exporter-trace-otlp-proto');
      return new OTLPTraceExporter({ url: config.endpoint, headers, timeoutMillis: config.timeoutMs, ...(config.certificate ? { httpAgentOptions: { ca: config.certificate } } : {}) });
    }
    case 'http/json': {
      const { OTLPTraceExporter } = await import('@opentelemetry/exporter-trace-otlp-http');
      return new OTLPTraceExporter({ url: config.endpoint, headers, timeoutMillis: config.timeoutMs, ...(config.certificate ? { httpAgentOptions: { ca: config.certificate } } : {}) });
    }
    case 'grpc': {
      const [grpc, { OTLPTraceExporter }] = await Promise.all([import('@grpc/grpc-js'), import('@opentelemetry/exporter-trace-otlp-grpc')]);
      const metadata = new grpc.Metadata();
      for (const [key, value] of Object.entries(headers)) metadata.set(key, value);
      const credentials = config.endpoint.startsWith('https:') ? grpc.credentials.createSsl(config.certificate) : grpc.credentials.createInsecure();
      return new OTLPTraceExporter({ url: config.endpoint, metadata, timeoutMillis: config.timeoutMs, credentials });
    }
  }
}

/** Loads the SDK and starts exporting; the exporter connects lazily, so an absent collector does not delay start-up. */
export async function startTracing(config: TracingConfig, identity: TracingIdentity, log: Logger): Promise<Tracing> {
  const [api, core, sdk, resources, { AsyncLocalStorageContextManager }, exporter] = await Promise.all([
    import('@opentelemetry/api'),
    import('@opentelemetry/core'),
    import('@opentelemetry/sdk-trace'),
    import('@opentelemetry/resources'),
    import('@opentelemetry/context-async-hooks'),
    createExporter(config),
  ]);
  const { SpanKind, SpanStatusCode, trace, ROOT_CONTEXT } = api;
  const contextManager = new AsyncLocalStorageContextManager().enable();
  const propagator = new core.W3CTraceContextPropagator();

  const roots: Record<'always_on' | 'always_off' | 'traceidratio', () => Sampler> = {
    always_on: () => new sdk.AlwaysOnSampler(),
    always_off: () => new sdk.AlwaysOffSampler(),
    traceidratio: () => new sdk.TraceIdRatioBasedSampler(config.samplerRatio),
  };
  const sampler = config.sampler.startsWith('parentbased_')
    ? new sdk.ParentBasedSampler({ root: roots[config.sampler.slice('parentbased_'.length) as keyof typeof roots]() })
    : roots[config.sampler as keyof typeof roots]();

  const resource = resources.defaultResource().merge(
    resources.resourceFromAttributes({
      ...config.resourceAttributes,
      'service.name': config.serviceName,
      'service.version': identity.version,
      // The sidecar ID of GetStats and the logs: a trace leads to the one sidecar that served it.
      'service.instance.id': identity.sidecarId,
      'context_cache.namespace': identity.namespace,
      'process.pid': process.pid,
      'process.runtime.name': 'nodejs',
      'process.runtime.version': process.versions.node,
    }),
  );
  const processor = new sdk.BatchSpanProcessor({
    exporter: reportingExports(exporter, config.endpoint, log),
    maxQueueSize: MAX_QUEUED_SPANS,
    maxExportBatchSize: EXPORT_BATCH,
    scheduledDelayMillis: EXPORT_DELAY_MS,
    exportTimeoutMillis: config.timeoutMs,
  });
  const provider = new sdk.TracerProvider({ resource, sampler, spanProcessors: [processor], spanLimits: { attributeCountLimit: 64, attributeValueLengthLimit: 1024 } });
  const tracer = provider.getTracer('context-cache', identity.version);

  const endCall = (span: Span, code: number) => {
    span.setAttribute('rpc.grpc.status_code', code);
    if (SERVER_ERROR_CODES.has(code)) span.setStatus({ code: SpanStatusCode.ERROR });
    span.end();
  };

  const calls: CallTracer = {
    start(method, call, streaming) {
      const parent = propagator.extract(ROOT_CONTEXT, call.metadata, metadataGetter);
      const span = tracer.startSpan(
        `${SERVICE}/${method}`,
        { kind: SpanKind.SERVER, attributes: { 'rpc.system': 'grpc', 'rpc.service': SERVICE, 'rpc.method': method, ...requestAttributes(call.request, config.traceKeys) } },
        parent,
      );
      if (!span.isRecording()) return undefined;
      const active: Context = trace.setSpan(parent, span);
      if (streaming) endWithStream(call as ServerWritableStream<unknown, unknown>, (code) => endCall(span, code));
      const traced: TracedCall = {
        run: (handler) => contextManager.with(active, handler),
        annotate: (attributes) => span.setAttributes(attributes),
        end: (code) => endCall(span, code),
      };
      return traced;
    },
  };

  const work: WorkTracer = {
    start(name: string, attributes?: TraceAttributes): TracedWork | undefined {
      const current = contextManager.active();
      const parent = trace.getSpan(current);
      if (parent === undefined || !parent.isRecording()) return undefined;
      const kind = attributes?.['db.system.name'] !== undefined ? SpanKind.CLIENT : SpanKind.INTERNAL;
      const span = tracer.startSpan(name, { kind, attributes }, current);
      return {
        end(outcome) {
          if (outcome?.attributes) span.setAttributes(outcome.attributes);
          if (outcome?.error !== undefined) {
            const { type, message } = errorOf(outcome.error);
            span.setAttribute('error.type', type);
            span.setStatus({ code: SpanStatusCode.ERROR, message });
          }
          span.end();
        },
      };
    },
  };

  let closing: Promise<void> | undefined;
  log.info({ endpoint: config.endpoint, protocol: config.protocol, sampler: config.sampler, serviceName: config.serviceName }, 'tracing on: exporting spans over OTLP');
  return {
    calls,
    work,
    // A failed export is logged (once per outage) by reportingExports; the caller only waits for it.
    flush: () => provider.forceFlush().catch(() => undefined),
    close() {
      closing ??= provider.shutdown().then(
        () => void contextManager.disable(),
        (error: unknown) => {
          contextManager.disable();
          log.warn({ err: (error as Error)?.message }, 'tracing shutdown failed; some spans were not exported');
        },
      );
      return closing;
    },
  };
}

/** A stream's span ends with the stream: its status when it failed, CANCELLED when the caller left, OK otherwise. */
function endWithStream(call: ServerWritableStream<unknown, unknown> | ServerUnaryCall<unknown, unknown>, end: (code: number) => void): void {
  let ended = false;
  const once = (code: number) => {
    if (ended) return;
    ended = true;
    end(code);
  };
  call.once('error', (error: Partial<ServiceError>) => once(error.code ?? 2));
  call.once('cancelled', () => once(1));
  call.once('finish', () => once(0));
  call.once('close', () => once(0));
}
