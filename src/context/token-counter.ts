import { createRequire } from 'node:module';
import { Worker } from 'node:worker_threads';
import { tooLarge, unavailable } from '../errors';
import { TOKENIZERS, type TokenizerName } from '../model/tokenizer';
import type { TokenCounter } from './ports';

/**
 * Runs of this many characters or fewer without a change between whitespace
 * and non-whitespace are counted exactly. BPE merging is quadratic in the
 * length of a pre-tokenized piece (measured: 25,600 letters without a space
 * take 450 ms, 100,000 take 14 s), and CJK text, base64 or minified code
 * form such runs; longer runs are counted in pieces of this length, which
 * keeps counting linear and is off by about 0.1 % for them (measured on CJK
 * and base64 text). Ordinary prose never has them and is counted exactly.
 */
export const MAX_EXACT_RUN = 1000;

/** Pre-tokenized pieces each encoding remembers (the library's merge cache; its default is 100,000). */
const MERGE_CACHE_ENTRIES = 4096;

/** Characters of text sent to the worker in one message, so that one large context does not hold up a small one for long. */
const MESSAGE_CHARS = 128 * 1024;

/** Bounds of the work handed to the worker and not answered yet. */
const MAX_PENDING_CHARS = 64 * 1024 * 1024;
const MAX_PENDING_MESSAGES = 10_000;

/** The worker's heap; the encodings take about 20 MiB (o200k_base) and 10 MiB (cl100k_base). */
const WORKER_HEAP_MB = 256;

/**
 * The worker's program, evaluated as CommonJS in the worker thread. It loads
 * an encoding the first time a message names it, and counts each text as
 * the model would see it: special-token text such as "<|endoftext|>" is
 * counted as the ordinary text it is (tiktoken's encode_ordinary).
 */
const WORKER_SOURCE = `
const { parentPort, workerData } = require('node:worker_threads');
const { modules, mergeCacheEntries, maxRun } = workerData;
const encodings = new Map();
const ordinary = { disallowedSpecial: new Set() };
const longRun = new RegExp('\\\\S{' + (maxRun + 1) + ',}|\\\\s{' + (maxRun + 1) + ',}', 'g');
function encoding(name) {
  let api = encodings.get(name);
  if (api === undefined) {
    api = require(modules[name]);
    api.setMergeCacheSize(mergeCacheEntries);
    encodings.set(name, api);
  }
  return api;
}
function count(api, text) {
  if (text.length <= maxRun) return api.countTokens(text, ordinary);
  let total = 0;
  let start = 0;
  for (const match of text.matchAll(longRun)) {
    const end = match.index + match[0].length;
    for (let cut = match.index + maxRun; cut < end; cut += maxRun) {
      const code = text.charCodeAt(cut);
      const at = code >= 0xdc00 && code <= 0xdfff ? cut - 1 : cut;
      total += api.countTokens(text.slice(start, at), ordinary);
      start = at;
    }
  }
  return total + api.countTokens(text.slice(start), ordinary);
}
parentPort.on('message', ({ id, tokenizer, texts }) => {
  try {
    const api = encoding(tokenizer);
    parentPort.postMessage({ id, counts: texts.map((text) => count(api, text)) });
  } catch (error) {
    parentPort.postMessage({ id, error: String((error && error.message) || error) });
  }
});
`;

interface Pending {
  resolve: (counts: number[]) => void;
  reject: (error: Error) => void;
  chars: number;
}

type Reply = { id: number; counts: number[] } | { id: number; error: string };

/**
 * Counts tokens with gpt-tokenizer in a worker thread, off the event loop:
 * neither loading an encoding (a third of a second for o200k_base) nor
 * counting a large session ever stalls the sidecar's other calls. The
 * worker starts on the first count (a sidecar that never counts tokens
 * never loads an encoding) and each encoding loads on its first use. A
 * worker that dies (out of memory, a bug) fails the counts it had and is
 * started again by the next count. `close()` ends it.
 */
export class WorkerTokenCounter implements TokenCounter {
  private worker: Worker | undefined;
  private readonly pending = new Map<number, Pending>();
  private pendingChars = 0;
  private nextId = 1;
  private closed = false;
  /** Texts counted and their characters, since start (for GetStats-style figures and tests). */
  readonly counters = { texts: 0, chars: 0, workerStarts: 0 };

  async count(tokenizer: TokenizerName, texts: readonly string[]): Promise<number[]> {
    const batches: string[][] = [];
    let batch: string[] = [];
    let chars = 0;
    for (const text of texts) {
      if (batch.length > 0 && chars + text.length > MESSAGE_CHARS) {
        batches.push(batch);
        batch = [];
        chars = 0;
      }
      batch.push(text);
      chars += text.length;
    }
    if (batch.length > 0) batches.push(batch);
    const counted = await Promise.all(batches.map((texts) => this.send(tokenizer, texts)));
    return counted.flat();
  }

  close(): Promise<void> {
    this.closed = true;
    this.fail(unavailable('token counting stopped: the sidecar is shutting down'));
    const worker = this.worker;
    this.worker = undefined;
    return worker === undefined ? Promise.resolve() : worker.terminate().then(() => undefined);
  }

  private send(tokenizer: TokenizerName, texts: string[]): Promise<number[]> {
    if (this.closed) return Promise.reject(unavailable('token counting stopped: the sidecar is shutting down'));
    const chars = texts.reduce((sum, text) => sum + text.length, 0);
    if (this.pending.size >= MAX_PENDING_MESSAGES || (this.pendingChars > 0 && this.pendingChars + chars > MAX_PENDING_CHARS)) {
      return Promise.reject(tooLarge(`token counting is behind by ${this.pendingChars} characters of text; retry shortly`));
    }
    const worker = this.started();
    const id = this.nextId++;
    this.pendingChars += chars;
    return new Promise<number[]>((resolve, reject) => {
      this.pending.set(id, { resolve, reject, chars });
      worker.postMessage({ id, tokenizer, texts });
    });
  }

  private started(): Worker {
    if (this.worker !== undefined) return this.worker;
    const resolveModule = createRequire(__filename).resolve;
    const modules = Object.fromEntries(TOKENIZERS.map((name) => [name, resolveModule(`gpt-tokenizer/encoding/${name}`)]));
    const worker = new Worker(WORKER_SOURCE, {
      eval: true,
      workerData: { modules, mergeCacheEntries: MERGE_CACHE_ENTRIES, maxRun: MAX_EXACT_RUN },
      resourceLimits: { maxOldGenerationSizeMb: WORKER_HEAP_MB },
    });
    this.counters.workerStarts++;
    // The worker never keeps the process alive by itself; close() ends it.
    worker.unref();
    worker.on('message', (reply: Reply) => this.answer(reply));
    const lost = (reason: string) => {
      if (this.worker !== worker) return;
      this.worker = undefined;
      this.fail(unavailable(`token counting failed (${reason}); the next call starts it again`));
    };
    worker.on('error', (error) => lost(error.message));
    worker.on('exit', (code) => lost(`the worker exited with code ${code}`));
    this.worker = worker;
    return worker;
  }

  private answer(reply: Reply): void {
    const pending = this.pending.get(reply.id);
    if (pending === undefined) return;
    this.pending.delete(reply.id);
    this.pendingChars -= pending.chars;
    if ('error' in reply) {
      pending.reject(new Error(`token counting failed: ${reply.error}`));
      return;
    }
    this.counters.texts += reply.counts.length;
    this.counters.chars += pending.chars;
    pending.resolve(reply.counts);
  }

  private fail(error: Error): void {
    const pending = [...this.pending.values()];
    this.pending.clear();
    this.pendingChars = 0;
    for (const { reject } of pending) reject(error);
  }
}
