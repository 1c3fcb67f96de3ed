import type { ChainableCommander, Redis } from 'ioredis';
import type { KeySpace } from '../keys';

export type RedisArg = string | number | Buffer;

/** What every script call knows besides its own arguments: the namespace's keys, and who is writing. */
export interface ScriptContext {
  keys: KeySpace;
  /** This sidecar's ID: the origin of the events a script publishes. */
  origin: string;
}

/**
 * One Lua script as a unit, in the shape of node-redis's `defineScript`: its
 * text, how a call's arguments become KEYS and ARGV (the key count is always
 * the length of KEYS), and how its reply is read. Each script lives in a
 * module of its own under this folder, beside the documentation of its
 * KEYS, ARGV and reply.
 */
export interface Script<A extends unknown[], R> {
  /** The ioredis command name it is defined under (EVALSHA, with EVAL on NOSCRIPT). */
  readonly name: string;
  readonly lua: string;
  readonly readOnly?: boolean;
  /** Replies as Buffers rather than strings (binary values). */
  readonly buffers?: boolean;
  args(context: ScriptContext, ...args: A): { keys: string[]; argv: RedisArg[] };
  parse(reply: unknown): R;
}

export function defineScript<A extends unknown[], R>(script: Script<A, R>): Script<A, R> {
  return script;
}

type Invoker = (...args: RedisArg[]) => Promise<unknown>;

/** Runs scripts on one connection: defines each on first use, in a call or in a pipeline. */
export class ScriptRunner {
  private readonly defined = new Set<string>();

  constructor(
    private readonly client: Redis,
    private readonly context: ScriptContext,
  ) {}

  run<A extends unknown[], R>(script: Script<A, R>, ...args: A): Promise<R> {
    return this.invoker(this.client, script, args).then((reply) => script.parse(reply));
  }

  /**
   * A pipeline that can queue `scripts` (ioredis gives a pipeline the
   * commands defined when it is created, so they are defined first).
   */
  pipeline(...scripts: Script<never, unknown>[]): ChainableCommander {
    for (const script of scripts) this.define(script);
    return this.client.pipeline();
  }

  /**
   * Runs the script once per argument list in one pipeline (one round trip);
   * resolves with each call's error or parsed reply, in order.
   */
  async runEach<A extends unknown[], R>(script: Script<A, R>, calls: readonly A[], send: <T>(work: Promise<T>) => Promise<T>): Promise<({ error: Error } | { reply: R })[]> {
    const pipeline = this.pipeline(script as unknown as Script<never, unknown>);
    for (const args of calls) this.queue(pipeline, script, ...args);
    const replies = (await send(pipeline.exec())) ?? [];
    return calls.map((_, index) => {
      const [error, reply] = replies[index] ?? [new Error('no reply')];
      return error ? { error } : { reply: script.parse(reply) };
    });
  }

  /** Queues a call in a pipeline from `pipeline()`; the pipeline's reply for it is read with `script.parse`. */
  queue<A extends unknown[], R>(pipeline: ChainableCommander, script: Script<A, R>, ...args: A): void {
    void this.invoker(pipeline, script, args);
  }

  private define(script: Script<never, unknown>): void {
    if (this.defined.has(script.name)) return;
    this.client.defineCommand(script.name, { lua: script.lua, readOnly: script.readOnly ?? false });
    this.defined.add(script.name);
  }

  private invoker<A extends unknown[], R>(target: Redis | ChainableCommander, script: Script<A, R>, args: A): Promise<unknown> {
    this.define(script as unknown as Script<never, unknown>);
    const { keys, argv } = script.args(this.context, ...args);
    const command = (target as unknown as Record<string, Invoker>)[script.buffers ? `${script.name}Buffer` : script.name]!;
    return command.call(target, keys.length, ...keys, ...argv);
  }
}
