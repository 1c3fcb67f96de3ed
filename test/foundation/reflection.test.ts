import { create, createFileRegistry, fromBinary, toBinary, type FileRegistry } from '@bufbuild/protobuf';
import { FileDescriptorProtoSchema, FileDescriptorSetSchema, type FileDescriptorProto } from '@bufbuild/protobuf/wkt';
import { credentials, loadPackageDefinition, status, type GrpcObject, type ServiceClientConstructor, type ServiceError } from '@grpc/grpc-js';
import { loadFileDescriptorSetFromBuffer } from '@grpc/proto-loader';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { closeAllSidecars, startSidecar, type TestSidecar } from '../helpers/sidecar';
import { ReflectionStream, type ReflectionVersion } from '../helpers/reflection';

const CACHE_SERVICE = 'contextcache.v1.ContextCache';
const CACHE_FILE = 'contextcache/v1/context_cache.proto';
const EXPECTED_SERVICES = [CACHE_SERVICE, 'grpc.health.v1.Health', 'grpc.reflection.v1.ServerReflection', 'grpc.reflection.v1alpha.ServerReflection'];

/** What a grpcurl session learns: every file by name, decoded, plus how each was obtained. */
interface Discovery {
  services: string[];
  files: Map<string, FileDescriptorProto>;
  fetchedByName: Set<string>;
  registry: FileRegistry;
}

function decodeFiles(response: Awaited<ReturnType<ReflectionStream['ask']>>): FileDescriptorProto[] {
  const answer = response.messageResponse;
  if (answer?.$case !== 'fileDescriptorResponse') {
    throw new Error(`expected a file descriptor response, got ${JSON.stringify(answer)}`);
  }
  expect(answer.value.fileDescriptorProto.length).toBeGreaterThan(0);
  return answer.value.fileDescriptorProto.map((bytes) => fromBinary(FileDescriptorProtoSchema, bytes));
}

/**
 * The grpcurl sequence: list services; file_containing_symbol for each;
 * then file_by_filename for every import, transitively; then a strict
 * descriptor pool of everything received.
 */
async function discover(stream: ReflectionStream): Promise<Discovery> {
  const listed = await stream.ask({ $case: 'listServices', value: '*' });
  if (listed.messageResponse?.$case !== 'listServicesResponse') throw new Error(`list_services failed: ${JSON.stringify(listed.messageResponse)}`);
  const services = listed.messageResponse.value.service.map((s) => s.name);

  const files = new Map<string, FileDescriptorProto>();
  const add = (fds: FileDescriptorProto[]) => fds.forEach((fd) => files.set(fd.name, fd));
  for (const service of services) {
    const fds = decodeFiles(await stream.ask({ $case: 'fileContainingSymbol', value: service }));
    // The first file declares the service.
    const [first] = fds;
    expect(`${first!.package}.${first!.service.map((s) => s.name).find((name) => service === `${first!.package}.${name}`)}`).toBe(service);
    add(fds);
  }

  const fetchedByName = new Set<string>();
  const queue = [...files.values()].flatMap((fd) => fd.dependency);
  while (queue.length > 0) {
    const name = queue.shift()!;
    if (fetchedByName.has(name)) continue;
    const fds = decodeFiles(await stream.ask({ $case: 'fileByFilename', value: name }));
    expect(fds[0]!.name).toBe(name);
    fetchedByName.add(name);
    add(fds);
    queue.push(...fds.flatMap((fd) => fd.dependency));
  }

  return { services, files, fetchedByName, registry: strictPool([...files.values()]) };
}

/**
 * A descriptor pool that refuses dangling imports, as grpcurl builds one:
 * files are linked dependencies first (a FileDescriptorSet from protoc is
 * in that order; reflection answers need not be), and createFileRegistry
 * throws on any import that is not in the set.
 */
function strictPool(files: FileDescriptorProto[]): FileRegistry {
  const byName = new Map(files.map((fd) => [fd.name, fd]));
  const ordered: FileDescriptorProto[] = [];
  const visited = new Set<string>();
  const visit = (fd: FileDescriptorProto) => {
    if (visited.has(fd.name)) return;
    visited.add(fd.name);
    for (const dependency of fd.dependency) {
      const dep = byName.get(dependency);
      if (dep) visit(dep);
    }
    ordered.push(fd);
  };
  files.forEach(visit);
  return createFileRegistry(create(FileDescriptorSetSchema, { file: ordered }));
}

/** Leading comments of a file by source path (FileDescriptorProto numbering), from source_code_info. */
function commentsByPath(file: FileDescriptorProto): Map<string, string> {
  const comments = new Map<string, string>();
  for (const location of file.sourceCodeInfo?.location ?? []) {
    if (location.leadingComments?.trim()) comments.set(location.path.join('.'), location.leadingComments.trim());
  }
  return comments;
}

/** Every declaration of the file that `grpcurl describe` shows, with its source path. */
function declarations(file: FileDescriptorProto): { what: string; path: number[] }[] {
  const out: { what: string; path: number[] }[] = [];
  file.messageType.forEach((message, m) => {
    if (message.options?.mapEntry) return;
    out.push({ what: `message ${message.name}`, path: [4, m] });
    message.field.forEach((field, f) => out.push({ what: `field ${message.name}.${field.name}`, path: [4, m, 2, f] }));
    message.oneofDecl.forEach((oneof, o) => out.push({ what: `oneof ${message.name}.${oneof.name}`, path: [4, m, 8, o] }));
    message.enumType.forEach((e, n) => out.push({ what: `enum ${message.name}.${e.name}`, path: [4, m, 4, n] }));
  });
  file.enumType.forEach((e, n) => {
    out.push({ what: `enum ${e.name}`, path: [5, n] });
    e.value.forEach((value, v) => out.push({ what: `enum value ${value.name}`, path: [5, n, 2, v] }));
  });
  file.service.forEach((service, s) => {
    out.push({ what: `service ${service.name}`, path: [6, s] });
    service.method.forEach((method, m) => out.push({ what: `method ${service.name}.${method.name}`, path: [6, s, 2, m] }));
  });
  return out;
}

describe('server reflection, as grpcurl uses it', () => {
  let sc: TestSidecar;
  const streams: ReflectionStream[] = [];
  beforeAll(async () => {
    sc = await startSidecar();
  });
  afterAll(async () => {
    await Promise.all(streams.map((stream) => stream.close().catch(() => undefined)));
    await closeAllSidecars();
  });

  describe.each(['v1', 'v1alpha'] as ReflectionVersion[])('grpc.reflection.%s.ServerReflection', (version) => {
    let stream: ReflectionStream;
    let found: Discovery;
    beforeAll(async () => {
      stream = new ReflectionStream(sc.address, version);
      streams.push(stream);
      found = await discover(stream);
    });

    it('lists every service', () => {
      expect(found.services).toEqual(expect.arrayContaining(EXPECTED_SERVICES));
    });

    it('serves every import by file name, transitively, into a strict pool', () => {
      expect([...found.fetchedByName]).toEqual(expect.arrayContaining(['google/protobuf/duration.proto', 'google/protobuf/timestamp.proto']));
      for (const fd of found.files.values()) {
        for (const dependency of fd.dependency) expect(found.fetchedByName.has(dependency), `${fd.name} imports ${dependency}`).toBe(true);
      }
      for (const service of EXPECTED_SERVICES) {
        const desc = found.registry.getService(service);
        expect(desc, service).toBeDefined();
        for (const method of desc!.methods) {
          expect(method.input.typeName).toBeTruthy();
          expect(method.output.typeName).toBeTruthy();
        }
      }
    });

    it('the pool really is strict: the cache file alone does not build', () => {
      expect(() => strictPool([found.files.get(CACHE_FILE)!])).toThrow(/Cannot find google\/protobuf\/duration\.proto/);
    });

    it('resolves every message type of contextcache.v1, with comments on messages and fields ("describe" works)', () => {
      const file = found.files.get(CACHE_FILE)!;
      const comments = commentsByPath(file);
      expect(comments.size).toBeGreaterThan(100);
      const missing = declarations(file)
        .filter(({ path }) => !comments.has(path.join('.')))
        .map(({ what }) => what);
      expect(missing).toEqual([]);

      const messages = file.messageType.filter((m) => !m.options?.mapEntry);
      expect(messages.length).toBeGreaterThan(40);
      for (const message of messages) {
        const desc = found.registry.getMessage(`contextcache.v1.${message.name}`);
        expect(desc, message.name).toBeDefined();
        for (const field of desc!.fields) {
          if (field.fieldKind === 'message') expect(found.registry.getMessage(field.message.typeName), `${message.name}.${field.name}`).toBeDefined();
          if (field.fieldKind === 'enum') expect(found.registry.getEnum(field.enum.typeName), `${message.name}.${field.name}`).toBeDefined();
        }
      }
    });

    it('answers file_containing_symbol for every message, enum and method of contextcache.v1', async () => {
      const file = found.files.get(CACHE_FILE)!;
      const symbols = [
        ...file.messageType.map((m) => `contextcache.v1.${m.name}`),
        ...file.enumType.map((e) => `contextcache.v1.${e.name}`),
        ...file.service[0]!.method.map((m) => `${CACHE_SERVICE}.${m.name}`),
        'contextcache.v1.GetRequest.key',
        '.contextcache.v1.GetResponse',
      ];
      for (const symbol of symbols) {
        const [first] = decodeFiles(await stream.ask({ $case: 'fileContainingSymbol', value: symbol }));
        expect(first!.name, symbol).toBe(CACHE_FILE);
      }
    });

    it('answers an unknown symbol or file with error_response NOT_FOUND, and the stream goes on', async () => {
      const symbol = await stream.ask({ $case: 'fileContainingSymbol', value: 'contextcache.v1.NoSuchMessage' });
      expect(symbol.messageResponse?.$case).toBe('errorResponse');
      if (symbol.messageResponse?.$case === 'errorResponse') {
        expect(symbol.messageResponse.value.errorCode).toBe(status.NOT_FOUND);
        expect(symbol.messageResponse.value.errorMessage).toContain('contextcache.v1.NoSuchMessage');
      }
      const file = await stream.ask({ $case: 'fileByFilename', value: 'no/such/file.proto' });
      expect(file.messageResponse?.$case === 'errorResponse' && file.messageResponse.value.errorCode).toBe(status.NOT_FOUND);
      // The original request is echoed back.
      expect(file.originalRequest?.messageRequest).toEqual({ $case: 'fileByFilename', value: 'no/such/file.proto' });

      const again = await stream.ask({ $case: 'listServices', value: '*' });
      expect(again.messageResponse?.$case).toBe('listServicesResponse');
    });

    it('answers all_extension_numbers_of_type (grpcurl asks it for message types)', async () => {
      const known = await stream.ask({ $case: 'allExtensionNumbersOfType', value: 'contextcache.v1.GetRequest' });
      expect(known.messageResponse?.$case).toBe('allExtensionNumbersResponse');
      const unknown = await stream.ask({ $case: 'allExtensionNumbersOfType', value: 'contextcache.v1.Nope' });
      expect(unknown.messageResponse?.$case === 'errorResponse' && unknown.messageResponse.value.errorCode).toBe(status.NOT_FOUND);
    });

    it('calls Set and Get dynamically from the reflected descriptors', async () => {
      const set = create(FileDescriptorSetSchema, { file: [...found.files.values()] });
      const definition = loadFileDescriptorSetFromBuffer(Buffer.from(toBinary(FileDescriptorSetSchema, set)), {
        longs: String,
        enums: String,
        defaults: true,
        oneofs: true,
      });
      const loaded = loadPackageDefinition(definition);
      const ContextCache = ((loaded.contextcache as GrpcObject).v1 as GrpcObject).ContextCache as ServiceClientConstructor;
      expect(ContextCache.service.Get?.path).toBe('/contextcache.v1.ContextCache/Get');
      const client = new ContextCache(sc.address, credentials.createInsecure());
      type Unary = (request: object, callback: (error: ServiceError | null, response: Record<string, unknown>) => void) => void;
      const call = (method: string, request: object) =>
        new Promise<Record<string, unknown>>((resolve, reject) =>
          (client[method] as Unary).call(client, request, (error, response) => (error ? reject(error) : resolve(response))),
        );
      try {
        const key = `dynamic/${version}`;
        const value = Buffer.from([0, 1, 2, 3, 250, 251, 252, 0x7f, 0x80]);
        const written = await call('Set', { key, value, tags: ['dyn'], ttl: { seconds: 60 } });
        const info = written.info as { version: string };
        expect(Number(info.version)).toBeGreaterThan(0);
        expect(written.scope).toBe('WRITE_SCOPE_LOCAL');

        const read = await call('Get', { key });
        expect(read.found).toBe(true);
        expect(Buffer.isBuffer(read.value)).toBe(true);
        expect((read.value as Buffer).equals(value)).toBe(true);
        expect((read.info as { version: string; source: string; tags: string[] }).version).toBe(info.version);
        expect((read.info as { source: string }).source).toBe('SOURCE_L1');
        expect((read.info as { tags: string[] }).tags).toEqual(['dyn']);

        // And the typed client sees the same entry.
        const typed = await sc.client.get({ key });
        expect(Buffer.from(typed.value).equals(value)).toBe(true);
        expect(String(typed.info?.version)).toBe(info.version);

        const error = await call('Get', { key: '' }).then(
          () => undefined,
          (e: ServiceError) => e,
        );
        expect(error?.code).toBe(status.INVALID_ARGUMENT);
      } finally {
        client.close();
      }
    });
  });
});
