/**
 * Offline checks of deploy/kubernetes: every manifest parses and validates
 * against the Kubernetes API schemas (kubernetes-models, plus a strict check
 * for unknown fields, which those schemas let through), every kustomization
 * references what exists, and, where kubectl is installed, each variant
 * renders with `kubectl kustomize` and the rendered pod spec fits the sidecar
 * as src/ implements it: probe ports, environment variables, termination
 * grace, memory, security.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { dirname, join, relative, resolve, sep } from 'node:path';
import { Deployment } from 'kubernetes-models/apps/v1';
import { ConfigMap, Secret, Service } from 'kubernetes-models/v1';
import { parseAllDocuments } from 'yaml';
import { afterAll, describe, expect, it } from 'vitest';
import { CONFIG_VARIABLES, ConfigError, loadConfig, type Config, type ConfigVariable } from '../../src/config';
import { HEALTH_SERVICE_CACHE, HEALTH_SERVICE_OVERALL } from '../../src/server/grpc-server';

const ROOT = resolve(__dirname, '..', '..');
const KUBE = join(ROOT, 'deploy', 'kubernetes');
const SIDECAR = 'context-cache';

// ---------------------------------------------------------------------------
// YAML files and kustomizations

type Json = null | boolean | number | string | Json[] | { [key: string]: Json };
type Obj = { [key: string]: Json };
const isObj = (value: unknown): value is Obj => typeof value === 'object' && value !== null && !Array.isArray(value);

function filesUnder(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((entry) =>
    entry.isDirectory() ? filesUnder(join(dir, entry.name)) : [join(dir, entry.name)],
  );
}

/** Parses every document of a YAML stream; throws on any error or warning, naming the file. */
function parseYaml(text: string, where: string): Json[] {
  return parseAllDocuments(text).flatMap((doc) => {
    const problems = [...doc.errors, ...doc.warnings];
    if (problems.length > 0) throw new Error(`${where}: ${problems.map((p) => p.message).join('; ')}`);
    const value = doc.toJS() as Json;
    return value === null ? [] : [value];
  });
}

const yamlFiles = filesUnder(KUBE).filter((file) => /\.ya?ml$/.test(file));
const rel = (file: string) => relative(ROOT, file).split(sep).join('/');

interface Kustomization {
  dir: string;
  kind: 'Kustomization' | 'Component';
  resources: string[];
  components: string[];
  patches: { path?: string; patch?: string; target?: Obj }[];
  raw: Obj;
}

function loadKustomization(dir: string): Kustomization {
  const file = join(dir, 'kustomization.yaml');
  const [raw] = parseYaml(readFileSync(file, 'utf8'), rel(file));
  if (!isObj(raw)) throw new Error(`${rel(file)} is not a mapping`);
  const list = (key: string) => (raw[key] ?? []) as string[];
  return {
    dir,
    kind: raw.kind as Kustomization['kind'],
    resources: list('resources'),
    components: list('components'),
    patches: (raw.patches ?? []) as Kustomization['patches'],
    raw,
  };
}

const kustomizations = yamlFiles.filter((file) => file.endsWith(`${sep}kustomization.yaml`)).map((file) => loadKustomization(dirname(file)));

// ---------------------------------------------------------------------------
// Schemas: kubernetes-models validates types, enums, required fields and
// formats but accepts unknown fields; `unknownFields` reads the field names
// from the same package's type declarations and reports any other field.

type ModelClass = new (data: never) => { validate(): void };
const MODELS: Record<string, ModelClass> = {
  'apps/v1/Deployment': Deployment,
  'v1/ConfigMap': ConfigMap,
  'v1/Secret': Secret,
  'v1/Service': Service,
};

const modelsRequire = createRequire(require.resolve('kubernetes-models/v1'));
const declarationCache = new Map<string, { name: string; fields: Map<string, string | undefined> } | undefined>();

/** The fields of the interface a kubernetes-models .d.ts declares, each with the .d.ts of its object type (if any). */
function declaration(file: string): { name: string; fields: Map<string, string | undefined> } | undefined {
  if (declarationCache.has(file)) return declarationCache.get(file);
  const text = readFileSync(file, 'utf8');
  const local = createRequire(file);
  const imports = new Map<string, string>();
  for (const match of text.matchAll(/^import \{ (\w+) \} from "([^"]+)";$/gm)) {
    imports.set(match[1]!, local.resolve(match[2]!).replace(/\.js$/, '.d.ts'));
  }
  const body = /^export interface (\w+)(?: extends [\w, ]+)? \{\n([\s\S]*?)^\}/m.exec(text);
  let result: { name: string; fields: Map<string, string | undefined> } | undefined;
  if (body) {
    const fields = new Map<string, string | undefined>();
    for (const match of body[2]!.matchAll(/^ {4}"([^"]+)"\??: (.*)$/gm)) {
      // An object type is `IName;` or `Array<IName>;`; maps, unions and scalars are not descended into.
      const typeName = /^(?:Array<(\w+)>|(\w+));$/.exec(match[2]!);
      fields.set(match[1]!, typeName ? imports.get(typeName[1] ?? typeName[2]!) : undefined);
    }
    result = { name: body[1]!, fields };
  }
  declarationCache.set(file, result);
  return result;
}

function declarationFile(apiVersion: string, kind: string): string {
  return modelsRequire.resolve(`kubernetes-models/${apiVersion}/${kind}`).replace(/\.js$/, '.d.ts');
}

/** Paths of fields the schema does not know; `$` keys (strategic-merge directives) are allowed in patches. */
function unknownFields(value: Json, file: string, path: string, allowDirectives: boolean): string[] {
  if (Array.isArray(value)) return value.flatMap((item, i) => unknownFields(item, file, `${path}[${i}]`, allowDirectives));
  const decl = declaration(file);
  if (!isObj(value) || decl === undefined) return [];
  return Object.entries(value).flatMap(([key, child]) => {
    if (allowDirectives && key.startsWith('$')) return [];
    if (!decl.fields.has(key)) return [`${path}.${key} (not a field of ${decl.name})`];
    const childFile = decl.fields.get(key);
    return childFile === undefined ? [] : unknownFields(child, childFile, `${path}.${key}`, allowDirectives);
  });
}

/** Schema problems of one full Kubernetes object: validation errors and unknown fields. */
function schemaProblems(doc: Json, where: string): string[] {
  if (!isObj(doc) || typeof doc.apiVersion !== 'string' || typeof doc.kind !== 'string') return [`${where}: not a Kubernetes object`];
  const id = `${doc.apiVersion}/${doc.kind}`;
  const Model = MODELS[id];
  if (Model === undefined) return [`${where}: no schema for ${id} in this test; add its kubernetes-models class to MODELS`];
  const problems: string[] = [];
  try {
    new Model(doc as never).validate();
  } catch (error) {
    problems.push(`${where} ${id} ${String((error as Error).message)}`);
  }
  const unknown = unknownFields(doc, declarationFile(doc.apiVersion, doc.kind), doc.kind, false);
  return [...problems, ...unknown.map((field) => `${where}: unknown field ${field}`)];
}

/** A strategic-merge patch: every field it names must exist in the target's schema. */
function patchProblems(doc: Json, where: string): string[] {
  if (!isObj(doc) || typeof doc.apiVersion !== 'string' || typeof doc.kind !== 'string') return [`${where}: a strategic-merge patch needs apiVersion and kind`];
  if (MODELS[`${doc.apiVersion}/${doc.kind}`] === undefined) return [`${where}: no schema for ${doc.apiVersion}/${doc.kind}`];
  return unknownFields(doc, declarationFile(doc.apiVersion, doc.kind), doc.kind, true).map((field) => `${where}: unknown field ${field}`);
}

const JSON_PATCH_OPS = new Set(['add', 'remove', 'replace', 'move', 'copy', 'test']);
function isJsonPatch(docs: Json[]): boolean {
  return docs.length === 1 && Array.isArray(docs[0]) && docs[0].every((op) => isObj(op) && typeof op.op === 'string');
}
function jsonPatchProblems(ops: Json[], where: string): string[] {
  return ops.flatMap((op, i) => {
    if (!isObj(op)) return [`${where}[${i}]: not an operation`];
    const problems: string[] = [];
    if (!JSON_PATCH_OPS.has(String(op.op))) problems.push(`${where}[${i}]: unknown op ${String(op.op)}`);
    if (typeof op.path !== 'string' || !op.path.startsWith('/')) problems.push(`${where}[${i}]: path must be a JSON pointer`);
    if ((op.op === 'move' || op.op === 'copy') && (typeof op.from !== 'string' || !op.from.startsWith('/'))) problems.push(`${where}[${i}]: ${op.op} needs from`);
    if (['add', 'replace', 'test'].includes(String(op.op)) && !('value' in op)) problems.push(`${where}[${i}]: ${String(op.op)} needs value`);
    return problems;
  });
}

// ---------------------------------------------------------------------------
// Rendering

function kubectlAvailable(): boolean {
  const probe = spawnSync('kubectl', ['version', '--client=true'], { encoding: 'utf8', timeout: 15_000 });
  return probe.error === undefined && probe.status === 0;
}
const KUBECTL = kubectlAvailable();
const NO_KUBECTL = 'kubectl is not installed: `kubectl kustomize` rendering is not checked on this machine (install kubectl to run it)';
if (!KUBECTL) console.warn(`test/deploy/manifests.test.ts: ${NO_KUBECTL}; only the base's files are checked as they are.`);

interface Variant {
  name: string;
  /** A kustomization directory to render, or undefined for the base's files as they are. */
  dir: string;
  /** The sidecar is expected as a native sidecar (initContainer) or as a regular container. */
  native: boolean;
  unixSocket: boolean;
  /** Caller authentication (components/auth-token) is expected. */
  auth: boolean;
}

const tempDirs: string[] = [];
afterAll(() => {
  for (const dir of tempDirs) rmSync(dir, { recursive: true, force: true });
});

/** A kustomization outside the tree that combines both components, as a user's overlay would. */
function combinedOverlay(): string {
  const dir = mkdtempSync(join(tmpdir(), 'context-cache-kustomize-'));
  tempDirs.push(dir);
  const to = (path: string) => relative(dir, join(KUBE, path)).split(sep).join('/');
  writeFileSync(
    join(dir, 'kustomization.yaml'),
    [
      'apiVersion: kustomize.config.k8s.io/v1beta1',
      'kind: Kustomization',
      `resources: [${to('base')}]`,
      `components: [${to('components/unix-socket')}, ${to('components/auth-token')}, ${to('components/legacy-sidecar')}]`,
      '',
    ].join('\n'),
  );
  return dir;
}

/** Every directory with a kustomization of kind Kustomization, plus the components combined. */
const variants: Variant[] = [
  ...kustomizations
    .filter((k) => k.kind === 'Kustomization')
    .map((k) => {
      const name = rel(k.dir).replace(/^deploy\/kubernetes\//, '');
      return { name, dir: k.dir, native: !name.includes('legacy'), unixSocket: name.includes('unix-socket'), auth: name.includes('auth-token') };
    }),
  { name: 'unix-socket + auth-token + legacy-sidecar (combined in an overlay)', dir: '', native: false, unixSocket: true, auth: true },
];

const renderCache = new Map<Variant, Json[]>();
function render(variant: Variant): Json[] {
  let docs = renderCache.get(variant);
  if (docs === undefined) {
    const dir = variant.dir === '' ? combinedOverlay() : variant.dir;
    let output: string;
    try {
      output = execFileSync('kubectl', ['kustomize', dir], { encoding: 'utf8', timeout: 30_000, stdio: ['ignore', 'pipe', 'pipe'] });
    } catch (error) {
      const stderr = String((error as { stderr?: unknown }).stderr ?? '');
      throw new Error(`kubectl kustomize ${variant.name} failed: ${stderr || String(error)}`);
    }
    docs = parseYaml(output, `kubectl kustomize ${variant.name}`);
    renderCache.set(variant, docs);
  }
  return docs;
}

// ---------------------------------------------------------------------------
// The pod spec as the sidecar sees it

interface Container extends Obj {
  name: string;
}

interface SidecarPod {
  deployment: Obj;
  pod: Obj;
  sidecar: Container;
  /** true: in initContainers; false: in containers. */
  inInitContainers: boolean;
  app: Container[];
}

function findSidecarPod(docs: Json[]): SidecarPod {
  const found: SidecarPod[] = [];
  for (const doc of docs) {
    if (!isObj(doc) || doc.kind !== 'Deployment') continue;
    const pod = ((doc.spec as Obj).template as Obj).spec as Obj;
    const init = (pod.initContainers ?? []) as Container[];
    const regular = (pod.containers ?? []) as Container[];
    for (const [list, inInit] of [[init, true], [regular, false]] as const) {
      for (const container of list) {
        if (container.name === SIDECAR) found.push({ deployment: doc, pod, sidecar: container, inInitContainers: inInit, app: regular.filter((c) => c.name !== SIDECAR) });
      }
    }
  }
  if (found.length !== 1) throw new Error(`expected exactly one container named ${SIDECAR}, found ${found.length}`);
  return found[0]!;
}

interface ResolvedEnv {
  /** What the process sees; Secret values are placeholders, and so are files from volumes (see MOUNTED_FILES). */
  env: Record<string, string>;
  problems: string[];
  secretRefs: Record<string, Obj>;
  /** For each variable of MOUNTED_FILES that is set: where its file comes from in the pod. */
  files: Partial<Record<ConfigVariable, MountedFile>>;
}

/**
 * Variables naming a file that the sidecar reads at start-up, with what the
 * test writes in its place (the pod's file does not exist here): loadConfig
 * then gets the path of that stand-in.
 */
const MOUNTED_FILES: Partial<Record<ConfigVariable, string>> = {
  CONTEXT_CACHE_AUTH_TOKEN_FILE: 'stand-in-token-of-the-deployment-tests\n',
};

interface MountedFile {
  /** The path in the container. */
  path: string;
  mount: Obj;
  volume: Obj;
  /** The key of the Secret or ConfigMap the file holds. */
  key: string;
}

/** Where a path in a container comes from: its volumeMount, the pod's volume, and the key (through `items`). */
function mountedFile(container: Container, docs: Json[], path: string): MountedFile | undefined {
  const dir = (mount: Obj) => String(mount.mountPath).replace(/\/$/, '');
  const mount = ((container.volumeMounts ?? []) as Obj[]).find((m) => path.startsWith(`${dir(m)}/`));
  if (mount === undefined) return undefined;
  const volume = ((findSidecarPod(docs).pod.volumes ?? []) as Obj[]).find((v) => v.name === mount.name);
  if (volume === undefined) return undefined;
  const inVolume = path.slice(dir(mount).length + 1);
  const source = (volume.secret ?? volume.configMap) as Obj | undefined;
  const items = (source?.items ?? []) as Obj[];
  const item = items.find((i) => i.path === inVolume);
  return { path, mount, volume, key: item !== undefined ? String(item.key) : inVolume };
}

/** A key's value in a Secret among the manifests, or undefined when the Secret is not there (created outside them). */
function secretValue(docs: Json[], name: string, key: string): string | undefined {
  const secret = docs.find((d): d is Obj => isObj(d) && d.kind === 'Secret' && (d.metadata as Obj).name === name);
  if (secret === undefined) return undefined;
  const plain = (secret.stringData as Obj | undefined)?.[key];
  if (plain !== undefined) return String(plain);
  const encoded = (secret.data as Obj | undefined)?.[key];
  return encoded === undefined ? undefined : Buffer.from(String(encoded), 'base64').toString('utf8');
}

function tempFile(content: string): string {
  const dir = mkdtempSync(join(tmpdir(), 'context-cache-manifest-file-'));
  tempDirs.push(dir);
  writeFileSync(join(dir, 'file'), content);
  return join(dir, 'file');
}

/** The sidecar's environment as the kubelet builds it: envFrom first, env entries override. */
function resolveEnv(container: Container, docs: Json[]): ResolvedEnv {
  const env: Record<string, string> = {};
  const fromConfigMap = new Set<string>();
  const problems: string[] = [];
  const secretRefs: Record<string, Obj> = {};
  const configMap = (name: string) => docs.find((d): d is Obj => isObj(d) && d.kind === 'ConfigMap' && (d.metadata as Obj).name === name);
  for (const source of (container.envFrom ?? []) as Obj[]) {
    if (isObj(source.configMapRef)) {
      const cm = configMap(String(source.configMapRef.name));
      if (cm === undefined) {
        problems.push(`envFrom ConfigMap ${String(source.configMapRef.name)} is not among the manifests`);
        continue;
      }
      for (const [key, value] of Object.entries((cm.data ?? {}) as Obj)) {
        env[String(source.prefix ?? '') + key] = String(value);
        fromConfigMap.add(String(source.prefix ?? '') + key);
      }
    } else {
      problems.push(`envFrom ${JSON.stringify(source)}: only configMapRef can be checked; reference Secrets per variable with secretKeyRef`);
    }
  }
  for (const entry of (container.env ?? []) as Obj[]) {
    const name = String(entry.name);
    if (fromConfigMap.has(name)) problems.push(`${name} is set both in the ConfigMap and on the container; the container's value silently wins`);
    if (entry.value !== undefined) {
      env[name] = String(entry.value);
    } else if (isObj(entry.valueFrom) && isObj(entry.valueFrom.secretKeyRef)) {
      env[name] = 'secret-placeholder';
      secretRefs[name] = entry.valueFrom.secretKeyRef;
    } else if (isObj(entry.valueFrom) && isObj(entry.valueFrom.configMapKeyRef)) {
      const ref = entry.valueFrom.configMapKeyRef;
      const value = (configMap(String(ref.name))?.data as Obj | undefined)?.[String(ref.key)];
      if (value === undefined) problems.push(`${name}: ConfigMap key ${String(ref.name)}/${String(ref.key)} does not exist`);
      else env[name] = String(value);
    } else {
      problems.push(`${name}: unsupported value source ${JSON.stringify(entry.valueFrom)}`);
    }
  }
  const files: ResolvedEnv['files'] = {};
  for (const [name, standIn] of Object.entries(MOUNTED_FILES) as [ConfigVariable, string][]) {
    const path = env[name];
    if (path === undefined) continue;
    const file = mountedFile(container, docs, path);
    if (file === undefined) {
      problems.push(`${name}=${path} is not in a volume mounted into the container`);
      continue;
    }
    files[name] = file;
    env[name] = tempFile(standIn);
  }
  return { env, problems, secretRefs, files };
}

interface Listen {
  kind: 'tcp' | 'unix';
  host?: string;
  port?: number;
  path?: string;
}
function parseListen(address: string): Listen {
  if (address.startsWith('unix:')) return { kind: 'unix', path: address.slice('unix:'.length) };
  const match = /^(.*):(\d+)$/.exec(address);
  if (!match) throw new Error(`not a listen address: ${address}`);
  return { kind: 'tcp', host: match[1]!.replace(/^\[(.*)\]$/, '$1'), port: Number(match[2]) };
}
const LOOPBACK = new Set(['127.0.0.1', 'localhost', '::1']);
const ALL_INTERFACES = new Set(['0.0.0.0', '::']);

/** Kubernetes resource quantity in bytes (memory) or cores (cpu). */
function quantity(value: Json | undefined): number {
  const match = /^(\d+(?:\.\d+)?)(Ki|Mi|Gi|Ti|k|M|G|T|m)?$/.exec(String(value));
  if (!match) throw new Error(`not a quantity: ${String(value)}`);
  const units: Record<string, number> = { Ki: 2 ** 10, Mi: 2 ** 20, Gi: 2 ** 30, Ti: 2 ** 40, k: 1e3, M: 1e6, G: 1e9, T: 1e12, m: 1e-3 };
  return Number(match[1]) * (match[2] ? units[match[2]]! : 1);
}

function preStopSleepMs(container: Container): number {
  const preStop = ((container.lifecycle ?? {}) as Obj).preStop as Obj | undefined;
  if (preStop === undefined) return 0;
  if (isObj(preStop.sleep)) return Number(preStop.sleep.seconds) * 1000;
  const command = (isObj(preStop.exec) ? preStop.exec.command : []) as string[];
  if (command[0] === 'sleep' && command.length === 2 && /^\d+$/.test(command[1]!)) return Number(command[1]) * 1000;
  throw new Error(`preStop hook ${JSON.stringify(preStop)}: cannot tell how long it takes`);
}

// ---------------------------------------------------------------------------

describe('deploy/kubernetes files', () => {
  it('finds the base, the overlays and the example', () => {
    const dirs = kustomizations.map((k) => rel(k.dir));
    expect(dirs).toEqual(
      expect.arrayContaining([
        'deploy/kubernetes/base',
        'deploy/kubernetes/overlays/unix-socket',
        'deploy/kubernetes/overlays/legacy-sidecar',
        'deploy/kubernetes/overlays/auth-token',
        'deploy/kubernetes/overlays/redis-cluster',
        'deploy/kubernetes/overlays/redis-sentinel',
        'deploy/kubernetes/overlays/tracing',
        'deploy/kubernetes/examples/redis',
        'deploy/kubernetes/components/unix-socket',
        'deploy/kubernetes/components/legacy-sidecar',
        'deploy/kubernetes/components/auth-token',
        'deploy/kubernetes/components/tracing',
      ]),
    );
  });

  it('every YAML file parses, and each is a kustomization, a resource or a patch that a kustomization uses', () => {
    const used = new Set<string>();
    for (const k of kustomizations) {
      used.add(join(k.dir, 'kustomization.yaml'));
      for (const path of k.resources) used.add(resolve(k.dir, path));
      for (const patch of k.patches) if (patch.path !== undefined) used.add(resolve(k.dir, patch.path));
    }
    const problems: string[] = [];
    for (const file of yamlFiles) {
      try {
        if (parseYaml(readFileSync(file, 'utf8'), rel(file)).length === 0) problems.push(`${rel(file)}: no documents`);
      } catch (error) {
        problems.push(String((error as Error).message));
      }
      if (!used.has(file)) problems.push(`${rel(file)}: no kustomization uses it`);
    }
    expect(problems).toEqual([]);
  });

  it("every kustomization's resources, components and patches exist", () => {
    const problems: string[] = [];
    const kindOf = (dir: string) => (existsSync(join(dir, 'kustomization.yaml')) ? loadKustomization(dir).kind : undefined);
    for (const k of kustomizations) {
      const where = rel(join(k.dir, 'kustomization.yaml'));
      const expectedApi = k.kind === 'Component' ? 'kustomize.config.k8s.io/v1alpha1' : 'kustomize.config.k8s.io/v1beta1';
      if (k.kind !== 'Kustomization' && k.kind !== 'Component') problems.push(`${where}: kind ${String(k.kind)}`);
      if (k.raw.apiVersion !== expectedApi) problems.push(`${where}: apiVersion should be ${expectedApi}`);
      for (const path of k.resources) {
        const target = resolve(k.dir, path);
        if (!existsSync(target)) problems.push(`${where}: resource ${path} does not exist`);
        else if (statSync(target).isDirectory() && kindOf(target) !== 'Kustomization') problems.push(`${where}: resource ${path} is a directory without a Kustomization`);
      }
      for (const path of k.components) {
        if (kindOf(resolve(k.dir, path)) !== 'Component') problems.push(`${where}: component ${path} is not a directory with a Component`);
      }
      for (const patch of k.patches) {
        if (patch.path === undefined && patch.patch === undefined) problems.push(`${where}: a patch without path or patch`);
        if (patch.path !== undefined && !existsSync(resolve(k.dir, patch.path))) problems.push(`${where}: patch ${patch.path} does not exist`);
      }
    }
    expect(problems).toEqual([]);
  });

  it('every resource validates against the Kubernetes schemas and has no unknown fields', () => {
    const problems: string[] = [];
    let checked = 0;
    for (const k of kustomizations) {
      for (const path of k.resources) {
        const file = resolve(k.dir, path);
        if (!file.endsWith('.yaml')) continue;
        parseYaml(readFileSync(file, 'utf8'), rel(file)).forEach((doc, i) => {
          checked++;
          problems.push(...schemaProblems(doc, `${rel(file)}#${i}`));
        });
      }
    }
    expect(problems).toEqual([]);
    // configmap.yaml, deployment.yaml, and the example's Deployment and Service.
    expect(checked).toBeGreaterThanOrEqual(4);
  });

  it('every patch names only real fields and valid operations', () => {
    const problems: string[] = [];
    let checked = 0;
    for (const k of kustomizations) {
      for (const patch of k.patches) {
        if (patch.path === undefined) continue;
        const file = resolve(k.dir, patch.path);
        const docs = parseYaml(readFileSync(file, 'utf8'), rel(file));
        checked++;
        if (isJsonPatch(docs)) {
          if (patch.target === undefined) problems.push(`${rel(file)}: a JSON patch needs a target in ${rel(k.dir)}/kustomization.yaml`);
          problems.push(...jsonPatchProblems(docs[0] as Json[], rel(file)));
        } else {
          for (const doc of docs) problems.push(...patchProblems(doc, rel(file)));
        }
      }
    }
    expect(problems).toEqual([]);
    expect(checked).toBeGreaterThanOrEqual(2);
  });

  it('the schema checks do reject a broken manifest (so the checks above can fail)', () => {
    const [good] = parseYaml(readFileSync(join(KUBE, 'base', 'deployment.yaml'), 'utf8'), 'deployment.yaml');
    expect(schemaProblems(good!, 'good')).toEqual([]);
    const broken = JSON.parse(JSON.stringify(good)) as Obj;
    const pod = ((broken.spec as Obj).template as Obj).spec as Obj;
    pod.enableServiceLink = false; // misspelt: Kubernetes would drop it and keep service links on
    const sidecar = (pod.initContainers as Obj[])[0]!;
    ((sidecar.readinessProbe as Obj).grpc as Obj).port = 'grpc-health'; // gRPC probes take a number only
    sidecar.restartpolicy = 'Always'; // wrong case
    const problems = schemaProblems(broken, 'broken');
    expect(problems.join('\n')).toMatch(/readinessProbe\/grpc\/port must be integer/);
    expect(problems.join('\n')).toMatch(/spec\.template\.spec\.enableServiceLink \(not a field of IPodSpec\)/);
    expect(problems.join('\n')).toMatch(/initContainers\[0\]\.restartpolicy \(not a field of IContainer\)/);
    expect(patchProblems({ apiVersion: 'apps/v1', kind: 'Deployment', spec: { replica: 2 } }, 'patch')).toHaveLength(1);
    expect(jsonPatchProblems([{ op: 'mov', path: 'spec' }], 'ops')).toHaveLength(2);
  });
});

describe.each(variants)('rendered: $name', (variant) => {
  const renderedOrSkip = (ctx: { skip: (condition: boolean, note?: string) => void }) => {
    ctx.skip(!KUBECTL, NO_KUBECTL);
    return render(variant);
  };

  it('kubectl kustomize renders it, and every object validates against the schemas', (ctx) => {
    const docs = renderedOrSkip(ctx);
    expect(docs.length).toBeGreaterThan(0);
    expect(docs.flatMap((doc, i) => schemaProblems(doc, `#${i}`))).toEqual([]);
  });

  it(variant.native ? 'the sidecar is a native sidecar: an initContainer with restartPolicy Always' : 'the sidecar is a regular container without restartPolicy', (ctx) => {
    const { sidecar, inInitContainers, pod, app } = findSidecarPod(renderedOrSkip(ctx));
    expect(inInitContainers).toBe(variant.native);
    if (variant.native) {
      expect(sidecar.restartPolicy).toBe('Always');
    } else {
      expect(sidecar).not.toHaveProperty('restartPolicy');
      // Container-level restartPolicy is for init containers only (before Kubernetes 1.34).
      expect(((pod.containers ?? []) as Container[]).filter((c) => 'restartPolicy' in c)).toEqual([]);
      // The first container starts first.
      expect((pod.containers as Container[])[0]!.name).toBe(SIDECAR);
    }
    expect(app.length).toBeGreaterThan(0);
    for (const container of [sidecar, ...app, ...((pod.initContainers ?? []) as Container[])]) {
      expect(container.image, `image of ${container.name}`).toMatch(/^[\w./-]+(:[\w.-]+)?(@sha256:[0-9a-f]{64})?$/);
    }
  });

  it('every variable set on the sidecar is one src/config.ts reads, and loadConfig accepts the values', (ctx) => {
    const docs = renderedOrSkip(ctx);
    const { sidecar } = findSidecarPod(docs);
    const { env, problems } = resolveEnv(sidecar, docs);
    expect(problems).toEqual([]);
    const unknown = Object.keys(env).filter((name) => !(name in CONFIG_VARIABLES));
    expect(unknown, 'not in CONFIG_VARIABLES').toEqual([]);
    expect(Object.keys(env).length).toBeGreaterThanOrEqual(5);
    expect(() => loadConfig(env)).not.toThrow();
  });

  it('traces exactly where components/tracing is used, to a Collector over OTLP', (ctx) => {
    const docs = renderedOrSkip(ctx);
    const { sidecar } = findSidecarPod(docs);
    const tracing = loadConfig(resolveEnv(sidecar, docs).env).tracing;
    expect(tracing !== undefined, 'tracing on').toBe(variant.name === 'overlays/tracing');
    if (tracing !== undefined) expect(tracing).toMatchObject({ endpoint: expect.stringMatching(/^http:\/\/.+:4318\/v1\/traces$/), sampler: 'parentbased_traceidratio', traceKeys: false });
  });

  it('the probes dial the health-only port that CONTEXT_CACHE_HEALTH_LISTEN binds, for health services the sidecar reports', (ctx) => {
    const docs = renderedOrSkip(ctx);
    const { sidecar, deployment } = findSidecarPod(docs);
    const config: Config = loadConfig(resolveEnv(sidecar, docs).env);
    expect(config.healthListen, 'CONTEXT_CACHE_HEALTH_LISTEN must be set: kubelet probes dial the pod IP').toBeDefined();
    const health = parseListen(config.healthListen!);
    expect(health.kind).toBe('tcp');
    expect(ALL_INTERFACES.has(health.host!), `health listener ${config.healthListen} must bind every interface for the kubelet`).toBe(true);

    for (const name of ['startupProbe', 'readinessProbe', 'livenessProbe']) {
      const probe = sidecar[name] as Obj | undefined;
      expect(probe, name).toBeDefined();
      const grpc = probe!.grpc as Obj | undefined;
      expect(grpc, `${name} is a gRPC probe`).toBeDefined();
      expect(grpc!.port, `${name} port`).toBe(health.port);
      expect([HEALTH_SERVICE_OVERALL, HEALTH_SERVICE_CACHE], `${name} service`).toContain(grpc!.service ?? '');
    }
    // Readiness reflects the cache API itself.
    expect(((sidecar.readinessProbe as Obj).grpc as Obj).service).toBe(HEALTH_SERVICE_CACHE);
    // Prometheus scrapes the admin port the sidecar binds.
    if (config.adminListen !== undefined) {
      const annotations = (((deployment.spec as Obj).template as Obj).metadata as Obj).annotations as Record<string, string> | undefined;
      if (annotations?.['prometheus.io/port'] !== undefined) expect(Number(annotations['prometheus.io/port'])).toBe(parseListen(config.adminListen).port);
    }

    // Declared ports are exactly the ports reachable on the pod IP.
    const reachable = [config.listen, config.healthListen!, ...(config.adminListen ? [config.adminListen] : [])]
      .map(parseListen)
      .filter((l) => l.kind === 'tcp' && !LOOPBACK.has(l.host!));
    const declared = ((sidecar.ports ?? []) as Obj[]).map((p) => p.containerPort);
    expect(declared.sort()).toEqual(reachable.map((l) => l.port).sort());
  });

  it('the API stays inside the pod (loopback or a Unix socket on a shared volume), where the app dials it', (ctx) => {
    const docs = renderedOrSkip(ctx);
    const { sidecar, app, pod } = findSidecarPod(docs);
    const listen = parseListen(loadConfig(resolveEnv(sidecar, docs).env).listen);
    expect(listen.kind).toBe(variant.unixSocket ? 'unix' : 'tcp');
    const targets = app.flatMap((c) => ((c.env ?? []) as Obj[]).filter((e) => e.name === 'CONTEXT_CACHE_TARGET').map((e) => String(e.value)));
    expect(targets.length, 'the app is told where the sidecar is').toBeGreaterThan(0);
    if (listen.kind === 'tcp') {
      expect(LOOPBACK.has(listen.host!), `API on ${listen.host}: must be loopback`).toBe(true);
      for (const target of targets) expect(parseListen(target)).toEqual(listen);
    } else {
      for (const target of targets) expect(target).toBe(`unix:${listen.path}`);
      const socketDir = dirname(listen.path!);
      const mountOf = (c: Container) => ((c.volumeMounts ?? []) as Obj[]).find((m) => m.mountPath === socketDir);
      const sidecarMount = mountOf(sidecar);
      expect(sidecarMount, `sidecar mounts ${socketDir}`).toBeDefined();
      const volume = ((pod.volumes ?? []) as Obj[]).find((v) => v.name === sidecarMount!.name);
      expect(volume?.emptyDir, 'the socket directory is an emptyDir').toBeDefined();
      for (const c of app) expect(mountOf(c)?.name, `${c.name} mounts the socket volume`).toBe(sidecarMount!.name);
    }
  });

  it(
    variant.auth
      ? 'caller authentication: the token file is in a read-only Secret volume (no subPath, so rotations arrive), the app mounts it too, and a Secret among the manifests is a placeholder the sidecar refuses'
      : 'no caller authentication configured (CONTEXT_CACHE_AUTH_TOKEN_FILE unset)',
    (ctx) => {
      const docs = renderedOrSkip(ctx);
      const { sidecar, app } = findSidecarPod(docs);
      const { files, problems } = resolveEnv(sidecar, docs);
      expect(problems).toEqual([]);
      const token = files.CONTEXT_CACHE_AUTH_TOKEN_FILE;
      expect(token !== undefined, 'CONTEXT_CACHE_AUTH_TOKEN_FILE is set').toBe(variant.auth);
      if (token === undefined) return;
      const secret = token.volume.secret as Obj | undefined;
      expect(secret, `volume ${String(token.volume.name)} is a Secret`).toBeDefined();
      expect(secret!.optional ?? false, 'a missing Secret must keep the pod from starting, not start it open').toBe(false);
      expect(token.mount.readOnly, 'mounted read-only').toBe(true);
      expect(token.mount.subPath, 'a subPath mount never sees a rotated Secret').toBeUndefined();
      // The app reads the same file for the token it sends, and sees a rotation when the sidecar does.
      for (const container of app) expect(mountedFile(container, docs, token.path)?.volume.name, `${container.name} mounts the token`).toBe(token.volume.name);
      const value = secretValue(docs, String(secret!.secretName), token.key);
      if (variant.name === 'overlays/auth-token') expect(value, 'the overlay shows the Secret').toBeDefined();
      if (value !== undefined) {
        // A token in git is no secret: the manifests' value must be a placeholder that stops start-up.
        const placeholder = tempFile(value);
        expect(() => loadConfig({ CONTEXT_CACHE_AUTH_TOKEN_FILE: placeholder })).toThrow(ConfigError);
        expect(() => loadConfig({ CONTEXT_CACHE_AUTH_TOKEN_FILE: placeholder })).toThrow(/^CONTEXT_CACHE_AUTH_TOKEN_FILE: /);
      }
    },
  );

  it('terminationGracePeriodSeconds covers preStop plus CONTEXT_CACHE_SHUTDOWN_GRACE, with margin', (ctx) => {
    const docs = renderedOrSkip(ctx);
    const { sidecar, pod } = findSidecarPod(docs);
    const config = loadConfig(resolveEnv(sidecar, docs).env);
    const graceMs = Number(pod.terminationGracePeriodSeconds ?? 30) * 1000;
    const preStopMs = preStopSleepMs(sidecar);
    if (!variant.native) expect(preStopMs, 'a regular sidecar container needs a preStop delay while the app drains').toBeGreaterThan(0);
    // 5 s for the app's own drain (native sidecars stop after the app) and the final kill.
    expect(graceMs).toBeGreaterThanOrEqual(preStopMs + config.shutdownGraceMs + 5000);
  });

  it('memory: requests and limits are set, the limit is at least twice CONTEXT_CACHE_L1_MAX_BYTES', (ctx) => {
    const docs = renderedOrSkip(ctx);
    const { sidecar } = findSidecarPod(docs);
    const config = loadConfig(resolveEnv(sidecar, docs).env);
    const resources = sidecar.resources as { requests?: Obj; limits?: Obj };
    expect(resources.requests?.cpu).toBeDefined();
    const limit = quantity(resources.limits?.memory);
    const request = quantity(resources.requests?.memory);
    expect(limit).toBeGreaterThanOrEqual(2 * config.l1MaxBytes);
    // Requests = limits for memory: an overcommitted node OOM-kills the largest overuser first.
    expect(request).toBe(limit);
  });

  it('security: non-root, read-only root filesystem, no capabilities, no privilege escalation, RuntimeDefault seccomp', (ctx) => {
    const docs = renderedOrSkip(ctx);
    const { sidecar, app, pod } = findSidecarPod(docs);
    const podSecurity = (pod.securityContext ?? {}) as Obj;
    for (const container of [sidecar, ...app]) {
      const own = (container.securityContext ?? {}) as Obj;
      const effective = (key: string) => own[key] ?? podSecurity[key];
      expect(effective('runAsNonRoot'), `${container.name} runAsNonRoot`).toBe(true);
      expect(Number(effective('runAsUser')), `${container.name} runAsUser`).toBeGreaterThan(0);
      expect((effective('seccompProfile') as Obj | undefined)?.type, `${container.name} seccomp`).toBe('RuntimeDefault');
      expect(own.readOnlyRootFilesystem, `${container.name} readOnlyRootFilesystem`).toBe(true);
      expect(own.allowPrivilegeEscalation, `${container.name} allowPrivilegeEscalation`).toBe(false);
      expect((own.capabilities as Obj | undefined)?.drop, `${container.name} capabilities`).toEqual(['ALL']);
      expect(own.privileged ?? false).toBe(false);
    }
  });

  it('no service links (REDIS_PORT=tcp://... would break the config), and REDIS_PASSWORD comes from an optional Secret', (ctx) => {
    const docs = renderedOrSkip(ctx);
    const { sidecar, pod } = findSidecarPod(docs);
    expect(pod.enableServiceLinks).toBe(false);
    const { secretRefs } = resolveEnv(sidecar, docs);
    expect(secretRefs.REDIS_PASSWORD).toMatchObject({ name: expect.any(String), key: expect.any(String), optional: true });
    // The password must never be a literal in a ConfigMap or on the container.
    const literal = [...((sidecar.env ?? []) as Obj[]).filter((e) => e.name === 'REDIS_PASSWORD' && 'value' in e)];
    const inConfigMaps = docs.filter((d) => isObj(d) && d.kind === 'ConfigMap' && isObj(d.data) && 'REDIS_PASSWORD' in d.data);
    expect([...literal, ...inConfigMaps]).toEqual([]);
    // What the kubelet would inject for each Service here, were links on: the base's REDIS_HOST
    // points at a Service named "redis", whose REDIS_PORT the sidecar rejects.
    const injected = docs
      .filter((d): d is Obj => isObj(d) && d.kind === 'Service')
      .map((d) => `${String((d.metadata as Obj).name).toUpperCase().replace(/-/g, '_')}_PORT`);
    if (variant.name === 'examples/redis') expect(injected).toContain('REDIS_PORT');
  });
});

describe('the base without kustomize (what is checked where kubectl is missing)', () => {
  it('its files as they are hold a native sidecar whose env and probes fit src/config.ts', () => {
    const base = kustomizations.find((k) => rel(k.dir) === 'deploy/kubernetes/base')!;
    expect(base.patches).toEqual([]);
    const docs = base.resources.flatMap((path) => parseYaml(readFileSync(resolve(base.dir, path), 'utf8'), path));
    const { sidecar, inInitContainers } = findSidecarPod(docs);
    expect(inInitContainers).toBe(true);
    expect(sidecar.restartPolicy).toBe('Always');
    const { env, problems } = resolveEnv(sidecar, docs);
    expect(problems).toEqual([]);
    expect(Object.keys(env).filter((name) => !(name in CONFIG_VARIABLES))).toEqual([]);
    const config = loadConfig(env);
    for (const name of ['startupProbe', 'readinessProbe', 'livenessProbe']) {
      expect(((sidecar[name] as Obj).grpc as Obj).port).toBe(parseListen(config.healthListen!).port);
    }
  });
});
