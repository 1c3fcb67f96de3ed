import { createFileRegistry, fromBinary, toBinary, type DescFile, type DescMessage, type DescEnum } from '@bufbuild/protobuf';
import { FileDescriptorProtoSchema, FileDescriptorSetSchema } from '@bufbuild/protobuf/wkt';
import { status } from '@grpc/grpc-js';
import { descriptorSetBase64 } from '../gen/descriptor-set';
import type * as v1 from '../gen/grpc/reflection/v1/reflection';

type Request = v1.ServerReflectionRequest;
type Response = v1.ServerReflectionResponse;

/**
 * gRPC server reflection (v1 and v1alpha), answered from the complete
 * FileDescriptorSet that `buf build` wrote at generation time. Every file is
 * served under its real name with its real imports, and every import can be
 * fetched by name, so strict clients (grpcurl, which builds a descriptor pool
 * that refuses dangling imports) can describe and call every method. Source
 * info is kept, so `grpcurl describe` shows the proto comments.
 *
 * Built on the first reflection request (reflection.ts loads this module
 * then): the descriptor registry and @bufbuild/protobuf's reflection code
 * cost ~10 MiB that a sidecar nobody inspects need not hold.
 */
export class ReflectionIndex {
  private readonly encodedFiles = new Map<string, Uint8Array>();
  private readonly filesBySymbol = new Map<string, DescFile>();
  private readonly filesByName = new Map<string, DescFile>();

  constructor(
    private readonly services: readonly string[],
    descriptorSet: Uint8Array = Buffer.from(descriptorSetBase64, 'base64'),
  ) {
    // createFileRegistry throws on a missing import: a broken set fails start-up, not a client.
    const registry = createFileRegistry(fromBinary(FileDescriptorSetSchema, descriptorSet));
    for (const file of registry.files) {
      this.filesByName.set(file.proto.name, file);
      this.encodedFiles.set(file.proto.name, toBinary(FileDescriptorProtoSchema, file.proto));
      const index = (typeName: string) => this.filesBySymbol.set(typeName, file);
      const indexEnum = (e: DescEnum) => {
        index(e.typeName);
        for (const value of e.values) index(`${e.typeName.slice(0, e.typeName.lastIndexOf('.') + 1)}${value.name}`);
      };
      const indexMessage = (message: DescMessage) => {
        index(message.typeName);
        for (const field of message.fields) index(`${message.typeName}.${field.name}`);
        for (const oneof of message.oneofs) index(`${message.typeName}.${oneof.name}`);
        message.nestedMessages.forEach(indexMessage);
        message.nestedEnums.forEach(indexEnum);
        for (const extension of message.nestedExtensions) index(extension.typeName);
      };
      file.messages.forEach(indexMessage);
      file.enums.forEach(indexEnum);
      for (const extension of file.extensions) index(extension.typeName);
      for (const service of file.services) {
        index(service.typeName);
        for (const method of service.methods) index(`${service.typeName}.${method.name}`);
      }
    }
    for (const service of services) {
      if (!this.filesBySymbol.has(service)) throw new Error(`reflection: service ${service} is not in the descriptor set`);
    }
  }

  answer(request: Request): Response {
    const base = { validHost: request.host, originalRequest: request };
    const query = request.messageRequest;
    switch (query?.$case) {
      case 'listServices':
        return { ...base, messageResponse: { $case: 'listServicesResponse', value: { service: this.services.map((name) => ({ name })) } } };
      case 'fileByFilename':
        return this.files(base, this.filesByName.get(query.value), `file "${query.value}" is not known`);
      case 'fileContainingSymbol':
        return this.files(base, this.filesBySymbol.get(query.value.replace(/^\./, '')), `symbol "${query.value}" is not known`);
      case 'fileContainingExtension':
        return error(base, status.NOT_FOUND, `no extension ${query.value.extensionNumber} of ${query.value.containingType} is known`);
      case 'allExtensionNumbersOfType':
        if (!this.filesBySymbol.has(query.value)) return error(base, status.NOT_FOUND, `type "${query.value}" is not known`);
        return { ...base, messageResponse: { $case: 'allExtensionNumbersResponse', value: { baseTypeName: query.value, extensionNumber: [] } } };
      default:
        return error(base, status.INVALID_ARGUMENT, 'the request names no query');
    }
  }

  /** The file first, then every file it imports, directly or not. */
  private files(base: Pick<Response, 'validHost' | 'originalRequest'>, file: DescFile | undefined, notFound: string): Response {
    if (file === undefined) return error(base, status.NOT_FOUND, notFound);
    const ordered: DescFile[] = [];
    const seen = new Set<string>();
    const visit = (current: DescFile) => {
      if (seen.has(current.proto.name)) return;
      seen.add(current.proto.name);
      ordered.push(current);
      current.dependencies.forEach(visit);
    };
    visit(file);
    return {
      ...base,
      messageResponse: {
        $case: 'fileDescriptorResponse',
        value: { fileDescriptorProto: ordered.map((f) => Buffer.from(this.encodedFiles.get(f.proto.name)!)) },
      },
    };
  }
}

function error(base: Pick<Response, 'validHost' | 'originalRequest'>, code: status, message: string): Response {
  return { ...base, messageResponse: { $case: 'errorResponse', value: { errorCode: code, errorMessage: message } } };
}

