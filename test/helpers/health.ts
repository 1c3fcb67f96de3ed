import { credentials, Metadata, type ServiceError, type StatusObject } from '@grpc/grpc-js';
import { HealthCheckResponse_ServingStatus as ServingStatus, HealthClient } from '../../src/gen/health/v1/health';

export { ServingStatus };

/** A grpc.health.v1 client for a sidecar address (host:port or unix:/path). Close it when done. */
export function healthClient(address: string): HealthClient {
  return new HealthClient(address, credentials.createInsecure());
}

/** One health Check; rejects with the ServiceError when the call fails. */
export function checkHealth(client: HealthClient, service: string, deadlineMs = 2000): Promise<ServingStatus> {
  return new Promise((resolve, reject) => {
    client.check({ service }, new Metadata(), { deadline: new Date(Date.now() + deadlineMs) }, (error: ServiceError | null, response) =>
      error ? reject(error) : resolve(response.status),
    );
  });
}

export interface HealthWatch {
  /** Every status the stream delivered, in order. */
  readonly statuses: ServingStatus[];
  /** Resolves with the final status of the stream, whatever ended it. */
  readonly ended: Promise<StatusObject>;
  /** True once the stream has ended. */
  readonly isEnded: () => boolean;
  cancel(): void;
}

/** Opens a health Watch stream and records what it delivers. */
export function watchHealth(client: HealthClient, service: string): HealthWatch {
  const call = client.watch({ service });
  const statuses: ServingStatus[] = [];
  let done = false;
  call.on('data', (response: { status: ServingStatus }) => statuses.push(response.status));
  // A stream that ends with a non-OK status emits 'error' as well; swallow it, 'status' reports it.
  call.on('error', () => undefined);
  const ended = new Promise<StatusObject>((resolve) =>
    call.on('status', (status: StatusObject) => {
      done = true;
      resolve(status);
    }),
  );
  return { statuses, ended, isEnded: () => done, cancel: () => call.cancel() };
}
