import { credentials, type ClientDuplexStream, type StatusObject } from '@grpc/grpc-js';
import * as v1 from '../../src/gen/grpc/reflection/v1/reflection';
import * as v1alpha from '../../src/gen/grpc/reflection/v1alpha/reflection';

export type ReflectionVersion = 'v1' | 'v1alpha';
type Request = v1.ServerReflectionRequest;
type Response = v1.ServerReflectionResponse;
export type ReflectionQuery = NonNullable<Request['messageRequest']>;

/**
 * One reflection stream, used the way grpcurl uses it: a single
 * ServerReflectionInfo call, one request at a time, each answered in order.
 * v1 and v1alpha messages are the same on the wire and in the generated
 * shapes, so one class serves both.
 */
export class ReflectionStream {
  private readonly waiting: { resolve(response: Response): void; reject(error: Error): void }[] = [];
  private failure: Error | undefined;
  private readonly client: { close(): void };
  private readonly call: ClientDuplexStream<Request, Response>;
  readonly ended: Promise<StatusObject>;

  constructor(address: string, version: ReflectionVersion) {
    const Client = version === 'v1' ? v1.ServerReflectionClient : (v1alpha.ServerReflectionClient as unknown as typeof v1.ServerReflectionClient);
    const client = new Client(address, credentials.createInsecure());
    this.client = client;
    this.call = client.serverReflectionInfo();
    this.call.on('data', (response: Response) => this.waiting.shift()?.resolve(response));
    this.call.on('error', (error: Error) => {
      this.failure = error;
      for (const waiter of this.waiting.splice(0)) waiter.reject(error);
    });
    this.ended = new Promise((resolve) => this.call.on('status', resolve));
  }

  ask(query: ReflectionQuery): Promise<Response> {
    if (this.failure) return Promise.reject(this.failure);
    return new Promise((resolve, reject) => {
      this.waiting.push({ resolve, reject });
      this.call.write({ host: '', messageRequest: query });
    });
  }

  /** Half-closes the stream, waits for the server's status, closes the channel. */
  async close(): Promise<StatusObject> {
    this.call.end();
    const status = await this.ended;
    this.client.close();
    return status;
  }
}
