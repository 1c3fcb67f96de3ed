import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { createServer, connect } from 'node:net';
import { waitFor } from './wait';

/**
 * A real Redis server owned by one test file: started on a free port, and
 * killable, pausable and restartable (same port, empty data, new run_id) so
 * that tests can take it away from the sidecars and give it back.
 *
 * Where a container engine is reachable (DOCKER_HOST or /var/run/docker.sock)
 * it runs in a container through testcontainers, from TEST_REDIS_IMAGE
 * (default localhost/context-cache-test-redis:7: Debian's redis-server,
 * built by `npm run test:image`, since no registry can be pulled from
 * here); otherwise as a `redis-server` child process. Set TEST_REDIS=process
 * or TEST_REDIS=container to force one (container: no fallback).
 */
export interface TestRedis {
  /** How it runs: a child process, or a container through testcontainers. */
  readonly kind: 'process' | 'container';
  /** The container's ID (kind container). */
  readonly containerId?: string;
  readonly host: string;
  readonly port: number;
  readonly url: string;
  /** SIGKILL: connections drop at once, nothing is saved. */
  kill(): Promise<void>;
  /** SIGSTOP: the server stops answering, connections stay open. */
  pause(): Promise<void>;
  resume(): Promise<void>;
  /** Starts it again on the same port, empty. */
  restart(): Promise<void>;
  /** Runs one command through redis-cli-like raw RESP; for assertions and fault injection. */
  command(...args: (string | number)[]): Promise<unknown>;
  stop(): Promise<void>;
}

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as { port: number };
      server.close(() => resolve(port));
    });
  });
}

function containerEngineReachable(): boolean {
  if (process.env.TEST_REDIS === 'process') return false;
  if (process.env.TEST_REDIS === 'container') return true;
  return Boolean(process.env.DOCKER_HOST) || existsSync('/var/run/docker.sock');
}

export async function startRedis(): Promise<TestRedis> {
  if (containerEngineReachable()) {
    try {
      return await startContainerRedis();
    } catch (error) {
      if (process.env.TEST_REDIS === 'container') throw error;
      // A socket that no engine answers on: fall back to a process.
    }
  }
  return startProcessRedis();
}

/** Minimal RESP client: enough to send one command and read one reply. */
export async function respCommand(port: number, args: (string | number)[], host = '127.0.0.1'): Promise<unknown> {
  const payload = `*${args.length}\r\n${args.map((a) => `$${Buffer.byteLength(String(a))}\r\n${a}\r\n`).join('')}`;
  return new Promise((resolve, reject) => {
    const socket = connect(port, host);
    let buffer = Buffer.alloc(0);
    socket.setTimeout(2000, () => socket.destroy(new Error('redis command timed out')));
    socket.once('error', reject);
    socket.on('data', (chunk) => {
      buffer = Buffer.concat([buffer, chunk]);
      const parsed = parseResp(buffer, 0);
      if (parsed !== undefined) {
        socket.end();
        if (parsed.value instanceof Error) reject(parsed.value);
        else resolve(parsed.value);
      }
    });
    socket.write(payload);
  });
}

function parseResp(buffer: Buffer, offset: number): { value: unknown; next: number } | undefined {
  const lineEnd = buffer.indexOf('\r\n', offset);
  if (lineEnd < 0) return undefined;
  const type = String.fromCharCode(buffer[offset]!);
  const line = buffer.toString('utf8', offset + 1, lineEnd);
  switch (type) {
    case '+':
      return { value: line, next: lineEnd + 2 };
    case '-':
      return { value: new Error(line), next: lineEnd + 2 };
    case ':':
      return { value: Number(line), next: lineEnd + 2 };
    case '$': {
      const length = Number(line);
      if (length < 0) return { value: null, next: lineEnd + 2 };
      if (buffer.length < lineEnd + 2 + length + 2) return undefined;
      return { value: buffer.subarray(lineEnd + 2, lineEnd + 2 + length), next: lineEnd + 2 + length + 2 };
    }
    case '*': {
      const count = Number(line);
      const items: unknown[] = [];
      let next = lineEnd + 2;
      for (let i = 0; i < count; i++) {
        const item = parseResp(buffer, next);
        if (item === undefined) return undefined;
        items.push(item.value);
        next = item.next;
      }
      return { value: count < 0 ? null : items, next };
    }
    default:
      return { value: new Error(`unexpected RESP type ${type}`), next: buffer.length };
  }
}

async function startProcessRedis(): Promise<TestRedis> {
  const port = await freePort();
  let child: ChildProcess | undefined;
  const launch = async () => {
    child = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--protected-mode', 'no'], {
      stdio: 'ignore',
    });
    const started = child;
    await waitFor(async () => {
      if (started.exitCode !== null) throw new Error(`redis-server exited with ${started.exitCode}`);
      return (await respCommand(port, ['PING'])) === 'PONG';
    }, `redis-server on port ${port}`);
  };
  const exited = (proc: ChildProcess) =>
    proc.exitCode !== null || proc.signalCode !== null ? Promise.resolve() : new Promise<void>((resolve) => proc.once('exit', () => resolve()));
  await launch();
  const redis: TestRedis = {
    kind: 'process',
    host: '127.0.0.1',
    port,
    url: `redis://127.0.0.1:${port}`,
    async kill() {
      if (!child) return;
      const proc = child;
      child = undefined;
      proc.kill('SIGCONT');
      proc.kill('SIGKILL');
      await exited(proc);
    },
    async pause() {
      child?.kill('SIGSTOP');
    },
    async resume() {
      child?.kill('SIGCONT');
    },
    async restart() {
      await redis.kill();
      await launch();
    },
    command: (...args) => respCommand(port, args),
    async stop() {
      if (!child) return;
      const proc = child;
      child = undefined;
      proc.kill('SIGCONT');
      proc.kill('SIGTERM');
      await exited(proc);
    },
  };
  return redis;
}

export const TEST_REDIS_IMAGE = process.env.TEST_REDIS_IMAGE ?? 'localhost/context-cache-test-redis:7';

async function startContainerRedis(): Promise<TestRedis> {
  const { GenericContainer, Wait, getContainerRuntimeClient } = await import('testcontainers');
  const port = await freePort();
  // A fixed host port, so that a restarted container is found where the sidecars look; published on
  // loopback only, and dialled as 127.0.0.1 (not "localhost", which may resolve to ::1 first).
  const host = '127.0.0.1';
  const ready = async (what: string) => waitFor(async () => (await respCommand(port, ['PING'], host)) === 'PONG', what);
  const container = await new GenericContainer(TEST_REDIS_IMAGE)
    .withCommand(['redis-server', '--bind', '0.0.0.0', '--protected-mode', 'no', '--save', '', '--appendonly', 'no'])
    .withExposedPorts({ container: 6379, host: port })
    .withWaitStrategy(Wait.forLogMessage(/Ready to accept connections/))
    .start();
  // The log line comes before the published port forwards: ready means it answers through it.
  await ready(`the Redis container on port ${port}`);
  const runtime = await getContainerRuntimeClient();
  const raw = runtime.container.getById(container.getId());
  let paused = false;
  return {
    kind: 'container',
    containerId: container.getId(),
    host,
    port,
    url: `redis://${host}:${port}`,
    kill: async () => {
      if (paused) await raw.unpause().catch(() => undefined);
      paused = false;
      // Resolves once the signal is sent: the server is gone then, as with a process (restart waits for the exit).
      await raw.kill({ signal: 'SIGKILL' }).catch(() => undefined);
    },
    pause: async () => {
      await raw.pause();
      paused = true;
    },
    resume: async () => {
      await raw.unpause();
      paused = false;
    },
    restart: async () => {
      if (paused) await raw.unpause().catch(() => undefined);
      paused = false;
      await raw.kill({ signal: 'SIGKILL' }).catch(() => undefined);
      await raw.wait().catch(() => undefined);
      await raw.start();
      await ready('the restarted Redis container');
    },
    command: (...args) => respCommand(port, args, host),
    stop: async () => {
      if (paused) await raw.unpause().catch(() => undefined);
      await container.stop({ timeout: 0 });
    },
  };
}
