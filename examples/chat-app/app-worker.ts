/**
 * The worker of an AppThread (app-thread.ts): one chat app instance on a
 * PostgreSQL pool and a sidecar client of its own, as in an app pod,
 * answering the calls of the thread that started it.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { ChatApp, connectSidecar } from './app';
import { carry, rebuild, type AppCall, type AppThreadOptions, type AppWorkerCalls, type CarriedError, type FromAppWorker, type ToAppWorker } from './app-thread';
import { CountingPool } from './db';
import { ChatStore, type Message } from './store';
import { ThreadLoadWatch } from './thread-load';

if (parentPort === null) throw new Error('app-worker.ts runs as the worker of an AppThread, not on its own');
const port = parentPort;
const options = workerData as AppThreadOptions;

const load = new ThreadLoadWatch();
const pool = new CountingPool({ schema: options.schema, maxConnections: options.maxConnections });
const cache = options.sidecarAddress === undefined ? undefined : connectSidecar(options.sidecarAddress);
const app = new ChatApp({ store: new ChatStore(pool), mode: options.mode, cache, maxChars: options.maxChars });

/** Writes waiting for the driving thread to have seen their commit, by commitId. */
const commitsAnnounced = new Map<number, (failure: CarriedError | undefined) => void>();

/** Tells the driving thread of a commit and resolves when its onCommitted has run there. */
function announceCommit(commitId: number, message: Message): Promise<void> {
  return new Promise((resolve, reject) => {
    commitsAnnounced.set(commitId, (failure) => (failure === undefined ? resolve() : reject(rebuild(failure))));
    post({ kind: 'committed', commitId, message });
  });
}

const calls: AppWorkerCalls = {
  startConversation: (userId, title) => app.startConversation(userId, title),
  deleteConversation: (sessionId) => app.deleteConversation(sessionId),
  postMessage: (message, commitId) => app.postMessage(message, { onCommitted: (stored) => announceCommit(commitId, stored) }),
  buildContext: (sessionId, headId) => app.buildContext(sessionId, headId),
  conversationMessages: (sessionId) => app.conversationMessages(sessionId),
  repaired: (timeoutMs) => app.repaired(timeoutMs),
  stats: () => app.stats(),
  queryCounts: () => pool.snapshot(),
  resetQueryCounts: () => pool.resetCounts(),
  sidecarStats: async () => cache?.getStats(),
  nearCacheStats: () => cache?.nearCache?.stats(),
  threadLoad: () => load.read(),
  close: async () => {
    app.close();
    cache?.close();
    load.close();
    await pool.close();
  },
};

function post(message: FromAppWorker): void {
  port.postMessage(message);
}

async function answer({ id, method, args }: AppCall): Promise<void> {
  try {
    const value: unknown = await (calls[method] as (...args: unknown[]) => unknown)(...args);
    post({ kind: 'result', id, value });
  } catch (error) {
    post({ kind: 'error', id, error: carry(error) });
  }
}

port.on('message', (message: ToAppWorker) => {
  if (message.kind === 'call') void answer(message);
  else {
    commitsAnnounced.get(message.commitId)?.(message.failure);
    commitsAnnounced.delete(message.commitId);
  }
});
post({ kind: 'ready' });
