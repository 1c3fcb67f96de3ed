import { Server, ServerCredentials, type ServerUnaryCall, type sendUnaryData } from '@grpc/grpc-js';
import { BinaryReader, WireType } from '@bufbuild/protobuf/wire';
import { createServer, type IncomingHttpHeaders, type Server as HttpServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { gunzipSync } from 'node:zlib';
import { waitFor } from './wait';

/**
 * A minimal OTLP trace receiver, as a collector would be: OTLP/HTTP
 * (`POST /v1/traces`, protobuf or JSON bodies) and OTLP/gRPC
 * (`TraceService/Export`). Export requests are decoded here from the field
 * numbers of opentelemetry-proto's trace.proto, independently of the SDK
 * that encoded them, and kept for the test to read.
 */
export interface ReceivedSpan {
  traceId: string;
  spanId: string;
  /** '' for a root span. */
  parentSpanId: string;
  name: string;
  /** SpanKind of trace.proto: 1 internal, 2 server, 3 client. */
  kind: number;
  attributes: Record<string, unknown>;
  /** Status.code of trace.proto: 0 unset, 1 ok, 2 error. */
  status: { code: number; message: string };
  resource: Record<string, unknown>;
  scope: string;
}

export interface ExportRequest {
  transport: 'http/protobuf' | 'http/json' | 'grpc';
  /** HTTP headers, or gRPC metadata, lower-case names. */
  headers: Record<string, string>;
  spans: ReceivedSpan[];
}

export interface OtlpReceiver {
  /** http://127.0.0.1:PORT: OTEL_EXPORTER_OTLP_ENDPOINT for HTTP. */
  readonly httpEndpoint: string;
  /** http://127.0.0.1:PORT: OTEL_EXPORTER_OTLP_ENDPOINT for grpc. */
  readonly grpcEndpoint: string;
  readonly requests: ExportRequest[];
  spans(): ReceivedSpan[];
  /** Waits until a span matches. */
  waitForSpan(match: (span: ReceivedSpan) => boolean, what: string, timeoutMs?: number): Promise<ReceivedSpan>;
  close(): Promise<void>;
}

const hex = (bytes: Uint8Array) => Buffer.from(bytes).toString('hex');

// ---------------------------------------------------------------------------
// protobuf (opentelemetry/proto/collector/trace/v1 and trace/v1, common/v1)

function fields(bytes: Uint8Array, each: (field: number, reader: BinaryReader, wireType: WireType) => void): void {
  const reader = new BinaryReader(bytes);
  while (reader.pos < reader.len) {
    const [field, wireType] = reader.tag();
    const before = reader.pos;
    each(field, reader, wireType);
    if (reader.pos === before) reader.skip(wireType);
  }
}

function anyValue(bytes: Uint8Array): unknown {
  let value: unknown;
  fields(bytes, (field, reader) => {
    if (field === 1) value = reader.string();
    else if (field === 2) value = reader.bool();
    else if (field === 3) value = Number(reader.int64());
    else if (field === 4) value = reader.double();
    else if (field === 5) {
      const values: unknown[] = [];
      fields(reader.bytes(), (inner, r) => {
        if (inner === 1) values.push(anyValue(r.bytes()));
      });
      value = values;
    } else if (field === 7) value = Buffer.from(reader.bytes());
  });
  return value;
}

function keyValue(bytes: Uint8Array, into: Record<string, unknown>): void {
  let key = '';
  let value: unknown;
  fields(bytes, (field, reader) => {
    if (field === 1) key = reader.string();
    else if (field === 2) value = anyValue(reader.bytes());
  });
  into[key] = value;
}

function decodeSpan(bytes: Uint8Array, resource: Record<string, unknown>, scope: string): ReceivedSpan {
  const span: ReceivedSpan = { traceId: '', spanId: '', parentSpanId: '', name: '', kind: 0, attributes: {}, status: { code: 0, message: '' }, resource, scope };
  fields(bytes, (field, reader) => {
    if (field === 1) span.traceId = hex(reader.bytes());
    else if (field === 2) span.spanId = hex(reader.bytes());
    else if (field === 4) span.parentSpanId = hex(reader.bytes());
    else if (field === 5) span.name = reader.string();
    else if (field === 6) span.kind = reader.int32();
    else if (field === 9) keyValue(reader.bytes(), span.attributes);
    else if (field === 15)
      fields(reader.bytes(), (inner, r) => {
        if (inner === 2) span.status.message = r.string();
        else if (inner === 3) span.status.code = r.int32();
      });
  });
  return span;
}

export function decodeExportRequest(bytes: Uint8Array): ReceivedSpan[] {
  const spans: ReceivedSpan[] = [];
  fields(bytes, (field, reader) => {
    if (field !== 1) return;
    const resource: Record<string, unknown> = {};
    const scopeSpans: Uint8Array[] = [];
    fields(reader.bytes(), (inner, r) => {
      if (inner === 1)
        fields(r.bytes(), (attr, ar) => {
          if (attr === 1) keyValue(ar.bytes(), resource);
        });
      else if (inner === 2) scopeSpans.push(r.bytes());
    });
    for (const scoped of scopeSpans) {
      let scope = '';
      const raw: Uint8Array[] = [];
      fields(scoped, (inner, r) => {
        if (inner === 1)
          fields(r.bytes(), (s, sr) => {
            if (s === 1) scope = sr.string();
          });
        else if (inner === 2) raw.push(r.bytes());
      });
      for (const span of raw) spans.push(decodeSpan(span, resource, scope));
    }
  });
  return spans;
}

// ---------------------------------------------------------------------------
// JSON (OTLP/JSON: hex IDs, proto3 JSON field names, int64 as strings)

interface JsonAnyValue {
  stringValue?: string;
  boolValue?: boolean;
  intValue?: string | number;
  doubleValue?: number;
  arrayValue?: { values?: JsonAnyValue[] };
}
interface JsonKeyValue {
  key: string;
  value: JsonAnyValue;
}

function jsonValue(value: JsonAnyValue): unknown {
  if (value.stringValue !== undefined) return value.stringValue;
  if (value.boolValue !== undefined) return value.boolValue;
  if (value.intValue !== undefined) return Number(value.intValue);
  if (value.doubleValue !== undefined) return value.doubleValue;
  if (value.arrayValue !== undefined) return (value.arrayValue.values ?? []).map(jsonValue);
  return undefined;
}

const jsonAttributes = (list: JsonKeyValue[] | undefined) => Object.fromEntries((list ?? []).map((kv) => [kv.key, jsonValue(kv.value)]));

export function decodeJsonExportRequest(body: string): ReceivedSpan[] {
  const request = JSON.parse(body) as {
    resourceSpans?: {
      resource?: { attributes?: JsonKeyValue[] };
      scopeSpans?: { scope?: { name?: string }; spans?: { traceId: string; spanId: string; parentSpanId?: string; name: string; kind: number; attributes?: JsonKeyValue[]; status?: { code?: number; message?: string } }[] }[];
    }[];
  };
  return (request.resourceSpans ?? []).flatMap((resourceSpans) => {
    const resource = jsonAttributes(resourceSpans.resource?.attributes);
    return (resourceSpans.scopeSpans ?? []).flatMap((scoped) =>
      (scoped.spans ?? []).map((span) => ({
        traceId: span.traceId,
        spanId: span.spanId,
        parentSpanId: span.parentSpanId ?? '',
        name: span.name,
        kind: span.kind,
        attributes: jsonAttributes(span.attributes),
        status: { code: span.status?.code ?? 0, message: span.status?.message ?? '' },
        resource,
        scope: scoped.scope?.name ?? '',
      })),
    );
  });
}

// ---------------------------------------------------------------------------

const headersOf = (headers: IncomingHttpHeaders) => Object.fromEntries(Object.entries(headers).map(([name, value]) => [name, Array.isArray(value) ? value.join(',') : String(value)]));

export async function startOtlpReceiver(): Promise<OtlpReceiver> {
  const requests: ExportRequest[] = [];
  const http: HttpServer = createServer((request, response) => {
    const chunks: Buffer[] = [];
    request.on('data', (chunk: Buffer) => chunks.push(chunk));
    request.on('end', () => {
      if (request.method !== 'POST' || request.url !== '/v1/traces') {
        response.writeHead(404).end();
        return;
      }
      let body = Buffer.concat(chunks);
      if (request.headers['content-encoding'] === 'gzip') body = gunzipSync(body);
      const json = String(request.headers['content-type']).startsWith('application/json');
      try {
        const spans = json ? decodeJsonExportRequest(body.toString('utf8')) : decodeExportRequest(body);
        requests.push({ transport: json ? 'http/json' : 'http/protobuf', headers: headersOf(request.headers), spans });
        response.writeHead(200, { 'content-type': json ? 'application/json' : 'application/x-protobuf' }).end(json ? '{}' : Buffer.alloc(0));
      } catch (error) {
        response.writeHead(400).end(String(error));
      }
    });
  });
  await new Promise<void>((resolve) => http.listen(0, '127.0.0.1', resolve));

  const grpc = new Server();
  const raw = (buffer: Buffer) => buffer;
  grpc.addService(
    {
      Export: {
        path: '/opentelemetry.proto.collector.trace.v1.TraceService/Export',
        requestStream: false,
        responseStream: false,
        requestSerialize: raw,
        requestDeserialize: raw,
        responseSerialize: raw,
        responseDeserialize: raw,
      },
    },
    {
      Export: (call: ServerUnaryCall<Buffer, Buffer>, callback: sendUnaryData<Buffer>) => {
        const headers = Object.fromEntries(Object.entries(call.metadata.getMap()).map(([name, value]) => [name, String(value)]));
        requests.push({ transport: 'grpc', headers, spans: decodeExportRequest(call.request) });
        // An empty ExportTraceServiceResponse: every span accepted.
        callback(null, Buffer.alloc(0));
      },
    },
  );
  const grpcPort = await new Promise<number>((resolve, reject) => grpc.bindAsync('127.0.0.1:0', ServerCredentials.createInsecure(), (error, port) => (error ? reject(error) : resolve(port))));

  const spans = () => requests.flatMap((request) => request.spans);
  let closed = false;
  return {
    httpEndpoint: `http://127.0.0.1:${(http.address() as AddressInfo).port}`,
    grpcEndpoint: `http://127.0.0.1:${grpcPort}`,
    requests,
    spans,
    async waitForSpan(match, what, timeoutMs = 10_000) {
      let found: ReceivedSpan | undefined;
      await waitFor(() => (found = spans().find(match)) !== undefined, what, timeoutMs);
      return found!;
    },
    async close() {
      if (closed) return;
      closed = true;
      http.closeAllConnections();
      await new Promise<void>((resolve) => http.close(() => resolve()));
      grpc.forceShutdown();
    },
  };
}
