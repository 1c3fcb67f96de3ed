/**
 * The floor of every sidecar benchmark: a bare grpc-js unary service that
 * answers with a fixed payload, with raw Buffer (de)serializers (no proto,
 * no codec work) — in this process, or in a process of its own
 * (bench/echo-server.mjs, plain Node, the same service) as the sidecar runs
 * as deployed.
 */
import { spawn } from 'node:child_process';
import { join } from 'node:path';
import {
  credentials,
  Client,
  Server,
  ServerCredentials,
  type ServiceDefinition,
  type UntypedServiceImplementation,
} from '@grpc/grpc-js';
import { benchAddress, type Transport } from './deployed';

const passthrough = (buffer: Buffer) => buffer;

export const ECHO_SERVICE: ServiceDefinition<UntypedServiceImplementation> = {
  get: {
    path: '/echo.Echo/Get',
    requestStream: false,
    responseStream: false,
    requestSerialize: passthrough,
    requestDeserialize: passthrough,
    responseSerialize: passthrough,
    responseDeserialize: passthrough,
  },
};

export interface EchoServer {
  address: string;
  stop(): Promise<void>;
}

/** The echo server in this process, answering every call with `payload`. */
export async function startEcho(payload: Buffer, address = '127.0.0.1:0'): Promise<EchoServer> {
  const server = new Server();
  server.addService(ECHO_SERVICE, { get: (_call: unknown, callback: (error: null, response: Buffer) => void) => callback(null, payload) });
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync(address, ServerCredentials.createInsecure(), (error, bound) => (error ? reject(error) : resolve(bound))),
  );
  return {
    address: address.startsWith('unix:') ? address : `127.0.0.1:${port}`,
    stop: () => new Promise<void>((resolve) => server.tryShutdown(() => resolve())),
  };
}

/** The echo server in a process of its own (plain Node, like dist/main.js), answering with `payloadBytes` bytes. */
export async function startDeployedEcho(payloadBytes: number, transport: Transport): Promise<EchoServer> {
  const listen = await benchAddress(transport);
  const child = spawn(process.execPath, [join(__dirname, 'echo-server.mjs'), listen.address, String(payloadBytes)], { stdio: ['pipe', 'pipe', 'inherit'] });
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  await new Promise<void>((resolve, reject) => {
    let output = '';
    child.once('exit', (code) => reject(new Error(`the echo server exited with ${code}`)));
    child.stdout.on('data', (chunk: Buffer) => {
      output += chunk.toString();
      if (output.includes('ready')) resolve();
    });
  });
  return {
    address: listen.address,
    async stop() {
      child.stdin.end();
      await exited;
      listen.remove();
    },
  };
}

/** A client of the echo service: one call sends `request` and resolves with the reply. */
export function echoClient(address: string, request: Buffer, deadlineMs?: number): { call(): Promise<Buffer>; close(): void } {
  const client = new Client(address, credentials.createInsecure());
  const path = ECHO_SERVICE.get!.path;
  const done = (resolve: (response: Buffer) => void, reject: (error: Error) => void) => (error: Error | null, response?: Buffer) => (error ? reject(error) : resolve(response!));
  return {
    call:
      deadlineMs === undefined
        ? () => new Promise<Buffer>((resolve, reject) => client.makeUnaryRequest<Buffer, Buffer>(path, passthrough, passthrough, request, done(resolve, reject)))
        : () =>
            new Promise<Buffer>((resolve, reject) =>
              client.makeUnaryRequest<Buffer, Buffer>(path, passthrough, passthrough, request, { deadline: Date.now() + deadlineMs }, done(resolve, reject)),
            ),
    close: () => client.close(),
  };
}
