import type { Server, ServerDuplexStream } from '@grpc/grpc-js';
import * as v1 from '../gen/grpc/reflection/v1/reflection';
import * as v1alpha from '../gen/grpc/reflection/v1alpha/reflection';
import type { ReflectionIndex } from './reflection-index';

type Request = v1.ServerReflectionRequest;
type Response = v1.ServerReflectionResponse;

/**
 * Adds both reflection versions to the server, for `services`; they share
 * one index (reflection-index.ts), built on the first request. Answers go
 * out in the order of the requests.
 */
export function addReflection(server: Server, services: readonly string[]): void {
  let index: Promise<ReflectionIndex> | undefined;
  const loaded = () => (index ??= import('./reflection-index.js').then((module) => new module.ReflectionIndex(services)));
  const serve = (call: ServerDuplexStream<Request, Response>) => {
    let answered = Promise.resolve();
    call.on('data', (request: Request) => {
      answered = answered.then(async () => {
        call.write((await loaded()).answer(request));
      });
    });
    call.on('end', () => void answered.then(() => call.end()));
    call.on('error', () => call.end());
  };
  server.addService(v1.ServerReflectionService, { serverReflectionInfo: serve } satisfies v1.ServerReflectionServer);
  server.addService(v1alpha.ServerReflectionService, { serverReflectionInfo: serve } satisfies v1alpha.ServerReflectionServer);
}

export const REFLECTION_SERVICES = ['grpc.reflection.v1.ServerReflection', 'grpc.reflection.v1alpha.ServerReflection'] as const;
