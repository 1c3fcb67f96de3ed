/**
 * A sidecar as deployed: the built `dist/main.js` in its own Node process,
 * configured by environment only, on free loopback ports, silent. Its memory
 * is read from outside (/proc for RSS, its /metrics for the V8 heap), as an
 * operator would.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { inspectorCall } from '../test/helpers/inspector';
import { freePort } from '../test/helpers/redis';

const ROOT = join(__dirname, '..');

/** How a client reaches a sidecar as deployed: loopback TCP, or a Unix socket (`unix:`). */
export type Transport = 'tcp' | 'unix';
export const TRANSPORTS: readonly Transport[] = ['tcp', 'unix'];

/** A fresh gRPC address for a process of this benchmark run: a free loopback port, or a socket path in the temp dir. */
export async function benchAddress(transport: Transport): Promise<{ address: string; remove(): void }> {
  const port = await freePort();
  if (transport === 'tcp') return { address: `127.0.0.1:${port}`, remove: () => undefined };
  const path = join(tmpdir(), `cc-bench-${process.pid}-${port}.sock`);
  rmSync(path, { force: true });
  return { address: `unix:${path}`, remove: () => rmSync(path, { force: true }) };
}

export interface DeployedSidecar {
  readonly pid: number;
  /** The gRPC API: host:port, or unix:/path for the Unix-socket transport. */
  readonly address: string;
  /** Resident set size now, from /proc. */
  rss(): number;
  /** CPU time used so far (user + system), in ms, from /proc. */
  cpuMs(): number;
  /** One gauge from the sidecar's /metrics (e.g. nodejs_heap_size_used_bytes). */
  metric(name: string): Promise<number>;
  /**
   * A full GC in the sidecar, through the inspector protocol (started with
   * `inspect: true`): separates garbage not yet collected from what it holds.
   */
  collectGarbage(): Promise<void>;
  /** A crash and a restart: SIGKILL, then the same command on the same ports (its clients find it again where they look). */
  restart(): Promise<void>;
  close(): Promise<void>;
}

/**
 * The runtime settings the image runs with (the Dockerfile's MALLOC_* and
 * NODE_OPTIONS variables), so that a sidecar measured here is the sidecar
 * deployed.
 */
export function imageRuntimeEnv(): Record<string, string> {
  const dockerfile = readFileSync(join(ROOT, 'Dockerfile'), 'utf8');
  return Object.fromEntries([...dockerfile.matchAll(/\b(MALLOC_[A-Z_]+|NODE_OPTIONS)=(\S+)/g)].map((match) => [match[1]!, match[2]!]));
}

/**
 * The image's runtime settings, with BENCH_SIDECAR_NODE_OPTIONS added to
 * its NODE_OPTIONS: to profile the sidecars of any benchmark as deployed
 * (`BENCH_SIDECAR_NODE_OPTIONS='--cpu-prof --cpu-prof-dir=/tmp/prof'`:
 * one profile per sidecar process, written when it exits).
 */
function runtimeEnv(): Record<string, string> {
  const env = imageRuntimeEnv();
  const extra = process.env.BENCH_SIDECAR_NODE_OPTIONS?.trim();
  return extra ? { ...env, NODE_OPTIONS: [env.NODE_OPTIONS, extra].filter(Boolean).join(' ') } : env;
}

/** The newest modification time of the files under `dir` (recursively), in ms. */
function newestMtime(dir: string): number {
  let newest = 0;
  for (const entry of readdirSync(dir, { withFileTypes: true, recursive: true })) {
    if (entry.isFile()) newest = Math.max(newest, statSync(join(entry.parentPath, entry.name)).mtimeMs);
  }
  return newest;
}

/**
 * Builds dist/ when it is missing or older than a file of src/, so that
 * `npm run bench` works on a fresh clone and never measures a stale build.
 */
function ensureBuilt(): void {
  const main = join(ROOT, 'dist', 'main.js');
  if (existsSync(main) && statSync(main).mtimeMs >= newestMtime(join(ROOT, 'src'))) return;
  const tsc = join(ROOT, 'node_modules', '.bin', 'tsc');
  const result = spawnSync(tsc, ['-p', 'tsconfig.json'], { cwd: ROOT, stdio: 'inherit' });
  if (result.status !== 0) throw new Error('npm run build failed; the deployed benchmarks need dist/');
}

/**
 * The example app and the client it loads compiled to JavaScript
 * (tsconfig.bench.json → dist-bench/), fresh for each run: an app measured
 * as deployed runs compiled code, as the sidecar does — not through tsx,
 * whose esbuild keeps every function's name by a call per closure made.
 * Returns the compiled app worker's path.
 */
export function compiledAppWorker(): string {
  const tsc = join(ROOT, 'node_modules', '.bin', 'tsc');
  const result = spawnSync(tsc, ['-p', 'tsconfig.bench.json'], { cwd: ROOT, stdio: 'inherit' });
  if (result.status !== 0) throw new Error('tsc -p tsconfig.bench.json failed; the chat-app benchmark runs the app compiled');
  return join(ROOT, 'dist-bench', 'examples', 'chat-app', 'app-worker.js');
}

export interface DeployedOptions {
  /** Opens the inspector on a free loopback port, for collectGarbage(). */
  inspect?: boolean;
  /** The API on loopback TCP (default) or on a Unix socket. */
  transport?: Transport;
  /** Another build's main.js (an older commit's dist/, for a before/after comparison); default this repository's dist/main.js. */
  main?: string;
}

/** utime + stime of a process from /proc/<pid>/stat (fields 14 and 15, in clock ticks of 10 ms). */
export function processCpuMs(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(fields[11]) + Number(fields[12])) * 10;
}

/** RSS of a process from /proc/<pid>/status. */
export function processRss(pid: number): number {
  const line = readFileSync(`/proc/${pid}/status`, 'utf8').split('\n').find((l) => l.startsWith('VmRSS:'));
  return Number(line?.split(/\s+/)[1] ?? 0) * 1024;
}

/**
 * The TypeScript client as an app runs it: compiled (dist/client), not
 * through tsx, whose esbuild wraps every closure the client makes per call
 * in a naming helper (about 3 % of a Get's p50 here). For the clients of
 * sidecars measured as deployed.
 */
export function deployedClient(): typeof import('../src/client') {
  ensureBuilt();
  return require(join(ROOT, 'dist', 'client', 'index.js')) as typeof import('../src/client');
}

/**
 * BENCH_SIDECAR_MAIN: another build's main.js for every deployed sidecar of
 * a run (an older commit's dist/), to measure before and after on the same
 * machine in turn: `BENCH_SIDECAR_MAIN=/tmp/old/dist/main.js npm run bench -- locks`.
 */
function sidecarMain(options: DeployedOptions): string {
  const given = options.main ?? process.env.BENCH_SIDECAR_MAIN?.trim();
  if (given) return given;
  ensureBuilt();
  return join(ROOT, 'dist', 'main.js');
}

export async function startDeployedSidecar(env: Record<string, string>, options: DeployedOptions = {}): Promise<DeployedSidecar> {
  const main = sidecarMain(options);
  const listen = await benchAddress(options.transport ?? 'tcp');
  const adminPort = await freePort();
  const args = options.inspect ? [`--inspect=127.0.0.1:${await freePort()}`, main] : [main];
  let child: ChildProcess;
  let exited: Promise<void>;
  let inspector: string | undefined;
  const launch = async () => {
    child = spawn(process.execPath, args, {
      cwd: ROOT,
      env: {
        PATH: process.env.PATH ?? '',
        CONTEXT_CACHE_LISTEN: listen.address,
        CONTEXT_CACHE_ADMIN_LISTEN: `127.0.0.1:${adminPort}`,
        CONTEXT_CACHE_LOG_LEVEL: 'warn',
        ...runtimeEnv(),
        ...env,
      },
      stdio: ['ignore', 'inherit', options.inspect ? 'pipe' : 'inherit'],
    });
    const started = child;
    inspector = undefined;
    child.stderr?.on('data', (chunk: Buffer) => {
      const text = chunk.toString();
      inspector ??= /ws:\/\/[^\s]+/.exec(text)?.[0];
      // The inspector's banner is ours; anything else the sidecar says goes on to our stderr.
      if (!/Debugger (listening|attached)|For help, see/.test(text)) process.stderr.write(chunk);
    });
    exited = new Promise<void>((resolve) => started.once('exit', () => resolve()));
    const deadline = Date.now() + 20_000;
    for (;;) {
      if (started.exitCode !== null) throw new Error(`the sidecar exited at start-up with code ${started.exitCode}`);
      const ready = await fetch(`http://127.0.0.1:${adminPort}/readyz`).then((r) => r.ok, () => false);
      if (ready) break;
      if (Date.now() > deadline) {
        started.kill('SIGKILL');
        throw new Error('the sidecar was not ready within 20 s');
      }
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
  };
  await launch();
  return {
    get pid() {
      return child.pid!;
    },
    address: env.CONTEXT_CACHE_LISTEN ?? listen.address,
    rss() {
      return processRss(child.pid!);
    },
    cpuMs() {
      return processCpuMs(child.pid!);
    },
    async metric(name: string) {
      const text = await (await fetch(`http://127.0.0.1:${adminPort}/metrics`)).text();
      const line = text.split('\n').find((l) => l.startsWith(`${name} `) || (!name.includes('{') && l.startsWith(`${name}{`)));
      if (line === undefined) throw new Error(`the sidecar's /metrics has no ${name}`);
      return Number(line.slice(line.lastIndexOf(' ') + 1));
    },
    async collectGarbage() {
      if (inspector === undefined) throw new Error('collectGarbage needs startDeployedSidecar(env, { inspect: true })');
      await inspectorCall(inspector, 'HeapProfiler.collectGarbage');
    },
    async restart() {
      if (child.exitCode === null) child.kill('SIGKILL');
      await exited;
      await launch();
    },
    async close() {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
      await exited;
      listen.remove();
    },
  };
}
