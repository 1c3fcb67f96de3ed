/**
 * A chat app instance in a worker thread of its own (node:worker_threads):
 * its own event loop and heap, as an app pod has, so that a harness driving
 * several instances from one process measures each as it runs alone, not
 * queued behind the others, the load generator and their garbage.
 * `AppThread` is the app as the load generator drives it
 * (ChatAppInstance), over request and response messages; app-worker.ts is
 * the worker, which builds the app on a PostgreSQL pool and a sidecar
 * client of its own.
 */
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { Worker } from 'node:worker_threads';
import type { GetStatsResponse, NearCacheStats } from '../../src/client';
import type { BuiltContext, ChatAppInstance, ChatAppStats, Mode, PostHooks } from './app';
import type { QueryCounts } from './db';
import type { Message, NewMessage } from './store';
import type { ThreadLoad } from './thread-load';

export interface AppThreadOptions {
  mode: Mode;
  /** The PostgreSQL schema the app works in, created by the caller. */
  schema: string;
  /** Connections of the app's pool at most. */
  maxConnections: number;
  /** Characters of message content a prompt may hold (0: no limit). */
  maxChars: number;
  /** The sidecar of this instance (sidecar mode); the worker connects its own client to it. */
  sidecarAddress?: string;
  /**
   * The worker's module compiled to JavaScript (app-worker.js, with the app
   * and the client it loads), run as an app runs deployed; default: this
   * folder's app-worker.ts, run through tsx.
   */
  compiledWorker?: string;
}

/** What the worker answers: the app's calls, and what a harness reads from an app pod. */
export interface AppWorkerCalls {
  startConversation(userId: string, title?: string): Promise<string>;
  deleteConversation(sessionId: string): Promise<void>;
  /** The worker tells of the commit (`committed`, with `commitId`) and waits for its `commit-seen` before the write-through. */
  postMessage(message: NewMessage, commitId: number): Promise<Message>;
  buildContext(sessionId: string, headId: string): Promise<BuiltContext>;
  conversationMessages(sessionId: string): Promise<Message[]>;
  repaired(timeoutMs?: number): Promise<boolean>;
  stats(): ChatAppStats;
  queryCounts(): QueryCounts;
  resetQueryCounts(): void;
  /** The sidecar's GetStats, through the app's client (sidecar mode). */
  sidecarStats(): Promise<GetStatsResponse | undefined>;
  /** The app's near cache (sidecar mode). */
  nearCacheStats(): NearCacheStats | undefined;
  threadLoad(): ThreadLoad;
  /** Closes the app, its client and its pool: the worker has nothing left to run. */
  close(): Promise<void>;
}

type Method = keyof AppWorkerCalls;
type Answer<M extends Method> = Awaited<ReturnType<AppWorkerCalls[M]>>;

/** An error as it crosses threads: structured cloning keeps no class, so what the other side rebuilds is a plain Error with these. */
export interface CarriedError {
  name: string;
  message: string;
  stack?: string;
}

export type AppCall = { [M in Method]: { kind: 'call'; id: number; method: M; args: Parameters<AppWorkerCalls[M]> } }[Method];
/** From the thread that drives the app to the worker. */
export type ToAppWorker = AppCall | { kind: 'commit-seen'; commitId: number; failure?: CarriedError };
/** From the worker to the thread that drives the app. */
export type FromAppWorker = { kind: 'ready' } | { kind: 'result'; id: number; value: unknown } | { kind: 'error'; id: number; error: CarriedError } | { kind: 'committed'; commitId: number; message: Message };

export function carry(error: unknown): CarriedError {
  return error instanceof Error ? { name: error.name, message: error.message, stack: error.stack } : { name: 'Error', message: String(error) };
}

export function rebuild(carried: CarriedError): Error {
  const error = new Error(carried.message);
  error.name = carried.name;
  if (carried.stack !== undefined) error.stack = carried.stack;
  return error;
}

const WORKER_MODULE = join(__dirname, 'app-worker.ts');

/**
 * How the worker runs TypeScript: with tsx's loader, as `npm run bench`
 * (`tsx bench/index.ts`) runs this process. A worker takes its parent's
 * execArgv (Node's default), which under the tsx CLI holds the loader
 * already (`--require …/tsx/dist/preflight.cjs --import …/tsx/dist/loader.mjs`);
 * elsewhere (vitest) it is added: `--import` of tsx's loader registers its
 * hooks for ESM and CommonJS in the worker before the worker's module loads.
 */
function workerExecArgv(): string[] {
  const tsxLoader = pathToFileURL(require.resolve('tsx')).href;
  return process.execArgv.includes(tsxLoader) ? [...process.execArgv] : [...process.execArgv, '--import', tsxLoader];
}

/** How long `close` waits for the worker to close its client and pool before it ends the thread anyway. */
const CLOSE_WAIT_MS = 10_000;

interface Waiting {
  resolve(value: unknown): void;
  reject(error: Error): void;
}

type CommitHook = NonNullable<PostHooks['onCommitted']>;

/** A chat app instance in a worker thread: `ready` once the worker has built it; `close` before dropping it. */
export class AppThread implements ChatAppInstance {
  readonly mode: Mode;
  /** Resolves when the worker has built its app; rejects when it could not. */
  readonly ready: Promise<void>;
  private readonly worker: Worker;
  private readonly waiting = new Map<number, Waiting>();
  private nextCallId = 1;
  /** The onCommitted hooks of writes in flight, by commitId. */
  private readonly commitHooks = new Map<number, CommitHook>();
  private nextCommitId = 1;
  private started!: { resolve(): void; reject(error: Error): void };
  /** Why the worker can no longer answer (it failed, exited or was closed). */
  private gone: Error | undefined;
  private closing: Promise<void> | undefined;

  constructor(options: AppThreadOptions) {
    this.mode = options.mode;
    this.ready = new Promise((resolve, reject) => (this.started = { resolve, reject }));
    this.worker =
      options.compiledWorker === undefined
        ? new Worker(WORKER_MODULE, { workerData: options, execArgv: workerExecArgv() })
        : new Worker(options.compiledWorker, { workerData: options, execArgv: [] });
    this.worker.on('message', (message: FromAppWorker) => this.onMessage(message));
    this.worker.on('error', (error) => this.fail(error));
    this.worker.on('exit', (code) => this.fail(new Error(`the app thread exited (code ${code})`)));
  }

  startConversation(userId: string, title?: string): Promise<string> {
    return this.call('startConversation', [userId, title]);
  }

  deleteConversation(sessionId: string): Promise<void> {
    return this.call('deleteConversation', [sessionId]);
  }

  /** `onCommitted` runs in this thread, and the worker waits for it to end before the write-through. */
  async postMessage(message: NewMessage, hooks: PostHooks = {}): Promise<Message> {
    const commitId = this.nextCommitId++;
    if (hooks.onCommitted !== undefined) this.commitHooks.set(commitId, hooks.onCommitted);
    try {
      return await this.call('postMessage', [message, commitId]);
    } finally {
      this.commitHooks.delete(commitId);
    }
  }

  buildContext(sessionId: string, headId: string): Promise<BuiltContext> {
    return this.call('buildContext', [sessionId, headId]);
  }

  conversationMessages(sessionId: string): Promise<Message[]> {
    return this.call('conversationMessages', [sessionId]);
  }

  repaired(timeoutMs?: number): Promise<boolean> {
    return this.call('repaired', [timeoutMs]);
  }

  stats(): Promise<ChatAppStats> {
    return this.call('stats', []);
  }

  /** The queries the app's pool sent, by kind. */
  queryCounts(): Promise<QueryCounts> {
    return this.call('queryCounts', []);
  }

  resetQueryCounts(): Promise<void> {
    return this.call('resetQueryCounts', []);
  }

  sidecarStats(): Promise<GetStatsResponse | undefined> {
    return this.call('sidecarStats', []);
  }

  nearCacheStats(): Promise<NearCacheStats | undefined> {
    return this.call('nearCacheStats', []);
  }

  /** The worker's event-loop delay since it started, and its heap now. */
  threadLoad(): Promise<ThreadLoad> {
    return this.call('threadLoad', []);
  }

  /**
   * Closes the app's client and pool in the worker, then ends the thread
   * (after CLOSE_WAIT_MS even if they have not closed). Idempotent.
   */
  close(): Promise<void> {
    this.closing ??= this.closeWorker();
    return this.closing;
  }

  private async closeWorker(): Promise<void> {
    let timer: NodeJS.Timeout | undefined;
    try {
      if (this.gone === undefined) {
        const late = new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(`the app thread did not close its client and pool within ${CLOSE_WAIT_MS} ms`)), CLOSE_WAIT_MS)));
        await Promise.race([this.call('close', []), late]);
      }
    } finally {
      clearTimeout(timer);
      this.gone ??= new Error('the app thread is closed');
      await this.worker.terminate();
    }
  }

  private call<M extends Method>(method: M, args: Parameters<AppWorkerCalls[M]>): Promise<Answer<M>> {
    if (this.gone !== undefined) return Promise.reject(this.gone);
    const id = this.nextCallId++;
    return new Promise<Answer<M>>((resolve, reject) => {
      this.waiting.set(id, { resolve: resolve as (value: unknown) => void, reject });
      this.worker.postMessage({ kind: 'call', id, method, args } as AppCall);
    });
  }

  private onMessage(message: FromAppWorker): void {
    switch (message.kind) {
      case 'ready':
        this.started.resolve();
        return;
      case 'committed':
        void this.seeCommit(message.commitId, message.message);
        return;
      case 'result':
        this.waiting.get(message.id)?.resolve(message.value);
        this.waiting.delete(message.id);
        return;
      case 'error':
        this.waiting.get(message.id)?.reject(rebuild(message.error));
        this.waiting.delete(message.id);
    }
  }

  /** Runs the write's onCommitted here, then lets the worker go on to the write-through (telling it if the hook failed). */
  private async seeCommit(commitId: number, message: Message): Promise<void> {
    let failure: CarriedError | undefined;
    try {
      await this.commitHooks.get(commitId)?.(message);
    } catch (error) {
      failure = carry(error);
    }
    this.worker.postMessage({ kind: 'commit-seen', commitId, failure } satisfies ToAppWorker);
  }

  private fail(error: Error): void {
    this.gone ??= error;
    this.started.reject(error);
    for (const call of this.waiting.values()) call.reject(error);
    this.waiting.clear();
  }
}
