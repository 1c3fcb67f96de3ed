import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { freePort, respCommand } from './redis';
import { waitFor } from './wait';

/**
 * Real local Redis topologies for tests and benchmarks: a Redis Cluster of
 * masters with replicas, and a master with a replica under three Sentinels,
 * each as `redis-server` child processes on free loopback ports with their
 * files in a temporary directory. Faults are real: SIGKILL, SIGSTOP, a
 * restart from the node's own cluster config, a slot migration with keys.
 *
 * Every wait polls the servers' own view (CLUSTER INFO / NODES, INFO
 * replication, SENTINEL …) against a deadline. Every process is tracked:
 * stop() is idempotent and always removes the directory, and whatever a
 * crashed test leaves behind is killed when this process exits.
 *
 * No vitest import: bench/ uses it too.
 */

const HOST = '127.0.0.1';
const TOTAL_SLOTS = 16_384;

// ---------------------------------------------------------------- processes

const trackedChildren = new Set<ChildProcess>();
const trackedDirs = new Set<string>();
let exitHookInstalled = false;

/** Kills what is still running and removes the directories, synchronously: it runs from 'exit'. */
function killEverything(): void {
  for (const child of trackedChildren) {
    try {
      child.kill('SIGCONT');
      child.kill('SIGKILL');
    } catch {
      // Already gone.
    }
  }
  trackedChildren.clear();
  for (const dir of trackedDirs) rmSync(dir, { recursive: true, force: true });
  trackedDirs.clear();
}

function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  process.once('exit', killEverything);
  for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
    process.once(signal, () => {
      killEverything();
      // Ours was the only handler: let the signal do what it would have done.
      if (process.listenerCount(signal) === 0) process.kill(process.pid, signal);
    });
  }
}

function makeWorkDir(prefix: string): string {
  installExitHook();
  const dir = mkdtempSync(join(tmpdir(), prefix));
  trackedDirs.add(dir);
  return dir;
}

function removeWorkDir(dir: string): void {
  trackedDirs.delete(dir);
  rmSync(dir, { recursive: true, force: true });
}

function exitedPromise(child: ChildProcess): Promise<void> {
  return child.exitCode !== null || child.signalCode !== null ? Promise.resolve() : new Promise((resolve) => child.once('exit', () => resolve()));
}

function hasExited(child: ChildProcess): boolean {
  return child.exitCode !== null || child.signalCode !== null;
}

function tail(file: string, lines = 15): string {
  if (!existsSync(file)) return '(no log)';
  return readFileSync(file, 'utf8').trimEnd().split('\n').slice(-lines).join('\n');
}

/** `count` ports nobody listens on right now, distinct from each other and from `taken`. */
async function freePorts(count: number, taken: Set<number>): Promise<number[]> {
  const ports: number[] = [];
  while (ports.length < count) {
    const port = await freePort();
    if (taken.has(port)) continue;
    taken.add(port);
    ports.push(port);
  }
  return ports;
}

/** A redis-server (or sentinel) process that can be killed, paused and started again with the same arguments. */
class ServerProcess {
  private child: ChildProcess | undefined;
  private paused = false;

  constructor(
    readonly port: number,
    private readonly args: () => string[],
    readonly logFile: string,
  ) {}

  get running(): boolean {
    return this.child !== undefined;
  }

  get isPaused(): boolean {
    return this.paused;
  }

  /** Running and not stopped: it answers commands. */
  get answering(): boolean {
    return this.child !== undefined && !this.paused;
  }

  async launch(): Promise<void> {
    if (this.child) throw new Error(`the server on port ${this.port} is already running`);
    const child = spawn('redis-server', this.args(), { stdio: 'ignore' });
    trackedChildren.add(child);
    child.once('exit', () => trackedChildren.delete(child));
    this.child = child;
    this.paused = false;
    try {
      await waitFor(
        async () => {
          if (hasExited(child)) throw new Error(`redis-server on port ${this.port} exited (${child.exitCode ?? child.signalCode}):\n${tail(this.logFile)}`);
          return (await respCommand(this.port, ['PING'])) === 'PONG';
        },
        `redis-server on port ${this.port} to answer PING`,
        10_000,
      );
    } catch (error) {
      await this.kill();
      throw error;
    }
  }

  async kill(): Promise<void> {
    const child = this.child;
    if (!child) return;
    this.child = undefined;
    this.paused = false;
    child.kill('SIGCONT');
    child.kill('SIGKILL');
    await exitedPromise(child);
  }

  async restart(): Promise<void> {
    await this.kill();
    await this.launch();
  }

  async pause(): Promise<void> {
    if (!this.child) throw new Error(`the server on port ${this.port} is not running`);
    this.child.kill('SIGSTOP');
    this.paused = true;
  }

  async resume(): Promise<void> {
    if (!this.child) throw new Error(`the server on port ${this.port} is not running`);
    this.child.kill('SIGCONT');
    this.paused = false;
  }

  command(args: (string | number)[]): Promise<unknown> {
    return respCommand(this.port, args);
  }
}

/** One server of a topology, as tests hold it. */
export interface ServerHandle {
  readonly host: string;
  readonly port: number;
  /** `host:port`. */
  readonly address: string;
  /** Its process is running (possibly paused). */
  readonly running: boolean;
  /** SIGKILL: connections drop at once, nothing is saved. */
  kill(): Promise<void>;
  /** SIGSTOP: it stops answering, connections stay open. */
  pause(): Promise<void>;
  resume(): Promise<void>;
  /** Kills it if it runs and starts it again on the same port with no data (a cluster node keeps its nodes.conf). */
  restart(): Promise<void>;
  /** One command over raw RESP; bulk strings come back as Buffers, error replies reject. */
  command(...args: (string | number)[]): Promise<unknown>;
  /** The last lines of its log file, for failure messages. */
  log(lines?: number): string;
}

function serverHandle(server: ServerProcess): ServerHandle {
  return {
    host: HOST,
    port: server.port,
    address: `${HOST}:${server.port}`,
    get running() {
      return server.running;
    },
    kill: () => server.kill(),
    pause: () => server.pause(),
    resume: () => server.resume(),
    restart: () => server.restart(),
    command: (...args) => server.command(args),
    log: (lines) => tail(server.logFile, lines),
  };
}

async function runRedisCli(args: string[], timeoutMs: number): Promise<string> {
  const child = spawn('redis-cli', args, { stdio: ['ignore', 'pipe', 'pipe'] });
  trackedChildren.add(child);
  let output = '';
  child.stdout!.setEncoding('utf8').on('data', (chunk: string) => (output += chunk));
  child.stderr!.setEncoding('utf8').on('data', (chunk: string) => (output += chunk));
  const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
  const code = await new Promise<number | null>((resolve) => child.once('exit', (exitCode) => resolve(exitCode)));
  clearTimeout(timer);
  trackedChildren.delete(child);
  if (code !== 0) throw new Error(`redis-cli ${args.join(' ')} failed (${code}):\n${output}`);
  return output;
}

const text = (reply: unknown): string => (Buffer.isBuffer(reply) ? reply.toString('utf8') : String(reply));

/** `field:value` lines of INFO or CLUSTER INFO. */
function infoFields(reply: unknown): Map<string, string> {
  const fields = new Map<string, string>();
  for (const line of text(reply).split('\r\n')) {
    const colon = line.indexOf(':');
    if (colon > 0 && !line.startsWith('#')) fields.set(line.slice(0, colon), line.slice(colon + 1));
  }
  return fields;
}

/** A flat [field, value, field, value …] reply (SENTINEL MASTER, SENTINEL REPLICAS entries). */
function pairs(reply: unknown): Map<string, string> {
  const items = reply as unknown[];
  const fields = new Map<string, string>();
  for (let i = 0; i + 1 < items.length; i += 2) fields.set(text(items[i]), text(items[i + 1]));
  return fields;
}

// ---------------------------------------------------------------- cluster

/** An inclusive range of hash slots. */
export type SlotRange = readonly [first: number, last: number];

/** One line of CLUSTER NODES: a node as one node sees it. */
interface NodeView {
  id: string;
  port: number;
  flags: Set<string>;
  masterId: string | undefined;
  slots: SlotRange[];
}

function parseClusterNodes(reply: unknown): NodeView[] {
  return text(reply)
    .trim()
    .split('\n')
    .filter((line) => line.trim() !== '')
    .map((line) => {
      const [id, address, flags, master, , , , , ...slotFields] = line.trim().split(' ');
      const hostPort = address!.split('@')[0]!;
      const slots: SlotRange[] = [];
      for (const field of slotFields) {
        // "[slot->-id]" / "[slot-<-id]": a migration in progress, not an owned slot.
        if (field.startsWith('[')) continue;
        const [first, last] = field.split('-');
        slots.push([Number(first), Number(last ?? first)]);
      }
      return {
        id: id!,
        port: Number(hostPort.slice(hostPort.lastIndexOf(':') + 1)),
        flags: new Set(flags!.split(',')),
        masterId: master === '-' ? undefined : master,
        slots,
      };
    });
}

function slotsOf(ranges: readonly SlotRange[]): number[] {
  const slots: number[] = [];
  for (const [first, last] of ranges) for (let slot = first; slot <= last; slot++) slots.push(slot);
  return slots;
}

function countSlots(ranges: readonly SlotRange[]): number {
  return ranges.reduce((sum, [first, last]) => sum + last - first + 1, 0);
}

/** Slot → owner id, as one node sees it. */
function slotOwners(views: NodeView[]): string[] {
  const owners = new Array<string>(TOTAL_SLOTS).fill('');
  for (const view of views) for (const [first, last] of view.slots) owners.fill(view.id, first, last + 1);
  return owners;
}

export type ClusterRole = 'master' | 'replica';

/** A node of the test cluster; role, master and slots are as of the harness's last look (refresh()). */
export interface ClusterNode extends ServerHandle {
  /** Its cluster node id (kept across restarts: its nodes.conf stays). */
  readonly id: string;
  readonly role: ClusterRole;
  /** The id of the master it replicates; undefined for a master. */
  readonly masterId: string | undefined;
  /** The slots it serves (masters only). */
  readonly slots: readonly SlotRange[];
  readonly slotCount: number;
  /** `restart()` starts it from its nodes.conf: a master restarted before its replica took over comes back an empty master of its old slots. */
}

export interface ClusterOptions {
  masters?: number;
  replicasPerMaster?: number;
}

export interface FailoverTiming {
  /** From the SIGKILL to the harness seeing the new state everywhere. */
  elapsedMs: number;
}

export interface TestCluster {
  /** `host:port` of every node: what a REDIS_CLUSTER_NODES variable would list. */
  readonly seeds: readonly string[];
  /** The same, comma-joined: the REDIS_CLUSTER_NODES value. */
  readonly seedList: string;
  /** The same as ioredis `Cluster` startup nodes. */
  readonly startupNodes: readonly { host: string; port: number }[];
  readonly nodes: readonly ClusterNode[];
  masters(): ClusterNode[];
  replicas(): ClusterNode[];
  /** The replica(s) of a master, as of the last look. */
  replicasOf(master: ClusterNode): ClusterNode[];
  /** Reads the topology again (CLUSTER NODES of an answering node) into `nodes`. */
  refresh(): Promise<void>;
  /** CLUSTER KEYSLOT, asked of an answering node. */
  keySlot(key: string): Promise<number>;
  /** The master serving a slot, as of the last look. */
  masterOfSlot(slot: number): ClusterNode;
  /** The master serving a key's slot. */
  masterOf(key: string): Promise<ClusterNode>;
  /**
   * Resolves when every answering node says cluster_state:ok, knows every
   * node, sees the same slot owners and the same roles, and every answering
   * replica's link to its master is up.
   */
  waitUntilHealthy(timeoutMs?: number): Promise<void>;
  /** SIGKILLs a master; resolves once a replica serves its slots and every answering node says cluster_state:ok. */
  killMaster(master: ClusterNode): Promise<FailoverTiming & { promoted: ClusterNode; slots: readonly SlotRange[] }>;
  /**
   * Starts a killed node again, only once every answering node flags it
   * FAIL and its slots serve elsewhere; resolves when it has rejoined as a
   * replica with its link up (rejects if it came back as a master).
   */
  restartKilled(node: ClusterNode): Promise<FailoverTiming & { master: ClusterNode }>;
  /**
   * Migrates `slotCount` slots of `from` (its first ones, or `options.slots`)
   * to `to`, keys included, the way redis-cli does: SETSLOT IMPORTING on
   * `to`, MIGRATING on `from`, GETKEYSINSLOT + MIGRATE until the slot is
   * empty, then SETSLOT NODE everywhere. `whileMigrating` runs once per slot
   * with its keys moved but its ownership not yet: `from` answers ASK for
   * them. Afterwards `from` answers MOVED.
   */
  reshard(
    slotCount: number,
    from: ClusterNode,
    to: ClusterNode,
    options?: { slots?: readonly number[]; whileMigrating?: (slot: number) => Promise<void> | void },
  ): Promise<{ slots: number[]; keysMoved: number; elapsedMs: number }>;
  /** Kills every process and removes the directory; safe to call twice. */
  stop(): Promise<void>;
}

interface ClusterNodeState {
  server: ServerProcess;
  handle: ClusterNode;
  id: string;
  role: ClusterRole;
  masterId: string | undefined;
  slots: SlotRange[];
}

export async function startCluster({ masters = 3, replicasPerMaster = 1 }: ClusterOptions = {}): Promise<TestCluster> {
  if (masters < 3) throw new Error('Redis Cluster needs at least 3 masters');
  const dir = makeWorkDir('cc-cluster-');
  const total = masters * (1 + replicasPerMaster);
  const states: ClusterNodeState[] = [];
  const taken = new Set<number>();
  let stopped: Promise<void> | undefined;

  const stop = () =>
    (stopped ??= (async () => {
      await Promise.all(states.map((state) => state.server.kill()));
      removeWorkDir(dir);
    })());

  const answering = () => states.filter((state) => state.server.answering);
  const byId = (id: string) => states.find((state) => state.id === id);

  const refresh = async () => {
    const source = answering()[0];
    if (!source) throw new Error('no cluster node is answering');
    const views = parseClusterNodes(await source.server.command(['CLUSTER', 'NODES']));
    for (const view of views) {
      const state = states.find((s) => s.server.port === view.port);
      if (!state) continue;
      state.id = view.id;
      state.role = view.flags.has('slave') ? 'replica' : 'master';
      state.masterId = view.masterId;
      state.slots = view.slots;
    }
  };

  /** What every answering node says; throws a sentence naming the first disagreement (it ends up in waitFor's timeout message). */
  const checkHealthy = async (expectedReplicas?: number) => {
    const nodes = answering();
    let reference: string[] | undefined;
    let referenceRoles: string | undefined;
    for (const state of nodes) {
      const info = infoFields(await state.server.command(['CLUSTER', 'INFO']));
      if (info.get('cluster_state') !== 'ok') throw new Error(`node ${state.server.port} says cluster_state:${info.get('cluster_state')}`);
      if (Number(info.get('cluster_known_nodes')) !== total) throw new Error(`node ${state.server.port} knows ${info.get('cluster_known_nodes')} of ${total} nodes`);
      const views = parseClusterNodes(await state.server.command(['CLUSTER', 'NODES']));
      const owners = slotOwners(views);
      if (owners.includes('')) throw new Error(`node ${state.server.port} sees unassigned slots`);
      if (reference && owners.some((owner, slot) => owner !== reference![slot])) throw new Error(`node ${state.server.port} disagrees on slot owners`);
      reference = owners;
      // Who replicates whom, for the nodes that run: gossip spreads a new replica's role after its master's slots.
      const roles = views
        .filter((view) => states.find((s) => s.server.port === view.port)?.server.running)
        .map((view) => `${view.port}:${view.flags.has('slave') ? `replica of ${view.masterId}` : 'master'}`)
        .sort()
        .join(' ');
      if (referenceRoles !== undefined && roles !== referenceRoles) throw new Error(`node ${state.server.port} sees other roles: ${roles} (vs ${referenceRoles})`);
      referenceRoles = roles;
      const replicas = views.filter((view) => view.flags.has('slave') && states.find((s) => s.server.port === view.port)?.server.running).length;
      if (expectedReplicas !== undefined && replicas !== expectedReplicas) throw new Error(`node ${state.server.port} sees ${replicas} of ${expectedReplicas} replicas`);
      for (const view of views) {
        const other = states.find((s) => s.server.port === view.port);
        if (other?.server.answering && (view.flags.has('fail') || view.flags.has('fail?'))) throw new Error(`node ${state.server.port} still flags ${view.port} ${[...view.flags].join(',')}`);
      }
      const myself = views.find((view) => view.flags.has('myself'))!;
      if (myself.flags.has('slave')) {
        const replication = infoFields(await state.server.command(['INFO', 'replication']));
        if (replication.get('master_link_status') !== 'up') throw new Error(`replica ${state.server.port}: master_link_status:${replication.get('master_link_status')}`);
      }
    }
    return true;
  };

  const waitUntilHealthy = async (timeoutMs = 20_000, expectedReplicas?: number) => {
    await waitFor(() => checkHealthy(expectedReplicas), 'the cluster to be healthy', timeoutMs, 20);
    await refresh();
  };

  const makeNode = (port: number, busPort: number): ClusterNodeState => {
    const args = () => [
      '--port', String(port),
      '--bind', HOST,
      '--protected-mode', 'no',
      '--cluster-enabled', 'yes',
      '--cluster-port', String(busPort),
      '--cluster-config-file', join(dir, `nodes-${port}.conf`),
      '--cluster-node-timeout', '1000',
      '--repl-diskless-sync-delay', '0',
      '--save', '',
      '--appendonly', 'no',
      '--dir', dir,
      '--logfile', join(dir, `redis-${port}.log`),
    ];
    const server = new ServerProcess(port, args, join(dir, `redis-${port}.log`));
    const state: ClusterNodeState = { server, id: '', role: 'master', masterId: undefined, slots: [], handle: undefined as unknown as ClusterNode };
    const base = serverHandle(server);
    state.handle = Object.defineProperties(base, {
      id: { get: () => state.id, enumerable: true },
      role: { get: () => state.role, enumerable: true },
      masterId: { get: () => state.masterId, enumerable: true },
      slots: { get: () => state.slots, enumerable: true },
      slotCount: { get: () => countSlots(state.slots), enumerable: true },
    }) as ClusterNode;
    return state;
  };

  const stateOf = (node: ClusterNode) => {
    const state = states.find((s) => s.handle === node);
    if (!state) throw new Error(`node ${node.port} is not part of this cluster`);
    return state;
  };

  try {
    // A port can be taken between freePort() and redis-server binding it: try fresh ports a few times.
    for (let i = 0; i < total; i++) {
      for (let attempt = 1; ; attempt++) {
        const [port, busPort] = await freePorts(2, taken);
        const state = makeNode(port!, busPort!);
        try {
          await state.server.launch();
          states.push(state);
          break;
        } catch (error) {
          if (attempt >= 3) throw error;
        }
      }
    }
    await runRedisCli(['--cluster', 'create', ...states.map((s) => `${HOST}:${s.server.port}`), '--cluster-replicas', String(replicasPerMaster), '--cluster-yes'], 30_000);
    await waitUntilHealthy(30_000, masters * replicasPerMaster);
  } catch (error) {
    await stop();
    throw error;
  }

  const cluster: TestCluster = {
    seeds: states.map((s) => `${HOST}:${s.server.port}`),
    get seedList() {
      return cluster.seeds.join(',');
    },
    startupNodes: states.map((s) => ({ host: HOST, port: s.server.port })),
    nodes: states.map((s) => s.handle),
    masters: () => states.filter((s) => s.role === 'master' && s.slots.length > 0).map((s) => s.handle),
    replicas: () => states.filter((s) => s.role === 'replica').map((s) => s.handle),
    replicasOf: (master) => states.filter((s) => s.role === 'replica' && s.masterId === master.id).map((s) => s.handle),
    refresh,
    async keySlot(key) {
      const source = answering()[0];
      if (!source) throw new Error('no cluster node is answering');
      return Number(await source.server.command(['CLUSTER', 'KEYSLOT', key]));
    },
    masterOfSlot(slot) {
      const owner = states.find((s) => s.role === 'master' && s.slots.some(([first, last]) => slot >= first && slot <= last));
      if (!owner) throw new Error(`no master serves slot ${slot} (as of the last refresh)`);
      return owner.handle;
    },
    async masterOf(key) {
      await refresh();
      return cluster.masterOfSlot(await cluster.keySlot(key));
    },
    waitUntilHealthy: (timeoutMs) => waitUntilHealthy(timeoutMs),

    async killMaster(master) {
      const state = stateOf(master);
      await refresh();
      if (state.role !== 'master' || state.slots.length === 0) throw new Error(`node ${master.port} is not a master serving slots`);
      if (!state.server.running) throw new Error(`node ${master.port} is not running`);
      const formerSlots = state.slots;
      const replicaIds = new Set(states.filter((s) => s.masterId === state.id && s.server.answering).map((s) => s.id));
      if (replicaIds.size === 0) throw new Error(`master ${master.port} has no answering replica to promote`);
      const started = performance.now();
      await state.server.kill();
      await waitFor(
        async () => {
          await checkHealthy();
          await refresh();
          const owner = byId(slotOwners(parseClusterNodes(await answering()[0]!.server.command(['CLUSTER', 'NODES'])))[formerSlots[0]![0]]!);
          if (!owner || !replicaIds.has(owner.id)) throw new Error(`slot ${formerSlots[0]![0]} is still served by ${owner?.server.port ?? 'nobody'}`);
          return true;
        },
        `a replica of ${master.port} to take over its slots`,
        20_000,
        10,
      );
      const elapsedMs = performance.now() - started;
      const promoted = states.find((s) => replicaIds.has(s.id) && s.role === 'master')!;
      return { elapsedMs, promoted: promoted.handle, slots: formerSlots };
    },

    async restartKilled(node) {
      const state = stateOf(node);
      if (state.server.running) throw new Error(`node ${node.port} is running; kill it first`);
      const started = performance.now();
      await waitFor(
        async () => {
          for (const other of answering()) {
            const view = parseClusterNodes(await other.server.command(['CLUSTER', 'NODES'])).find((v) => v.id === state.id);
            if (!view?.flags.has('fail')) throw new Error(`node ${other.server.port} does not flag ${node.port} FAIL yet (${[...(view?.flags ?? [])].join(',')})`);
            if (view.slots.length > 0) throw new Error(`node ${other.server.port} still sees ${node.port} serving slots`);
          }
          return true;
        },
        `node ${node.port} to be flagged FAIL with its slots moved`,
        20_000,
        20,
      );
      await state.server.launch();
      await waitFor(
        async () => {
          const myself = parseClusterNodes(await state.server.command(['CLUSTER', 'NODES'])).find((v) => v.flags.has('myself'))!;
          if (myself.flags.has('master') && myself.slots.length > 0) throw new Error(`node ${node.port} came back as a master of ${countSlots(myself.slots)} slots`);
          return myself.flags.has('slave');
        },
        `node ${node.port} to rejoin as a replica`,
        20_000,
        20,
      );
      await waitUntilHealthy();
      if (state.role !== 'replica') throw new Error(`node ${node.port} rejoined as a ${state.role}`);
      return { elapsedMs: performance.now() - started, master: byId(state.masterId!)!.handle };
    },

    async reshard(slotCount, from, to, options = {}) {
      await refresh();
      const source = stateOf(from);
      const target = stateOf(to);
      if (source.role !== 'master' || target.role !== 'master') throw new Error('reshard moves slots between two masters');
      const owned = new Set(slotsOf(source.slots));
      const slots = options.slots ? [...options.slots] : slotsOf(source.slots).slice(0, slotCount);
      if (slots.length !== slotCount) throw new Error(`asked to move ${slotCount} slots, got ${slots.length}`);
      for (const slot of slots) if (!owned.has(slot)) throw new Error(`slot ${slot} is not served by ${from.port}`);
      const started = performance.now();
      let keysMoved = 0;
      for (const slot of slots) {
        await target.server.command(['CLUSTER', 'SETSLOT', slot, 'IMPORTING', source.id]);
        await source.server.command(['CLUSTER', 'SETSLOT', slot, 'MIGRATING', target.id]);
        for (;;) {
          const keys = ((await source.server.command(['CLUSTER', 'GETKEYSINSLOT', slot, 100])) as Buffer[]).map(text);
          if (keys.length === 0) break;
          await source.server.command(['MIGRATE', HOST, target.server.port, '', 0, 5000, 'REPLACE', 'KEYS', ...keys]);
          keysMoved += keys.length;
        }
        await options.whileMigrating?.(slot);
        // The target first, so that it never answers MOVED back to the source for a slot it holds the keys of.
        for (const state of [target, source, ...states.filter((s) => s.role === 'master' && s !== source && s !== target && s.server.answering)]) {
          await state.server.command(['CLUSTER', 'SETSLOT', slot, 'NODE', target.id]);
        }
      }
      await waitFor(
        async () => {
          for (const state of answering()) {
            const owners = slotOwners(parseClusterNodes(await state.server.command(['CLUSTER', 'NODES'])));
            const stale = slots.find((slot) => owners[slot] !== target.id);
            if (stale !== undefined) throw new Error(`node ${state.server.port} does not see slot ${stale} on ${to.port} yet`);
          }
          return true;
        },
        `every node to see the moved slots on ${to.port}`,
        10_000,
        20,
      );
      await refresh();
      return { slots, keysMoved, elapsedMs: performance.now() - started };
    },

    stop,
  };
  return cluster;
}

// ---------------------------------------------------------------- sentinel

export interface TestSentinel {
  readonly masterName: string;
  /** `host:port` of each sentinel: what a REDIS_SENTINELS variable would list. */
  readonly sentinels: readonly string[];
  /** The same, comma-joined: the REDIS_SENTINELS value. */
  readonly sentinelList: string;
  /** The same as ioredis `sentinels` option. */
  readonly sentinelAddresses: readonly { host: string; port: number }[];
  readonly sentinelNodes: readonly ServerHandle[];
  /** The data server the harness last saw as master (after failover(): the promoted one). */
  master(): ServerHandle;
  /** The other data server (after failover(): the killed one; restart() brings it back as a replica of the new master). */
  replica(): ServerHandle;
  /**
   * Resolves when every sentinel names the current master, none flags it
   * down, each knows the other sentinels and the running replica, and the
   * replica's link is up.
   */
  waitUntilHealthy(timeoutMs?: number): Promise<void>;
  /** SIGKILLs the master; resolves when a sentinel names the replica as master (and it says role:master). */
  failover(): Promise<FailoverTiming & { master: ServerHandle; previous: ServerHandle }>;
  /** Kills every process and removes the directory; safe to call twice. */
  stop(): Promise<void>;
}

export async function startSentinel({ masterName = 'cc-master' }: { masterName?: string } = {}): Promise<TestSentinel> {
  const dir = makeWorkDir('cc-sentinel-');
  const taken = new Set<number>();
  const [portA, portB, ...sentinelPorts] = await freePorts(5, taken);
  const data: { server: ServerProcess; handle: ServerHandle }[] = [];
  const sentinels: ServerProcess[] = [];
  let masterIndex = 0;
  let stopped: Promise<void> | undefined;

  const stop = () =>
    (stopped ??= (async () => {
      await Promise.all([...data.map((d) => d.server.kill()), ...sentinels.map((s) => s.kill())]);
      removeWorkDir(dir);
    })());

  for (const [index, port] of [portA!, portB!].entries()) {
    // Whichever is not the master starts as a replica of it: a restarted old master rejoins, it does not compete.
    const args = () => [
      '--port', String(port),
      '--bind', HOST,
      '--protected-mode', 'no',
      '--repl-diskless-sync-delay', '0',
      '--save', '',
      '--appendonly', 'no',
      '--dir', dir,
      '--dbfilename', `dump-${port}.rdb`,
      '--logfile', join(dir, `redis-${port}.log`),
      ...(index === masterIndex ? [] : ['--replicaof', HOST, String(data[masterIndex]!.server.port)]),
    ];
    const server = new ServerProcess(port, args, join(dir, `redis-${port}.log`));
    data.push({ server, handle: serverHandle(server) });
  }
  for (const port of sentinelPorts) {
    const conf = join(dir, `sentinel-${port}.conf`);
    // Sentinel rewrites its config file (epochs, known replicas and sentinels): each needs its own, writable.
    writeFileSync(
      conf,
      [
        `port ${port}`,
        `bind ${HOST}`,
        'protected-mode no',
        `dir ${dir}`,
        `logfile ${join(dir, `sentinel-${port}.log`)}`,
        `sentinel monitor ${masterName} ${HOST} ${portA} 2`,
        `sentinel down-after-milliseconds ${masterName} 1000`,
        `sentinel failover-timeout ${masterName} 5000`,
        `sentinel parallel-syncs ${masterName} 1`,
        '',
      ].join('\n'),
    );
    sentinels.push(new ServerProcess(port!, () => [conf, '--sentinel'], join(dir, `sentinel-${port}.log`)));
  }

  const replicaIndex = () => 1 - masterIndex;

  const checkHealthy = async () => {
    const master = data[masterIndex]!.server;
    const replica = data[replicaIndex()]!.server;
    if (!master.answering) throw new Error(`the master (${master.port}) is not answering`);
    if (replica.answering) {
      const link = infoFields(await replica.command(['INFO', 'replication']));
      if (link.get('master_port') !== String(master.port) || link.get('master_link_status') !== 'up') {
        throw new Error(`replica ${replica.port}: master_port:${link.get('master_port')} master_link_status:${link.get('master_link_status')}`);
      }
    }
    for (const sentinel of sentinels.filter((s) => s.answering)) {
      const address = ((await sentinel.command(['SENTINEL', 'GET-MASTER-ADDR-BY-NAME', masterName])) as Buffer[]).map(text);
      if (address[1] !== String(master.port)) throw new Error(`sentinel ${sentinel.port} names ${address.join(':')} as master`);
      const state = pairs(await sentinel.command(['SENTINEL', 'MASTER', masterName]));
      if (state.get('flags') !== 'master') throw new Error(`sentinel ${sentinel.port} flags the master ${state.get('flags')}`);
      if (Number(state.get('num-other-sentinels')) !== sentinels.length - 1) throw new Error(`sentinel ${sentinel.port} knows ${state.get('num-other-sentinels')} other sentinels`);
      if (replica.answering) {
        const replicas = ((await sentinel.command(['SENTINEL', 'REPLICAS', masterName])) as unknown[]).map(pairs);
        const seen = replicas.find((r) => r.get('port') === String(replica.port));
        // Its flags follow PINGs (every second); its master-link-status follows INFO, every 10 s: the replica's own INFO says that above.
        if (seen?.get('flags') !== 'slave') throw new Error(`sentinel ${sentinel.port} sees replica ${replica.port} as ${seen?.get('flags') ?? 'unknown'}`);
      }
    }
    return true;
  };

  const waitUntilHealthy = (timeoutMs = 45_000) => waitFor(checkHealthy, 'the sentinel setup to be healthy', timeoutMs, 20).then(() => undefined);

  try {
    await data[0]!.server.launch();
    await data[1]!.server.launch();
    // The replica linked before the sentinels start: their first INFO of the master then lists it (the next comes 10 s later).
    await waitFor(async () => infoFields(await data[1]!.server.command(['INFO', 'replication'])).get('master_link_status') === 'up', 'the replica to link to the master');
    await Promise.all(sentinels.map((s) => s.launch()));
    await waitUntilHealthy(30_000);
  } catch (error) {
    await stop();
    throw error;
  }

  return {
    masterName,
    sentinels: sentinels.map((s) => `${HOST}:${s.port}`),
    sentinelList: sentinels.map((s) => `${HOST}:${s.port}`).join(','),
    sentinelAddresses: sentinels.map((s) => ({ host: HOST, port: s.port })),
    sentinelNodes: sentinels.map(serverHandle),
    master: () => data[masterIndex]!.handle,
    replica: () => data[replicaIndex()]!.handle,
    waitUntilHealthy,
    async failover() {
      const previous = data[masterIndex]!;
      const next = data[replicaIndex()]!;
      if (!next.server.answering) throw new Error(`the replica (${next.server.port}) is not answering: nothing to promote`);
      const started = performance.now();
      await previous.server.kill();
      await waitFor(
        async () => {
          for (const sentinel of sentinels.filter((s) => s.answering)) {
            const address = ((await sentinel.command(['SENTINEL', 'GET-MASTER-ADDR-BY-NAME', masterName])) as Buffer[]).map(text);
            if (address[1] === String(next.server.port)) return true;
          }
          return false;
        },
        `a sentinel to name ${next.server.port} master`,
        20_000,
        10,
      );
      const elapsedMs = performance.now() - started;
      masterIndex = replicaIndex();
      await waitFor(async () => infoFields(await next.server.command(['INFO', 'replication'])).get('role') === 'master', `${next.server.port} to say role:master`);
      return { elapsedMs, master: next.handle, previous: previous.handle };
    },
    stop,
  };
}
