import { status as grpcStatus, type Server, type ServerUnaryCall, type ServerWritableStream, type sendUnaryData } from '@grpc/grpc-js';
import {
  HealthCheckResponse_ServingStatus as Wire,
  HealthService,
  type HealthCheckRequest,
  type HealthCheckResponse,
  type HealthListRequest,
  type HealthListResponse,
} from '../gen/health/v1/health';

/** A health status as components report it. */
export type ServingStatus = 'SERVING' | 'NOT_SERVING';

/** Streams watching one service name: bounded, so probes that never read cannot grow memory. */
const MAX_WATCHERS = 1000;

/**
 * grpc.health.v1 (Check, Watch, List) on the generated code, in place of the
 * grpc-health-check package, which loads the proto at run time through
 * proto-loader and protobufjs (~10 MiB of RSS for three small methods).
 * Semantics as the standard says: Check of an unknown name is NOT_FOUND;
 * Watch sends the current status (SERVICE_UNKNOWN for an unknown name) and
 * every change; List returns every name.
 */
export class HealthStatuses {
  private readonly statuses = new Map<string, ServingStatus>();
  private readonly watchers = new Map<string, Set<ServerWritableStream<HealthCheckRequest, HealthCheckResponse>>>();
  private watcherCount = 0;

  constructor(initial: Record<string, ServingStatus>) {
    for (const [service, status] of Object.entries(initial)) this.statuses.set(service, status);
  }

  set(service: string, status: ServingStatus): void {
    if (this.statuses.get(service) === status) return;
    this.statuses.set(service, status);
    for (const call of this.watchers.get(service) ?? []) call.write({ status: Wire[status] });
  }

  all(): Record<string, ServingStatus> {
    return Object.fromEntries(this.statuses);
  }

  addToServer(server: Server): void {
    server.addService(HealthService, {
      check: (call: ServerUnaryCall<HealthCheckRequest, HealthCheckResponse>, callback: sendUnaryData<HealthCheckResponse>) => {
        const status = this.statuses.get(call.request.service);
        if (status === undefined) callback({ code: grpcStatus.NOT_FOUND, details: `no health status for service "${call.request.service}"` });
        else callback(null, { status: Wire[status] });
      },
      list: (_call: ServerUnaryCall<HealthListRequest, HealthListResponse>, callback: sendUnaryData<HealthListResponse>) => {
        callback(null, { statuses: Object.fromEntries([...this.statuses].map(([service, status]) => [service, { status: Wire[status] }])) });
      },
      watch: (call: ServerWritableStream<HealthCheckRequest, HealthCheckResponse>) => {
        if (this.watcherCount >= MAX_WATCHERS) {
          call.emit('error', { code: grpcStatus.RESOURCE_EXHAUSTED, details: `more than ${MAX_WATCHERS} health watches are open` });
          return;
        }
        const service = call.request.service;
        const status = this.statuses.get(service);
        call.write({ status: status === undefined ? Wire.SERVICE_UNKNOWN : Wire[status] });
        let watching = this.watchers.get(service);
        if (watching === undefined) this.watchers.set(service, (watching = new Set()));
        watching.add(call);
        this.watcherCount++;
        const stop = () => {
          if (watching!.delete(call)) this.watcherCount--;
        };
        call.once('cancelled', stop);
        call.once('close', stop);
        call.once('error', stop);
      },
    });
  }
}
