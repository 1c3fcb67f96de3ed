/**
 * The Dockerfile without a container engine (none runs on this machine or in
 * CI): its steps are parsed and checked against package.json, tsconfig.json,
 * src/config.ts, .dockerignore and the Kubernetes manifests, and then
 * replayed: the build stage's COPY set is copied to a temporary directory and
 * `npm run build` runs there; the runtime stage is assembled from that dist/
 * and the production dependencies only, and its CMD runs with the image's
 * ENV (free ports substituted) until it answers gRPC health checks and exits
 * 0 on SIGTERM.
 *
 * Stand-ins, because they need the registry: `npm ci` is the repository's
 * node_modules (installed from the same package-lock.json, which is checked
 * to match package.json), `npm ci --omit=dev` is the non-dev packages of
 * package-lock.json linked from it.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { cpSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, symlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, dirname, join, posix, relative, resolve, sep } from 'node:path';
import { credentials, Metadata, status } from '@grpc/grpc-js';
import { parse as parseYaml } from 'yaml';
import { afterAll, describe, expect, it } from 'vitest';
import { ContextCacheClient } from '../../src/client';
import { CONFIG_VARIABLES, loadConfig } from '../../src/config';
import { HealthCheckResponse_ServingStatus, HealthClient } from '../../src/gen/health/v1/health';
import { HEALTH_SERVICE_CACHE, HEALTH_SERVICE_OVERALL } from '../../src/server/grpc-server';
import { freePort } from '../helpers/redis';
import { rejectionOf, waitFor } from '../helpers/wait';

const ROOT = resolve(__dirname, '..', '..');
const read = (path: string) => readFileSync(join(ROOT, path), 'utf8');
const packageJson = JSON.parse(read('package.json')) as {
  scripts: Record<string, string>;
  dependencies: Record<string, string>;
  devDependencies: Record<string, string>;
};

// ---------------------------------------------------------------------------
// Dockerfile parsing

interface Instruction {
  keyword: string;
  flags: Record<string, string>;
  args: string;
  line: number;
}
interface Stage {
  name: string | undefined;
  image: string;
  instructions: Instruction[];
}

function parseDockerfile(text: string): Stage[] {
  const globalArgs: Record<string, string> = {};
  const stages: Stage[] = [];
  const lines = text.split('\n');
  for (let i = 0; i < lines.length; i++) {
    const start = i + 1;
    let line = lines[i]!.trim();
    if (line === '' || line.startsWith('#')) continue;
    while (line.endsWith('\\')) {
      line = line.slice(0, -1);
      // Comment lines inside a continuation are dropped, as Docker does.
      do i++;
      while (i < lines.length && lines[i]!.trim().startsWith('#'));
      line += ` ${(lines[i] ?? '').trim()}`;
    }
    const [, keyword, rest] = /^(\S+)\s*(.*)$/.exec(line)!;
    const flags: Record<string, string> = {};
    let args = rest!;
    for (let flag = /^--([\w-]+)(?:=(\S*))?\s+/.exec(args); flag; flag = /^--([\w-]+)(?:=(\S*))?\s+/.exec(args)) {
      flags[flag[1]!] = flag[2] ?? 'true';
      args = args.slice(flag[0].length);
    }
    const instruction: Instruction = { keyword: keyword!.toUpperCase(), flags, args: args.trim(), line: start };
    if (instruction.keyword === 'ARG' && stages.length === 0) {
      const [name, value = ''] = instruction.args.split('=');
      globalArgs[name!] = value;
    } else if (instruction.keyword === 'FROM') {
      const substituted = instruction.args.replace(/\$\{(\w+)\}|\$(\w+)/g, (_, a: string | undefined, b: string | undefined) => globalArgs[(a ?? b)!] ?? '');
      const [, image, name] = /^(\S+)(?:\s+AS\s+(\S+))?$/i.exec(substituted)!;
      stages.push({ name, image: image!, instructions: [] });
    } else {
      if (stages.length === 0) throw new Error(`Dockerfile:${start}: ${instruction.keyword} before FROM`);
      stages.at(-1)!.instructions.push(instruction);
    }
  }
  return stages;
}

/** Splits on whitespace, keeping double-quoted strings together (quotes removed). */
function words(text: string): string[] {
  return [...text.matchAll(/"((?:[^"\\]|\\.)*)"|(\S+)/g)].map((m) => (m[1] !== undefined ? m[1].replace(/\\(.)/g, '$1') : m[2]!));
}

function envOf(instructions: Instruction[]): Record<string, string> {
  const env: Record<string, string> = {};
  for (const { args } of instructions.filter((i) => i.keyword === 'ENV')) {
    const parts = words(args);
    if (parts.length > 0 && !parts[0]!.includes('=')) {
      env[parts[0]!] = parts.slice(1).join(' '); // legacy `ENV NAME value`
    } else {
      for (const part of parts) env[part.slice(0, part.indexOf('='))] = part.slice(part.indexOf('=') + 1);
    }
  }
  return env;
}

/** Files that nothing reads at run time: the only ones a `find node_modules … -delete` step may remove. */
const NOT_READ_AT_RUN_TIME = ['*.d.ts', '*.d.mts', '*.d.cts', '*.map', '*.md'];

/** The name patterns of a prune step (`find node_modules -type f \( -name P -o … \) -delete`); undefined for any other command. */
function prunedPatterns(command: string): string[] | undefined {
  const match = /^find node_modules -type f \\\( (.+) \\\) -delete$/.exec(command);
  if (!match) return undefined;
  const terms = match[1]!.split(' -o ');
  const patterns = terms.map((term) => /^-name '([^']+)'$/.exec(term)?.[1]);
  return patterns.every((pattern) => pattern !== undefined) ? (patterns as string[]) : undefined;
}

/** The commands of a RUN instruction, split on && (the Dockerfile uses nothing fancier). */
const commandsOf = (run: Instruction) => run.args.split('&&').map((c) => c.trim().replace(/\s+/g, ' '));
const execForm = (instruction: Instruction | undefined) => (instruction && instruction.args.startsWith('[') ? (JSON.parse(instruction.args) as string[]) : undefined);
const listenPort = (address: string) => Number(/:(\d+)$/.exec(address)?.[1]);
const listenHost = (address: string) => address.slice(0, address.lastIndexOf(':')).replace(/^\[(.*)\]$/, '$1');

const stages = parseDockerfile(read('Dockerfile'));
const runtime = stages.at(-1)!;
const stageNamed = (name: string) => stages.find((s) => s.name === name);
const runtimeEnv = envOf(runtime.instructions);

// ---------------------------------------------------------------------------
// .dockerignore

interface IgnoreRule {
  negate: boolean;
  regex: RegExp;
}
const ignoreRules: IgnoreRule[] = read('.dockerignore')
  .split('\n')
  .map((line) => line.trim())
  .filter((line) => line !== '' && !line.startsWith('#'))
  .map((line) => {
    const negate = line.startsWith('!');
    const pattern = posix.normalize((negate ? line.slice(1) : line).replace(/^\/+|\/+$/g, ''));
    const source = pattern
      .split(/(\*\*|\*|\?)/)
      .map((part) => (part === '**' ? '.*' : part === '*' ? '[^/]*' : part === '?' ? '[^/]' : part.replace(/[.+^${}()|[\]\\]/g, '\\$&')))
      .join('');
    return { negate, regex: new RegExp(`^${source}$`) };
  });

/** Docker's rule: the last pattern matching the path or one of its parent directories decides. */
function excludedFromContext(path: string): boolean {
  const candidates = path.split('/').map((_, i, parts) => parts.slice(0, i + 1).join('/'));
  let excluded = false;
  for (const rule of ignoreRules) {
    if (candidates.some((candidate) => rule.regex.test(candidate))) excluded = !rule.negate;
  }
  return excluded;
}

function filesUnder(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((entry) =>
    entry.isDirectory() ? filesUnder(join(dir, entry.name)) : [join(dir, entry.name)],
  );
}
const contextPath = (file: string) => relative(ROOT, file).split(sep).join('/');

// ---------------------------------------------------------------------------

describe('Dockerfile', () => {
  it('builds in stages, each from a maintained Node.js 24 slim image, the major the npm scripts run on', () => {
    expect(stages.length).toBeGreaterThanOrEqual(2);
    expect(runtime.name).toBe('runtime');
    for (const stage of stages) expect(stage.image, `stage ${stage.name}`).toMatch(/^node:24-(bookworm-)?slim(@sha256:[0-9a-f]{64})?$/);
    // package.json's devDependency `node` is the Node.js that npm scripts use (npm run build included).
    expect(packageJson.devDependencies.node).toMatch(/^\^?24\./);
  });

  it('runs only npm commands that package.json and package-lock.json support', () => {
    const lock = JSON.parse(read('package-lock.json')) as { packages: Record<string, { dependencies?: object; devDependencies?: object }> };
    const problems: string[] = [];
    let commands = 0;
    for (const stage of stages) {
      const copied = new Set<string>();
      for (const instruction of stage.instructions) {
        if (instruction.keyword === 'COPY' && instruction.flags.from === undefined) for (const source of words(instruction.args).slice(0, -1)) copied.add(source);
        if (instruction.keyword !== 'RUN') continue;
        for (const command of commandsOf(instruction)) {
          commands++;
          const script = /^npm run (\S+)$/.exec(command)?.[1];
          if (command === 'npm ci' || command === 'npm ci --omit=dev') {
            // npm ci installs exactly the lockfile and fails when it does not match package.json.
            if (!copied.has('package.json') || !copied.has('package-lock.json')) problems.push(`line ${instruction.line}: ${command} before package.json and package-lock.json are copied`);
          } else if (script !== undefined) {
            if (packageJson.scripts[script] === undefined) problems.push(`line ${instruction.line}: no script "${script}" in package.json`);
          } else if (prunedPatterns(command) !== undefined) {
            const unsafe = prunedPatterns(command)!.filter((pattern) => !NOT_READ_AT_RUN_TIME.includes(pattern));
            if (unsafe.length > 0) problems.push(`line ${instruction.line}: the prune step deletes ${unsafe.join(', ')}, which may be read at run time`);
            if (!stage.instructions.slice(0, stage.instructions.indexOf(instruction) + 1).some((i) => i.keyword === 'RUN' && commandsOf(i).includes('npm ci --omit=dev'))) problems.push(`line ${instruction.line}: prune step before npm ci --omit=dev`);
          } else {
            problems.push(`line ${instruction.line}: "${command}" is not a step this test knows how to check`);
          }
        }
      }
    }
    expect(problems).toEqual([]);
    expect(commands).toBeGreaterThanOrEqual(3);
    expect(lock.packages['']!.dependencies).toEqual(packageJson.dependencies);
    expect(lock.packages['']!.devDependencies).toEqual(packageJson.devDependencies);
  });

  it('the runtime stage gets production dependencies (npm ci --omit=dev) and the build output only', () => {
    const copies = runtime.instructions.filter((i) => i.keyword === 'COPY');
    const fromStage = (source: string) => {
      const copy = copies.find((c) => c.flags.from !== undefined && words(c.args)[0]!.endsWith(source));
      expect(copy, `runtime COPY --from=... ${source}`).toBeDefined();
      return stageNamed(copy!.flags.from!)!;
    };
    const runs = (stage: Stage) => stage.instructions.filter((i) => i.keyword === 'RUN').flatMap(commandsOf);
    const modules = runs(fromStage('/node_modules'));
    expect(modules[0]).toBe('npm ci --omit=dev');
    expect(modules.slice(1).every((command) => prunedPatterns(command) !== undefined), `after npm ci --omit=dev only prune steps: ${modules.join('; ')}`).toBe(true);
    expect(runs(fromStage('/dist'))).toContain('npm run build');
    expect(runs(runtime)).toEqual([]);
    // From the build context: package.json only (read at run time for the version).
    expect(copies.filter((c) => c.flags.from === undefined).flatMap((c) => words(c.args).slice(0, -1))).toEqual(['package.json']);
  });

  it('CMD is exec form and starts dist/main.js, which npm run build compiles from src/main.ts', () => {
    const cmd = execForm(runtime.instructions.findLast((i) => i.keyword === 'CMD'));
    expect(cmd, 'CMD ["node", ...]: exec form, so node is PID 1 and gets SIGTERM').toEqual(['node', 'dist/main.js']);
    const entrypoint = runtime.instructions.findLast((i) => i.keyword === 'ENTRYPOINT');
    expect(entrypoint === undefined || execForm(entrypoint) !== undefined, 'a shell-form ENTRYPOINT would swallow SIGTERM').toBe(true);
    expect(packageJson.scripts.build).toBe('tsc -p tsconfig.json');
    const tsconfig = JSON.parse(read('tsconfig.json')) as { compilerOptions: { rootDir: string; outDir: string } };
    const target = cmd![1]!;
    expect(posix.normalize(target)).toBe(posix.join(tsconfig.compilerOptions.outDir, 'main.js'));
    expect(existsSync(join(ROOT, tsconfig.compilerOptions.rootDir, 'main.ts'))).toBe(true);
    expect(packageJson.scripts.start).toBe(`node ${target}`);
  });

  it('runs as a numeric non-root user, the one the Kubernetes manifests declare', () => {
    const user = runtime.instructions.findLast((i) => i.keyword === 'USER')?.args;
    expect(user, 'numeric, so that runAsNonRoot can verify it').toMatch(/^\d+(:\d+)?$/);
    const [uid, gid] = user!.split(':').map(Number);
    expect(uid).toBeGreaterThan(0);
    const deployment = parseYaml(read('deploy/kubernetes/base/deployment.yaml')) as { spec: { template: { spec: { securityContext: Record<string, unknown> } } } };
    const podSecurity = deployment.spec.template.spec.securityContext;
    expect(podSecurity.runAsUser).toBe(uid);
    if (gid !== undefined) expect(podSecurity.runAsGroup).toBe(gid);
  });

  it('ENV: known variables that loadConfig accepts, the API on loopback, health and admin on every interface; EXPOSE lists their ports', () => {
    // Besides ours, only glibc's allocator tunables and V8 flags (read by the C library and by node, not by loadConfig).
    const ALLOCATOR = ['MALLOC_ARENA_MAX', 'MALLOC_MMAP_THRESHOLD_', 'MALLOC_TRIM_THRESHOLD_'];
    expect(Object.keys(runtimeEnv).filter((name) => !(name in CONFIG_VARIABLES) && !ALLOCATOR.includes(name) && name !== 'NODE_OPTIONS')).toEqual([]);
    for (const name of ALLOCATOR) if (name in runtimeEnv) expect(runtimeEnv[name], name).toMatch(/^\d+$/);
    // Only V8 heap flags: nothing that changes what the code does.
    if ('NODE_OPTIONS' in runtimeEnv) expect(runtimeEnv.NODE_OPTIONS).toMatch(/^(--max-(semi|old)-space-size=\d+\s*)+$/);
    const config = loadConfig(runtimeEnv);
    expect(['127.0.0.1', '::1']).toContain(listenHost(config.listen));
    expect(config.healthListen).toBeDefined();
    expect(['0.0.0.0', '::']).toContain(listenHost(config.healthListen!));
    const exposed = runtime.instructions.filter((i) => i.keyword === 'EXPOSE').flatMap((i) => words(i.args).map((p) => Number(p.replace(/\/tcp$/, ''))));
    expect(config.adminListen).toBeDefined();
    expect(['0.0.0.0', '::']).toContain(listenHost(config.adminListen!));
    expect(exposed.sort()).toEqual([listenPort(config.listen), listenPort(config.healthListen!), listenPort(config.adminListen!)].sort());
  });

  it('.dockerignore lets in what the COPY steps need and keeps the rest out', () => {
    const sources = stages.flatMap((s) => s.instructions.filter((i) => i.keyword === 'COPY' && i.flags.from === undefined).flatMap((i) => words(i.args).slice(0, -1)));
    expect(sources.length).toBeGreaterThan(0);
    const missing: string[] = [];
    for (const source of sources) {
      const path = join(ROOT, source);
      if (!existsSync(path)) {
        missing.push(`${source} does not exist`);
        continue;
      }
      const files = statSync(path).isDirectory() ? filesUnder(path) : [path];
      for (const file of files) if (excludedFromContext(contextPath(file))) missing.push(`${contextPath(file)} is excluded by .dockerignore`);
    }
    expect(missing).toEqual([]);
    for (const path of ['node_modules/typescript/package.json', 'dist/main.js', '.git/HEAD', '.env', 'test/smoke.test.ts', 'deploy/README.md', 'Dockerfile']) {
      expect(excludedFromContext(path), path).toBe(true);
    }
  });
});

// ---------------------------------------------------------------------------
// Replay

interface Replayed {
  root: string;
  workdir: string;
  log: string[];
}

/** Maps a path inside the image to the stage's directory on this machine. */
const inStage = (stage: Replayed, path: string) => join(stage.root, posix.resolve(stage.workdir, path));

function copyInto(sourcePath: string, destination: string, filter: (source: string) => boolean): void {
  if (statSync(sourcePath).isDirectory()) {
    mkdirSync(destination, { recursive: true });
    // A directory source copies its contents, as COPY does.
    cpSync(sourcePath, destination, { recursive: true, filter, verbatimSymlinks: true });
  } else {
    mkdirSync(dirname(destination), { recursive: true });
    cpSync(sourcePath, destination);
  }
}

/** `npm ci --omit=dev`: every package of the lockfile that is not dev-only, linked from the repository's node_modules. */
function linkProductionDependencies(workdir: string): string[] {
  const lock = JSON.parse(readFileSync(join(workdir, 'package-lock.json'), 'utf8')) as { packages: Record<string, { dev?: boolean }> };
  const linked: string[] = [];
  for (const [key, entry] of Object.entries(lock.packages)) {
    const name = /^node_modules\/((?:@[^/]+\/)?[^/]+)$/.exec(key)?.[1];
    if (name === undefined || entry.dev === true) continue;
    const source = join(ROOT, 'node_modules', name);
    if (!existsSync(source)) continue; // an optional package for another platform
    mkdirSync(dirname(join(workdir, 'node_modules', name)), { recursive: true });
    symlinkSync(source, join(workdir, 'node_modules', name), 'dir');
    linked.push(name);
  }
  return linked;
}

function replay(all: Stage[], temp: string): Map<string, Replayed> {
  const done = new Map<string, Replayed>();
  all.forEach((stage, index) => {
    const state: Replayed = { root: join(temp, stage.name ?? String(index)), workdir: '/', log: [] };
    mkdirSync(state.root, { recursive: true });
    for (const instruction of stage.instructions) {
      const where = `Dockerfile:${instruction.line}`;
      switch (instruction.keyword) {
        case 'WORKDIR':
          state.workdir = posix.resolve(state.workdir, instruction.args);
          mkdirSync(inStage(state, '.'), { recursive: true });
          break;
        case 'COPY': {
          const parts = words(instruction.args);
          const destination = parts.pop()!;
          const toDirectory = destination.endsWith('/') || parts.length > 1;
          const from = instruction.flags.from === undefined ? undefined : done.get(instruction.flags.from);
          if (instruction.flags.from !== undefined && from === undefined) throw new Error(`${where}: no earlier stage ${instruction.flags.from}`);
          for (const source of parts) {
            const sourcePath = from === undefined ? join(ROOT, source) : inStage(from, source);
            if (!existsSync(sourcePath)) throw new Error(`${where}: COPY source ${source} does not exist`);
            if (from === undefined && excludedFromContext(source)) throw new Error(`${where}: ${source} is not in the build context (.dockerignore)`);
            const target = inStage(state, toDirectory ? posix.join(destination, basename(source)) : destination);
            const filter = from === undefined ? (file: string) => !excludedFromContext(contextPath(file)) : () => true;
            copyInto(sourcePath, target, filter);
            state.log.push(`COPY ${source}`);
          }
          break;
        }
        case 'RUN':
          for (const command of commandsOf(instruction)) {
            const workdir = inStage(state, '.');
            if (command === 'npm ci' || command === 'npm ci --omit=dev') {
              for (const file of ['package.json', 'package-lock.json']) if (!existsSync(join(workdir, file))) throw new Error(`${where}: ${command} without ${file}`);
              if (command === 'npm ci') symlinkSync(join(ROOT, 'node_modules'), join(workdir, 'node_modules'), 'dir');
              else state.log.push(`linked ${linkProductionDependencies(workdir).length} production packages`);
            } else if (prunedPatterns(command) !== undefined) {
              // The replay's node_modules are links into the repository's: nothing is deleted here; the
              // image test (test/image/) runs the pruned modules for real.
              state.log.push(`prune ${prunedPatterns(command)!.join(' ')} (not replayed)`);
              continue;
            } else if (/^npm run \S+$/.test(command)) {
              const result = spawnSync('npm', command.split(' ').slice(1), { cwd: workdir, encoding: 'utf8', timeout: 60_000 });
              if (result.status !== 0) throw new Error(`${where}: ${command} failed (${result.status ?? result.signal}): ${result.stdout}${result.stderr}`);
            } else {
              throw new Error(`${where}: cannot replay "${command}"`);
            }
            state.log.push(command);
          }
          break;
        case 'ENV':
        case 'USER':
        case 'EXPOSE':
        case 'CMD':
        case 'ENTRYPOINT':
        case 'LABEL':
        case 'ARG':
          break; // read from the parsed stage where needed
        default:
          throw new Error(`${where}: cannot replay ${instruction.keyword}`);
      }
    }
    done.set(stage.name ?? String(index), state);
  });
  return done;
}

function snapshot(dir: string): string[] {
  return readdirSync(dir, { recursive: true, withFileTypes: true })
    .filter((entry) => !join(entry.parentPath, entry.name).includes(`${sep}node_modules`))
    .map((entry) => relative(dir, join(entry.parentPath, entry.name)))
    .sort();
}

function healthCheck(address: string, service: string): Promise<HealthCheckResponse_ServingStatus> {
  const client = new HealthClient(address, credentials.createInsecure());
  return new Promise<HealthCheckResponse_ServingStatus>((resolvePromise, reject) => {
    client.check({ service }, new Metadata(), { deadline: Date.now() + 1000 }, (error, response) => {
      client.close();
      if (error) reject(error);
      else resolvePromise(response.status);
    });
  });
}

describe('replaying the Dockerfile without a container engine', () => {
  let temp: string | undefined;
  let replayed: Map<string, Replayed> | Error | undefined;
  let child: ChildProcess | undefined;
  const clients: { close(): void }[] = [];

  /** Replays every stage once; both tests need it, and each fails with its error. */
  const stagesReplayed = (): Map<string, Replayed> => {
    if (replayed === undefined) {
      temp = mkdtempSync(join(tmpdir(), 'context-cache-image-'));
      try {
        replayed = replay(stages, temp);
      } catch (error) {
        replayed = error as Error;
      }
    }
    if (replayed instanceof Error) throw replayed;
    return replayed;
  };

  afterAll(async () => {
    for (const client of clients) client.close();
    if (child !== undefined && child.exitCode === null && child.signalCode === null) {
      const exited = new Promise((done) => child!.once('exit', done));
      child.kill('SIGKILL');
      await exited;
    }
    if (temp !== undefined) rmSync(temp, { recursive: true, force: true });
  });

  it('build stage: npm run build on exactly the COPYed files produces the CMD target', () => {
    const replayedStages = stagesReplayed();
    const build = replayedStages.get('build')!;
    expect(build.log).toEqual(expect.arrayContaining(['npm ci', 'npm run build']));
    const target = execForm(runtime.instructions.findLast((i) => i.keyword === 'CMD'))![1]!;
    expect(existsSync(inStage(build, target))).toBe(true);
    // Nothing outside src/ and the manifests went in: no tests, no stale dist from the work tree.
    expect(existsSync(inStage(build, 'test'))).toBe(false);
    const runtimeState = replayedStages.get('runtime')!;
    expect(existsSync(inStage(runtimeState, target))).toBe(true);
    expect(existsSync(inStage(runtimeState, 'node_modules/@grpc/grpc-js'))).toBe(true);
    // Production dependencies only: no compiler, no test runner.
    expect(existsSync(inStage(runtimeState, 'node_modules/typescript'))).toBe(false);
    expect(existsSync(inStage(runtimeState, 'node_modules/vitest'))).toBe(false);
  });

  it('runtime stage: CMD with the image ENV serves health SERVING on the health port, the API on loopback, and exits 0 on SIGTERM', async () => {
    const state = stagesReplayed().get('runtime')!;
    // The image's ENV as it is, but every TCP listen address (the image's, and any other
    // *_LISTEN default the sidecar binds) on a free port of this machine.
    const env: Record<string, string> = { PATH: process.env.PATH ?? '', ...runtimeEnv };
    for (const [name, { default: fallback }] of Object.entries(CONFIG_VARIABLES)) {
      const address = runtimeEnv[name] ?? fallback;
      if (name.endsWith('_LISTEN') && /^(\[[0-9a-fA-F:.]+\]|[\w.-]+):\d+$/.test(address)) env[name] = address.replace(/:\d+$/, `:${await freePort()}`);
    }
    const apiPort = listenPort(env.CONTEXT_CACHE_LISTEN!);
    const healthPort = listenPort(env.CONTEXT_CACHE_HEALTH_LISTEN!);
    expect([apiPort, healthPort]).not.toContain(NaN);
    const cmd = execForm(runtime.instructions.findLast((i) => i.keyword === 'CMD'))!;
    const before = snapshot(state.root);
    const output: string[] = [];
    // `node` in the image is Node.js 24; here, the Node.js running the tests.
    child = spawn(cmd[0] === 'node' ? process.execPath : cmd[0]!, cmd.slice(1), { cwd: inStage(state, '.'), env, stdio: ['ignore', 'pipe', 'pipe'] });
    child.stdout!.on('data', (chunk: Buffer) => output.push(chunk.toString()));
    child.stderr!.on('data', (chunk: Buffer) => output.push(chunk.toString()));
    const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((done) => child!.once('exit', (code, signal) => done({ code, signal })));
    const early = exited.then(({ code, signal }) => {
      throw new Error(`the sidecar exited early (${code ?? signal}):\n${output.join('')}`);
    });
    early.catch(() => undefined);

    const health = `127.0.0.1:${healthPort}`;
    for (const service of [HEALTH_SERVICE_OVERALL, HEALTH_SERVICE_CACHE]) {
      const serving = await Promise.race([
        waitFor(async () => (await healthCheck(health, service)) === HealthCheckResponse_ServingStatus.SERVING, `health "${service}" SERVING on ${health}`, 15_000, 50),
        early,
      ]);
      expect(serving).toBe(true);
    }

    // The API answers on its own port; the health port serves health only.
    const api = new ContextCacheClient(`127.0.0.1:${apiPort}`);
    const healthOnly = new ContextCacheClient(health);
    clients.push(api, healthOnly);
    await api.set({ key: 'image-smoke', value: Buffer.from('ok') }, { deadline: 5000 });
    const got = await api.get({ key: 'image-smoke' }, { deadline: 5000 });
    expect(Buffer.from(got.value).toString()).toBe('ok');
    expect((await rejectionOf(healthOnly.get({ key: 'image-smoke' }, { deadline: 5000 }))).code).toBe(status.UNIMPLEMENTED);

    // Logs are JSON lines on stdout, as container runtimes collect them.
    expect(output.join('').trim().split('\n').length).toBeGreaterThan(0);
    for (const line of output.join('').trim().split('\n')) expect(JSON.parse(line)).toHaveProperty('level');

    const graceMs = loadConfig(env).shutdownGraceMs;
    const signalled = Date.now();
    child.kill('SIGTERM');
    const result = await Promise.race([
      exited,
      waitFor(() => child!.exitCode !== null || child!.signalCode !== null, 'exit after SIGTERM', graceMs + 5000, 50).then(() => exited),
    ]);
    expect(result, output.join('')).toEqual({ code: 0, signal: null });
    expect(Date.now() - signalled).toBeLessThan(graceMs + 5000);
    // It wrote nothing into the image's files: fine with readOnlyRootFilesystem.
    expect(snapshot(state.root)).toEqual(before);
  });
});
