import type { ChainableCommander } from 'ioredis';
import type { RedisClient, RedisLink, Settled } from '../connection';
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
    private readonly client: RedisClient,
    private readonly context: ScriptContext,
  ) {}

  run<A extends unknown[], R>(script: Script<A, R>, ...args: A): Promise<R> {
    return this.invoker(this.client, script, args).then((reply) => script.parse(reply));
  }

  /**
   * Runs the script once per argument list in one batch (RedisLink.batch:
   * one pipeline on one server, one per master on a Cluster); resolves with
   * each call's error or parsed reply, in order.
   */
  async runEach<A extends unknown[], R>(script: Script<A, R>, calls: readonly A[], link: RedisLink): Promise<Settled<R>[]> {
    // ioredis gives a pipeline the commands defined when it is created: define first.
    this.define(script as unknown as Script<never, unknown>);
    const replies = await link.batch(
      calls.map((args) => ({ key: script.args(this.context, ...args).keys[0] ?? '', queue: (pipeline: ChainableCommander) => void this.invoker(pipeline, script, args) })),
      script.name,
    );
    return replies.map((answer) => ('error' in answer ? answer : { reply: script.parse(answer.reply) }));
  }

  private define(script: Script<never, unknown>): void {
    if (this.defined.has(script.name)) return;
    this.client.defineCommand(script.name, { lua: script.lua, readOnly: script.readOnly ?? false });
    this.defined.add(script.name);
  }

  private invoker<A extends unknown[], R>(target: RedisClient | ChainableCommander, script: Script<A, R>, args: A): Promise<unknown> {
    this.define(script as unknown as Script<never, unknown>);
    const { keys, argv } = script.args(this.context, ...args);
    const command = (target as unknown as Record<string, Invoker>)[script.buffers ? `${script.name}Buffer` : script.name]!;
    return command.call(target, keys.length, ...keys, ...argv);
  }
}
