/**
 * Which Pub/Sub should the invalidation bus use on a Redis Cluster? On a
 * 3+3 cluster from the test harness, our write scripts' shape (a Lua SET
 * that announces itself from inside the script, in whatever slot its key
 * hashes to), measured three ways in one run:
 *
 * - classic: the script PUBLISHes on one channel; one ioredis `Cluster`
 *   subscriber hears every slot. The cluster bus broadcasts each message to
 *   every node.
 * - sharded: the script SPUBLISHes on a channel in its key's slot (it must:
 *   a script may only touch its own slot); an ioredis `Cluster` with
 *   `shardedSubscribers: true` SSUBSCRIBEs one channel per slot (16384) so as
 *   to hear every slot, as a sidecar would have to.
 * - baseline: the same SET without any publish.
 *
 * Writes are spread over all slots. Propagation is from issuing EVALSHA to
 * the subscriber's message callback, in this process (process.hrtime).
 */
import calculateSlot from 'cluster-key-slot';
import { Cluster } from 'ioredis';
import { startCluster, type TestCluster } from '../test/helpers/topology';
import { scaled } from './harness';
import { measureThroughput, ratio, runCleanup, summarize, type Bench, type BenchReport, type BenchResult, type LatencyStats, type ThroughputStats } from './lib';

const TOTAL_SLOTS = 16_384;
const CLASSIC_CHANNEL = 'cc:bench:bus';
const VALUE = 'x'.repeat(256);
/** About what an invalidation carries: key, version, origin. */
const MESSAGE_PAD = 'v'.repeat(64);
const IN_FLIGHT = 32;

const SET_ONLY = "redis.call('SET', KEYS[1], ARGV[1]) return 1";
const SET_PUBLISH = "redis.call('SET', KEYS[1], ARGV[1]) redis.call('PUBLISH', ARGV[2], ARGV[3]) return 1";
// The channel is declared as a key: the cluster then checks it is in the script's slot.
const SET_SPUBLISH = "redis.call('SET', KEYS[1], ARGV[1]) redis.call('SPUBLISH', KEYS[2], ARGV[2]) return 1";

interface BusClient extends Cluster {
  setOnly(key: string, value: string): Promise<number>;
  setPublish(key: string, value: string, channel: string, message: string): Promise<number>;
  setSpublish(key: string, channel: string, value: string, message: string): Promise<number>;
}

/** A hash tag for every slot: the first `t<n>` that hashes there (the slot function ioredis itself uses). */
function tagForEverySlot(): string[] {
  const tags = new Array<string>(TOTAL_SLOTS);
  let missing = TOTAL_SLOTS;
  for (let n = 0; missing > 0; n++) {
    const slot = calculateSlot(`t${n}`);
    if (tags[slot] === undefined) {
      tags[slot] = `t${n}`;
      missing--;
    }
  }
  return tags;
}

/** cluster_stats_messages_<type>_sent summed over every node: what the cluster bus carried. */
async function busMessagesSent(cluster: TestCluster, type: 'publish' | 'publishshard'): Promise<number> {
  let total = 0;
  for (const node of cluster.nodes) {
    const info = String(await node.command('CLUSTER', 'INFO'));
    total += Number(new RegExp(`^cluster_stats_messages_${type}_sent:(\\d+)`, 'm').exec(info)?.[1] ?? 0);
  }
  return total;
}

/** Resolves write ids as their messages arrive; each message is "<id> <pad>". */
class Arrivals {
  private readonly waiting = new Map<number, (atNs: bigint) => void>();
  received = 0;

  onMessage(message: string): void {
    const at = process.hrtime.bigint();
    this.received++;
    const id = Number(message.slice(0, message.indexOf(' ')));
    const resolve = this.waiting.get(id);
    if (resolve) {
      this.waiting.delete(id);
      resolve(at);
    }
  }

  expect(id: number): Promise<bigint> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiting.delete(id);
        reject(new Error(`the message of write ${id} did not arrive within 5 s`));
      }, 5000);
      this.waiting.set(id, (at) => {
        clearTimeout(timer);
        resolve(at);
      });
    });
  }
}

interface PropagationRun {
  propagation: LatencyStats;
  roundTrip: LatencyStats;
  /** Messages per second with IN_FLIGHT writes in flight, counted when the last message arrived; NaN when not measured. */
  throughput: ThroughputStats;
  /** Script calls per second with IN_FLIGHT in flight, not waiting for the messages: the write's own cost. */
  scriptThroughput: ThroughputStats;
  busMessagesPerWrite: number;
}

export const clusterBus: Bench = {
  name: 'cluster-bus',
  async run(): Promise<BenchReport> {
    const writes = scaled(3000);
    const concurrentWrites = scaled(6000);
    const cleanup: (() => Promise<unknown> | unknown)[] = [];
    try {
      const startedAt = performance.now();
      const cluster = await startCluster();
      cleanup.push(() => cluster.stop());
      const clusterStartMs = performance.now() - startedAt;

      const connect = async <T extends Cluster>(client: T): Promise<T> => {
        client.on('error', () => undefined);
        cleanup.push(() => client.disconnect());
        if (client.status !== 'ready') await new Promise((resolve) => client.once('ready', resolve));
        return client;
      };
      const writer = await connect(new Cluster([...cluster.startupNodes]) as BusClient);
      writer.defineCommand('setOnly', { numberOfKeys: 1, lua: SET_ONLY });
      writer.defineCommand('setPublish', { numberOfKeys: 1, lua: SET_PUBLISH });
      writer.defineCommand('setSpublish', { numberOfKeys: 2, lua: SET_SPUBLISH });

      const tags = tagForEverySlot();
      // The cluster hashes as we do.
      for (const slot of [0, 5000, TOTAL_SLOTS - 1]) {
        if ((await cluster.keySlot(`{${tags[slot]}}:k`)) !== slot) throw new Error(`the cluster does not put {${tags[slot]}} in slot ${slot}`);
      }
      // Write i goes to slot (i * 7919) mod 16384: every slot in turn, all masters interleaved.
      const slotOf = (i: number) => (i * 7919) % TOTAL_SLOTS;
      const keyOf = (i: number) => `{${tags[slotOf(i)]}}:k`;
      const shardChannelOf = (i: number) => `{${tags[slotOf(i)]}}:bus`;
      const message = (id: number) => `${id} ${MESSAGE_PAD}`;

      // Classic: one subscriber connection, on whichever node ioredis picked.
      const classicArrivals = new Arrivals();
      const classic = await connect(new Cluster([...cluster.startupNodes]));
      classic.on('message', (_channel: string, text: string) => classicArrivals.onMessage(text));
      await classic.subscribe(CLASSIC_CHANNEL);
      let subscriberPort: number | undefined;
      for (const node of cluster.nodes) {
        const clients = String(await node.command('CLIENT', 'LIST'));
        if (/ sub=1 /.test(clients)) subscriberPort = node.port;
      }
      if (subscriberPort === undefined) throw new Error('found no node holding the classic subscription');
      const subscriberRole = cluster.nodes.find((node) => node.port === subscriberPort)!.role;

      // Sharded: one channel per slot, so that every write is heard; one subscriber connection per master.
      const shardedArrivals = new Arrivals();
      const sharded = await connect(new Cluster([...cluster.startupNodes], { shardedSubscribers: true }));
      sharded.on('smessage', (_channel: string, text: string) => shardedArrivals.onMessage(text));
      const subscribeStart = performance.now();
      const channels = tags.map((tag) => `{${tag}}:bus`);
      for (let i = 0; i < channels.length; i += 512) await Promise.all(channels.slice(i, i + 512).map((channel) => sharded.ssubscribe(channel)));
      const ssubscribeAllMs = performance.now() - subscribeStart;

      const propagationRun = async (publish: (i: number) => Promise<unknown>, arrivals: Arrivals, type: 'publish' | 'publishshard', filter: (i: number) => boolean = () => true, offset = 0, withThroughput = true): Promise<PropagationRun> => {
        const ids: number[] = [];
        for (let i = offset; ids.length < writes; i++) if (filter(i)) ids.push(i);
        // Warm-up: the script cached on every master, the slot map settled.
        for (const id of ids.slice(0, 200)) await Promise.all([arrivals.expect(id), publish(id)]);
        const busBefore = await busMessagesSent(cluster, type);
        const propagation = new Float64Array(ids.length);
        const roundTrip = new Float64Array(ids.length);
        for (const [n, id] of ids.entries()) {
          const arrived = arrivals.expect(id);
          const start = process.hrtime.bigint();
          await publish(id);
          roundTrip[n] = Number(process.hrtime.bigint() - start);
          propagation[n] = Number((await arrived) - start);
        }
        const busMessagesPerWrite = ((await busMessagesSent(cluster, type)) - busBefore) / ids.length;
        if (!withThroughput) {
          const none = { calls: 0, concurrency: IN_FLIGHT, seconds: 0, callsPerSecond: Number.NaN };
          return { propagation: summarize(propagation), roundTrip: summarize(roundTrip), throughput: none, scriptThroughput: none, busMessagesPerWrite };
        }
        let scriptNext = 0;
        const scriptThroughput = await measureThroughput(() => publish(5_000_000 + offset + scriptNext++), { concurrency: IN_FLIGHT, calls: concurrentWrites });
        // Throughput: IN_FLIGHT writes at a time, until every message has arrived.
        let next = 0;
        const begin = process.hrtime.bigint();
        await Promise.all(
          Array.from({ length: IN_FLIGHT }, async () => {
            while (next < concurrentWrites) {
              const id = 1_000_000 + offset + next++;
              await Promise.all([arrivals.expect(id), publish(id)]);
            }
          }),
        );
        const seconds = Number(process.hrtime.bigint() - begin) / 1e9;
        return {
          propagation: summarize(propagation),
          roundTrip: summarize(roundTrip),
          throughput: { calls: concurrentWrites, concurrency: IN_FLIGHT, seconds, callsPerSecond: concurrentWrites / seconds },
          scriptThroughput,
          busMessagesPerWrite,
        };
      };

      const onSubscriberNode = (i: number) => cluster.masterOfSlot(slotOf(i)).port === subscriberPort;
      const publishClassic = (i: number) => writer.setPublish(keyOf(i), VALUE, CLASSIC_CHANNEL, message(i));
      const classicRemote = await propagationRun(publishClassic, classicArrivals, 'publish', (i) => !onSubscriberNode(i));
      const classicLocal = subscriberRole === 'master' ? await propagationRun(publishClassic, classicArrivals, 'publish', onSubscriberNode, 2_000_000, false) : undefined;
      const shardedRun = await propagationRun((i) => writer.setSpublish(keyOf(i), shardChannelOf(i), VALUE, message(i)), shardedArrivals, 'publishshard');
      // Sharded messages never reach the classic subscriber, nor classic ones the sharded: each run heard only its own.
      const crossTalk = Math.max(0, shardedArrivals.received - (writes + 200 + 2 * concurrentWrites));

      // The baseline script, the same keys.
      const baselineSamples = new Float64Array(writes);
      for (let i = 0; i < 200; i++) await writer.setOnly(keyOf(i), VALUE);
      for (let i = 0; i < writes; i++) {
        const start = process.hrtime.bigint();
        await writer.setOnly(keyOf(i), VALUE);
        baselineSamples[i] = Number(process.hrtime.bigint() - start);
      }
      let baselineNext = 0;
      const baselineThroughput = await measureThroughput(() => writer.setOnly(keyOf(baselineNext++), VALUE), { concurrency: IN_FLIGHT, calls: concurrentWrites });
      const baseline: BenchResult = { name: 'script round trip: SET only', latency: summarize(baselineSamples), throughput: baselineThroughput };

      const rows: BenchResult[] = [
        baseline,
        { name: 'script round trip: SET + PUBLISH', latency: classicRemote.roundTrip, throughput: classicRemote.scriptThroughput },
        { name: 'script round trip: SET + SPUBLISH', latency: shardedRun.roundTrip, throughput: shardedRun.scriptThroughput },
        { name: 'propagation classic, other node', latency: classicRemote.propagation, throughput: classicRemote.throughput },
        ...(classicLocal ? [{ name: 'propagation classic, same node', latency: classicLocal.propagation, throughput: classicLocal.throughput }] : []),
        { name: 'propagation sharded', latency: shardedRun.propagation, throughput: shardedRun.throughput },
      ];
      const masters = cluster.masters().length;
      return {
        title: `Invalidation bus on a Redis Cluster of ${masters} masters + ${cluster.replicas().length} replicas (Node ${process.version}; ${writes} sequential writes per row over all slots, ${concurrentWrites} with ${IN_FLIGHT} in flight)`,
        results: rows,
        notes: [
          `script rows: calls/s with ${IN_FLIGHT} calls in flight, not waiting for any message; propagation rows: from issuing EVALSHA to the subscriber's callback, and their calls/s count writes whose message arrived, ${IN_FLIGHT} at a time`,
          `classic subscriber on node ${subscriberPort} (a ${subscriberRole}); "other node" = writes whose slot another master serves`,
          `propagation p50 classic(other node) / sharded: ${ratio(classicRemote.propagation.p50Us, shardedRun.propagation.p50Us)}, p99 ${ratio(classicRemote.propagation.p99Us, shardedRun.propagation.p99Us)}`,
          ...(classicLocal ? [`propagation p50 classic(same node) / sharded: ${ratio(classicLocal.propagation.p50Us, shardedRun.propagation.p50Us)}`] : []),
          `script p50 SET+PUBLISH / SET only: ${ratio(classicRemote.roundTrip.p50Us, baseline.latency.p50Us)}; SET+SPUBLISH / SET only: ${ratio(shardedRun.roundTrip.p50Us, baseline.latency.p50Us)}`,
          `script calls/s with ${IN_FLIGHT} in flight: SET only ${baselineThroughput.callsPerSecond.toFixed(0)}, +PUBLISH ${classicRemote.scriptThroughput.callsPerSecond.toFixed(0)} (${ratio(classicRemote.scriptThroughput.callsPerSecond, baselineThroughput.callsPerSecond)}), +SPUBLISH ${shardedRun.scriptThroughput.callsPerSecond.toFixed(0)} (${ratio(shardedRun.scriptThroughput.callsPerSecond, baselineThroughput.callsPerSecond)})`,
          `writes/s delivered with ${IN_FLIGHT} in flight: classic ${classicRemote.throughput.callsPerSecond.toFixed(0)}, sharded ${shardedRun.throughput.callsPerSecond.toFixed(0)} (${ratio(shardedRun.throughput.callsPerSecond, classicRemote.throughput.callsPerSecond)})`,
          `cluster-bus messages per write: PUBLISH ${classicRemote.busMessagesPerWrite.toFixed(2)} (broadcast to every other node; grows with the cluster), SPUBLISH ${shardedRun.busMessagesPerWrite.toFixed(2)} (the shard's replicas only)`,
          `sharded: hearing every slot takes ${TOTAL_SLOTS} SSUBSCRIBE channels (one per slot; a script may only SPUBLISH in its own slot): ${ssubscribeAllMs.toFixed(0)} ms to subscribe them, ${masters} subscriber connections; classic: 1 channel, 1 connection`,
          `cluster start ${clusterStartMs.toFixed(0)} ms${crossTalk > 0 ? `; ${crossTalk} unexpected extra sharded messages` : ''}`,
        ],
        figures: {
          clusterStartMs,
          writes,
          concurrentWrites,
          inFlight: IN_FLIGHT,
          classicRemotePropagationP50Us: classicRemote.propagation.p50Us,
          classicRemotePropagationP99Us: classicRemote.propagation.p99Us,
          ...(classicLocal ? { classicLocalPropagationP50Us: classicLocal.propagation.p50Us, classicLocalPropagationP99Us: classicLocal.propagation.p99Us } : {}),
          shardedPropagationP50Us: shardedRun.propagation.p50Us,
          shardedPropagationP99Us: shardedRun.propagation.p99Us,
          scriptSetOnlyP50Us: baseline.latency.p50Us,
          scriptSetPublishP50Us: classicRemote.roundTrip.p50Us,
          scriptSetSpublishP50Us: shardedRun.roundTrip.p50Us,
          writesPerSecondSetOnly: baselineThroughput.callsPerSecond,
          writesPerSecondSetPublish: classicRemote.scriptThroughput.callsPerSecond,
          writesPerSecondSetSpublish: shardedRun.scriptThroughput.callsPerSecond,
          deliveredPerSecondClassic: classicRemote.throughput.callsPerSecond,
          deliveredPerSecondSharded: shardedRun.throughput.callsPerSecond,
          busMessagesPerPublish: classicRemote.busMessagesPerWrite,
          busMessagesPerSpublish: shardedRun.busMessagesPerWrite,
          shardedChannelsToHearEverySlot: TOTAL_SLOTS,
          ssubscribeAllMs,
          shardedSubscriberConnections: masters,
        },
      };
    } finally {
      await runCleanup(cleanup);
    }
  },
};
