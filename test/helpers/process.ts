import { spawn, type ChildProcess } from 'node:child_process';
import { join } from 'node:path';
import { checkHealth, healthClient, ServingStatus } from './health';
import { waitFor } from './wait';

const REPO_ROOT = join(__dirname, '..', '..');

/** One line the sidecar logged (pino JSON on stdout); `raw` for anything that is not JSON. */
export interface LogLine {
  level?: string;
  msg?: string;
  raw: string;
  [field: string]: unknown;
}

export interface Exit {
  code: number | null;
  signal: NodeJS.Signals | null;
}

/** The sidecar as production runs it: its own process, configured by environment variables. */
export interface SidecarProcess {
  readonly child: ChildProcess;
  readonly pid: number;
  /** Parsed stdout lines so far. */
  readonly logs: LogLine[];
  /** Everything written to stdout and stderr so far. */
  output(): string;
  /** Resolves when the process has exited. */
  readonly exited: Promise<Exit>;
  hasExited(): boolean;
  /** Waits until a log line matches. */
  waitForLog(match: (line: LogLine) => boolean, what: string, timeoutMs?: number): Promise<LogLine>;
  /** Waits until health Check of "" on `address` answers SERVING. */
  waitUntilServing(address: string, timeoutMs?: number): Promise<void>;
  /** Kills the process if it still runs (SIGKILL) and waits for it; safe to call twice. */
  stop(): Promise<Exit>;
}

const running = new Set<SidecarProcess>();

/**
 * Starts `src/main.ts` in a child process through the tsx loader, with a
 * clean environment: none of the caller's CONTEXT_CACHE_*, REDIS_* or OTEL_*
 * variables leak in, only `env`.
 */
export function spawnSidecar(env: Record<string, string>): SidecarProcess {
  const inherited = Object.fromEntries(Object.entries(process.env).filter(([name]) => !name.startsWith('CONTEXT_CACHE_') && !name.startsWith('REDIS_') && !name.startsWith('OTEL_')));
  const child = spawn(process.execPath, ['--import', 'tsx', 'src/main.ts'], {
    cwd: REPO_ROOT,
    // The admin port gets a free port unless the test sets one: two sidecars on the default would collide.
    env: { ...inherited, CONTEXT_CACHE_ADMIN_LISTEN: '127.0.0.1:0', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const logs: LogLine[] = [];
  let output = '';
  let pending = '';
  child.stdout!.setEncoding('utf8');
  child.stderr!.setEncoding('utf8');
  child.stdout!.on('data', (chunk: string) => {
    output += chunk;
    pending += chunk;
    let newline: number;
    while ((newline = pending.indexOf('\n')) >= 0) {
      const raw = pending.slice(0, newline);
      pending = pending.slice(newline + 1);
      if (raw.trim() === '') continue;
      try {
        logs.push({ ...(JSON.parse(raw) as Record<string, unknown>), raw });
      } catch {
        logs.push({ raw });
      }
    }
  });
  child.stderr!.on('data', (chunk: string) => (output += chunk));
  let done = false;
  const exited = new Promise<Exit>((resolve) =>
    child.once('exit', (code, signal) => {
      done = true;
      resolve({ code, signal });
    }),
  );
  const handle: SidecarProcess = {
    child,
    pid: child.pid!,
    logs,
    output: () => output,
    exited,
    hasExited: () => done,
    waitForLog: (match, what, timeoutMs = 10_000) => waitFor(() => logs.find(match), what, timeoutMs),
    async waitUntilServing(address, timeoutMs = 20_000) {
      const health = healthClient(address);
      try {
        await waitFor(
          async () => {
            if (done) throw new Error(`the sidecar exited early:\n${output}`);
            return (await checkHealth(health, '', 1000)) === ServingStatus.SERVING;
          },
          `the sidecar (pid ${child.pid}) to serve on ${address}`,
          timeoutMs,
          50,
        );
      } finally {
        health.close();
      }
    },
    async stop() {
      running.delete(handle);
      if (!done) child.kill('SIGKILL');
      return exited;
    },
  };
  running.add(handle);
  return handle;
}

/** Kills every sidecar process a test file started and did not stop. */
export async function stopAllSidecarProcesses(): Promise<void> {
  await Promise.all([...running].map((handle) => handle.stop()));
}
