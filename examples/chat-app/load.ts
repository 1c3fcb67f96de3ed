/**
 * The load generator: simulated users, each with conversations that grow,
 * branch (a regenerated answer: a new message under an older one), reference
 * other conversations by short ID, get deleted, with think time between
 * turns. Every turn: the user's message is written, the prompt context is
 * built and checked against the generator's own record, the assistant's
 * answer is written. Optionally each user has a second device that watches
 * the conversation and must see every new message.
 *
 * Used by the benchmark (bench/chat-app.ts: 1,000 users, sidecars as
 * deployed) and by the test (test/chat-app/: 50 users, in-process sidecars).
 */
import { randomUUID } from 'node:crypto';
import { SessionChange, type ContextCacheClient, type ResumingWatch, type WatchResponse } from '../../src/client';
import type { ChatAppInstance } from './app';
import { createChecker, GroundTruth, type ContextChecker } from './checker';
import { newShortId, type ChatStore, type Message, type MessageRole } from './store';

/** A small deterministic generator (mulberry32): the same seed gives both modes the same workload. */
export class Random {
  private state: number;
  constructor(seed: number) {
    this.state = seed >>> 0;
  }
  next(): number {
    let t = (this.state = (this.state + 0x6d2b79f5) >>> 0);
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }
  int(min: number, max: number): number {
    return min + Math.floor(this.next() * (max - min + 1));
  }
  pick<T>(items: readonly T[]): T {
    return items[Math.floor(this.next() * items.length)]!;
  }
}

const WORDS = (
  'the a sidecar cache context prompt session message node branch reference model answer question deploy pod redis ' +
  'postgres latency budget token summary user assistant system write read fill lease watch event stream sync device ' +
  'kubernetes service query index path head parent short id load retry failover replica primary shard memory bytes'
).split(' ');

export function sentence(random: Random, chars: number): string {
  let text = '';
  while (text.length < chars) text += (text ? ' ' : '') + random.pick(WORDS);
  return text.slice(0, chars);
}

export interface WorkloadOptions {
  users: number;
  /** The run ends after this long (turns in flight finish)... */
  durationMs: number;
  /** ...or when every user has made this many turns. */
  maxTurnsPerUser: number;
  /** Think time between a user's turns, uniform in [min, max] ms. */
  thinkMs: [number, number];
  seed: number;
  maxChars: number;
  /** Conversations each user has before the run, and their lengths in messages. */
  history: { sessionsPerUser: number; messages: [number, number] };
}

/** Writes every user's earlier conversations into PostgreSQL (cold for the cache) and into the ground truth. */
export async function seedHistory(store: ChatStore, truth: GroundTruth, options: WorkloadOptions): Promise<Map<string, string[]>> {
  const random = new Random(options.seed ^ 0x5eed);
  const sessionsOf = new Map<string, string[]>();
  const start = Date.now() - 86_400_000;
  let sessions: { id: string; userId: string }[] = [];
  let messages: Message[] = [];
  const flush = async () => {
    await store.insertSessions(sessions);
    await store.insertHistory(messages);
    sessions = [];
    messages = [];
  };
  let clock = start;
  for (let u = 0; u < options.users; u++) {
    const userId = `user-${u}`;
    const ids: string[] = [];
    for (let s = 0; s < options.history.sessionsPerUser; s++) {
      const sessionId = randomUUID();
      ids.push(sessionId);
      sessions.push({ id: sessionId, userId });
      let parent: Message | undefined;
      const length = random.int(...options.history.messages);
      for (let m = 0; m < length; m++) {
        const role: MessageRole = m % 2 === 0 ? 'user' : 'assistant';
        const message: Message = {
          id: randomUUID(),
          shortId: newShortId(),
          sessionId,
          parentId: parent?.id ?? '',
          depth: parent === undefined ? 0 : parent.depth + 1,
          role,
          content: sentence(random, role === 'user' ? random.int(40, 400) : random.int(100, 1200)),
          refs: [],
          createdAt: new Date((clock += 7)),
        };
        messages.push(message);
        truth.record(message);
        parent = message;
      }
    }
    sessionsOf.set(userId, ids);
    if (messages.length > 5_000) await flush();
  }
  await flush();
  return sessionsOf;
}

/** A second device of a user: watches the conversation in use and must see every new message. */
export interface SyncFigures {
  /** Messages written to watched conversations. */
  messages: number;
  /** Seen through the Watch stream. */
  live: number;
  /** Seen by reloading the conversation (after a Resync, an invalidation, a lost stream). */
  recovered: number;
  /** Never seen. */
  missing: number;
  /** From the message's commit to its arrival on the device, ms (live and recovered). */
  latenciesMs: number[];
  /** Conversations followed (a resumable Watch each). */
  streams: number;
}

class Device {
  private watch: ResumingWatch | undefined;
  private sessionId = '';
  private readonly pending = new Map<string, number>();
  private reloadTimer: NodeJS.Timeout | undefined;
  private closed = false;

  constructor(
    private readonly client: ContextCacheClient,
    private readonly app: () => ChatAppInstance,
    private readonly figures: SyncFigures,
  ) {}

  /** Follows this conversation from now on (what it was still waiting for elsewhere no longer counts). */
  follow(sessionId: string): void {
    if (this.sessionId === sessionId) return;
    this.figures.messages -= this.pending.size;
    this.sessionId = sessionId;
    this.pending.clear();
    this.watch?.close();
    this.figures.streams++;
    // A Watch that reconnects after a lost stream and resumes where it was (or says Resync when it cannot).
    this.watch = this.client.watchResumable({ sessionIds: [sessionId] }, (message) => this.onMessage(sessionId, message));
  }

  /** A message was committed: the device must see it if it follows that conversation. */
  committed(message: Message, atMs: number): void {
    if (message.sessionId !== this.sessionId) return;
    this.figures.messages++;
    this.pending.set(message.id, atMs);
  }

  get waiting(): number {
    return this.pending.size;
  }

  close(): number {
    this.closed = true;
    clearTimeout(this.reloadTimer);
    this.watch?.close();
    this.watch = undefined;
    return this.pending.size;
  }

  private onMessage(sessionId: string, message: WatchResponse): void {
    if (sessionId !== this.sessionId) return;
    const event = message.event;
    if (event?.$case === 'nodeAppended') this.arrived(event.value.node?.id ?? '', 'live');
    // What the stream cannot have told (what came before it started, an invalidated session) comes from a reload.
    else if (event?.$case === 'started' || (event?.$case === 'sessionInvalidated' && event.value.change === SessionChange.SESSION_CHANGE_INVALIDATED)) void this.reload(sessionId);
    // A Resync reaches every device at once: spread their reloads over a second rather than all at the database in the same instant.
    else if (event?.$case === 'resync') this.reloadTimer = setTimeout(() => void this.reload(sessionId), Math.random() * 1000);
  }

  private async reload(sessionId: string): Promise<void> {
    try {
      const messages = await this.app().conversationMessages(sessionId);
      if (sessionId !== this.sessionId) return;
      for (const message of messages) this.arrived(message.id, 'recovered');
    } catch {
      // PostgreSQL or the sidecar did not answer: try again shortly.
      if (!this.closed && sessionId === this.sessionId) this.reloadTimer = setTimeout(() => void this.reload(sessionId), 200);
    }
  }

  private arrived(id: string, how: 'live' | 'recovered'): void {
    const at = this.pending.get(id);
    if (at === undefined) return;
    this.pending.delete(id);
    this.figures[how]++;
    this.figures.latenciesMs.push(performance.now() - at);
  }
}

export interface TurnSample {
  /** When the turn began, ms after the run began. */
  atMs: number;
  /** The whole turn (both writes, the context and its check), ms, measured by the load generator: with an app in a worker thread, the hops to that thread and back are in it. */
  turnMs: number;
  /** The context's build, ms, measured by the app itself (BuiltContext.buildMs): in the app's thread, without the hop to it. */
  contextMs: number;
  source: 'postgres' | 'sidecar';
  hit: boolean;
  /** The context was answered in the app's process (the near cache). */
  nearCache: boolean;
}

export interface RunResult {
  samples: TurnSample[];
  checker: ContextChecker;
  sync: SyncFigures | undefined;
  /** Turns that failed outright (an error, not a wrong context). */
  errors: number;
  firstErrors: string[];
  seconds: number;
}

export interface RunOptions extends WorkloadOptions {
  /** App instances (pods); each turn goes to one of them at random, as behind a load balancer without affinity. */
  apps: ChatAppInstance[];
  truth: GroundTruth;
  /** Each user's conversations from seedHistory. */
  sessionsOf: Map<string, string[]>;
  /** With these clients (one per sidecar), each user has a second device watching its conversation. */
  deviceClients?: ContextCacheClient[];
  /** Called at these fractions of the run's duration (fault injection). */
  events?: { at: number; run: () => Promise<void> }[];
}

interface SimUser {
  id: string;
  random: Random;
  sessions: string[];
  active: string;
  /** The newest message of each conversation's current branch. */
  heads: Map<string, string>;
  device: Device | undefined;
}

/** Runs the workload: every user concurrently, each turn checked. */
export async function runWorkload(options: RunOptions): Promise<RunResult> {
  const { apps, truth } = options;
  const checker = createChecker();
  const samples: TurnSample[] = [];
  const sync: SyncFigures | undefined = options.deviceClients ? { messages: 0, live: 0, recovered: 0, missing: 0, latenciesMs: [], streams: 0 } : undefined;
  let errors = 0;
  const firstErrors: string[] = [];
  const started = performance.now();
  const endAt = started + options.durationMs;
  const failed = (error: unknown) => {
    errors++;
    if (firstErrors.length < 10) firstErrors.push((error as Error).message ?? String(error));
  };

  const users: SimUser[] = Array.from({ length: options.users }, (_, u) => {
    const random = new Random(options.seed * 7919 + u);
    const sessions = [...(options.sessionsOf.get(`user-${u}`) ?? [])];
    const heads = new Map(sessions.map((id) => [id, truth.session(id).at(-1)?.id ?? '']));
    const device = sync && options.deviceClients ? new Device(options.deviceClients[u % options.deviceClients.length]!, () => apps[u % apps.length]!, sync) : undefined;
    return { id: `user-${u}`, random, sessions, active: sessions[0] ?? '', heads, device };
  });

  const committed = (user: SimUser, message: Message) => {
    truth.record(message);
    user.device?.committed(message, performance.now());
  };

  const turn = async (user: SimUser) => {
    const random = user.random;
    const app = random.pick(apps);
    const roll = random.next();
    if (user.sessions.length === 0 || roll < 0.05) {
      const sessionId = await app.startConversation(user.id);
      user.sessions.push(sessionId);
      user.heads.set(sessionId, '');
      user.active = sessionId;
    } else if (roll < 0.07 && user.sessions.length > 2) {
      const victim = user.sessions.find((id) => id !== user.active)!;
      await app.deleteConversation(victim);
      truth.deleteSession(victim);
      user.sessions = user.sessions.filter((id) => id !== victim);
      user.heads.delete(victim);
    } else if (roll < 0.2) {
      user.active = random.pick(user.sessions);
    }
    user.device?.follow(user.active);
    const sessionId = user.active;
    let parentId = user.heads.get(sessionId) ?? '';
    // A regenerated answer: the user goes back to an earlier answer of this path and asks again, from there.
    if (parentId !== '' && random.next() < 0.08) {
      const earlier = truth.path(parentId).filter((message) => message.role === 'assistant');
      if (earlier.length > 1) parentId = random.pick(earlier.slice(0, -1)).id;
    }
    const refs: string[] = [];
    if (random.next() < 0.15) {
      const others = user.sessions.filter((id) => id !== sessionId && truth.session(id).length > 0);
      if (others.length > 0) refs.push(random.pick(truth.session(random.pick(others))).shortId);
    }
    const content = sentence(random, random.int(40, 400)) + (refs.length > 0 ? ` (see ${refs.join(', ')})` : '');

    const t0 = performance.now();
    const question = await app.postMessage({ sessionId, parentId, role: 'user', content, refs }, { onCommitted: (message) => committed(user, message) });
    const context = await app.buildContext(sessionId, question.id);
    checker.check(truth, question.id, options.maxChars, context, `${user.id} (${app.mode}, ${context.source}${context.fallback ? `: ${context.fallback}` : ''})`);
    const answer = await app.postMessage({ sessionId, parentId: question.id, role: 'assistant', content: sentence(random, random.int(100, 1200)) }, { onCommitted: (message) => committed(user, message) });
    const t1 = performance.now();
    user.heads.set(sessionId, answer.id);
    samples.push({ atMs: t0 - started, turnMs: t1 - t0, contextMs: context.buildMs, source: context.source, hit: context.hit, nearCache: context.nearCache === true });
  };

  const thinkTime = (random: Random) => random.int(options.thinkMs[0], options.thinkMs[1]);
  const loop = async (user: SimUser) => {
    // Users arrive over the first think time, not all in the same millisecond.
    await delay(Math.floor(user.random.next() * options.thinkMs[1]));
    for (let turns = 0; turns < options.maxTurnsPerUser && performance.now() < endAt; turns++) {
      try {
        await turn(user);
      } catch (error) {
        failed(error);
      }
      await delay(Math.min(thinkTime(user.random), Math.max(0, endAt - performance.now())));
    }
  };

  const timers = (options.events ?? []).map((event) =>
    delay(event.at * options.durationMs).then(() => event.run().catch(failed)),
  );
  await Promise.all([...users.map(loop), ...timers]);
  const seconds = (performance.now() - started) / 1000;

  // Every failed write-through repaired, then every device caught up (or given up on).
  await Promise.all(apps.map((app) => app.repaired(15_000)));
  if (sync) {
    const deadline = performance.now() + 15_000;
    while (users.some((user) => (user.device?.waiting ?? 0) > 0) && performance.now() < deadline) await delay(50);
    for (const user of users) sync.missing += user.device?.close() ?? 0;
  }
  return { samples, checker, sync, errors, firstErrors, seconds };
}

function delay(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
