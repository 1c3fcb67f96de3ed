import Redis, { Cluster } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { respCommand } from '../helpers/redis';
import { startCluster, startSentinel, type TestCluster, type TestSentinel } from '../helpers/topology';
import { rejectionOf, waitFor } from '../helpers/wait';

/**
 * The topology harness itself: the cluster and the Sentinel setup are real,
 * their faults are real, and ioredis (the sidecar's client) works against
 * them. One of each per file, shared by its tests, in order.
 */

let cluster: TestCluster;
let sentinel: TestSentinel;
const clients: (Cluster | Redis)[] = [];

/**
 * Commands time out instead of hanging through a failover; node errors are
 * expected then, and go nowhere. Ready first: a keyless command sent while
 * ioredis swaps its seed connections for the slot map's can fail with
 * "Connection is closed".
 */
async function clusterClient(): Promise<Cluster> {
  const client = new Cluster([...cluster.startupNodes], { redisOptions: { commandTimeout: 500 } });
  client.on('error', () => undefined);
  client.on('node error', () => undefined);
  clients.push(client);
  await new Promise<void>((resolve, reject) => {
    client.once('ready', resolve);
    client.once('end', () => reject(new Error('the cluster client ended before it was ready')));
  });
  return client;
}

beforeAll(async () => {
  [cluster, sentinel] = await Promise.all([startCluster(), startSentinel()]);
});

afterAll(async () => {
  for (const client of clients) client.disconnect();
  await Promise.all([cluster?.stop(), sentinel?.stop()]);
});

describe('a 3+3 Redis Cluster', () => {
  it('forms with 3 masters serving all 16384 slots, each with one replica, and serves ioredis Cluster', async () => {
    const masters = cluster.masters();
    expect(masters).toHaveLength(3);
    expect(cluster.replicas()).toHaveLength(3);
    expect(masters.reduce((sum, master) => sum + master.slotCount, 0)).toBe(16_384);
    for (const master of masters) expect(cluster.replicasOf(master)).toHaveLength(1);
    expect(cluster.seedList.split(',')).toEqual(cluster.seeds);
    expect(new Set(cluster.nodes.map((node) => node.id)).size).toBe(6);

    const client = await clusterClient();
    expect(await client.set('{form}k', 'v')).toBe('OK');
    const owner = await cluster.masterOf('{form}k');
    expect(owner.role).toBe('master');
    expect((await owner.command('GET', '{form}k'))?.toString()).toBe('v');
    // Another master answers MOVED to the owner: the slot map the harness reports is the servers' own.
    const other = masters.find((master) => master !== owner)!;
    expect((await rejectionOf(other.command('GET', '{form}k'))).message).toBe(`MOVED ${await cluster.keySlot('{form}k')} ${owner.address}`);
    expect(await client.eval("return redis.call('SET', KEYS[1], ARGV[1]) and redis.call('GET', KEYS[2])", 2, '{form}a', '{form}k', 'x')).toBe('v');
    expect((await rejectionOf(client.mget('{form}k', '{elsewhere}k'))).message).toMatch(/^CROSSSLOT/);
  });

  it('killMaster promotes the replica of the killed master, and writes to its slots succeed again', async () => {
    const client = await clusterClient();
    const key = '{failover}k';
    await client.set(key, 'before');
    const victim = await cluster.masterOf(key);
    const [replica] = cluster.replicasOf(victim);
    await victim.command('WAIT', 1, 2000);

    const { elapsedMs, promoted, slots } = await cluster.killMaster(victim);
    expect(promoted).toBe(replica);
    expect(promoted.role).toBe('master');
    expect(promoted.slots).toEqual(slots);
    expect(await cluster.masterOf(key)).toBe(promoted);
    // Failure detection (node timeout 1 s) plus the replica's election.
    expect(elapsedMs).toBeGreaterThan(1000);
    expect(elapsedMs).toBeLessThan(15_000);
    await waitFor(async () => (await client.set(key, 'after')) === 'OK', 'a write to the failed-over slot', 15_000, 50);
    expect((await promoted.command('GET', key))?.toString()).toBe('after');

    await cluster.restartKilled(victim);
    expect(victim.running).toBe(true);
    expect(victim.role).toBe('replica');
    expect(victim.masterId).toBe(promoted.id);
    // It came back empty and synced from the promoted master: it holds the write made after the failover.
    const direct = new Redis({ host: victim.host, port: victim.port, lazyConnect: true });
    clients.push(direct);
    await direct.connect();
    await direct.readonly();
    expect(await direct.get(key)).toBe('after');
  });

  it('reshard moves slots with their keys under load: ASK while a slot migrates, MOVED after, every acknowledged write readable', async () => {
    const client = await clusterClient();
    await cluster.refresh();
    const [from, to] = cluster.masters();
    // Keys spread over many slots; those on `from` decide which slots move.
    const candidates = Array.from({ length: 600 }, (_, i) => `reshard:{${i}}`);
    const slotOfKey = new Map(await Promise.all(candidates.map(async (key) => [key, Number(await client.cluster('KEYSLOT', key))] as const)));
    const fromSlots = new Set(from!.slots.flatMap(([first, last]) => Array.from({ length: last - first + 1 }, (_, i) => first + i)));
    const [probe, ...movingKeys] = candidates.filter((key) => fromSlots.has(slotOfKey.get(key)!)).slice(0, 60);
    // The probe key is not written under load: its value while its slot migrates is known.
    const slots = [...new Set([probe!, ...movingKeys].map((key) => slotOfKey.get(key)!))];
    const latest = new Map<string, string>();
    for (const key of candidates) {
      await client.set(key, 'v0');
      latest.set(key, 'v0');
    }

    let migrating = true;
    const errors: string[] = [];
    let writes = 0;
    const load = async (worker: number) => {
      for (let round = 1; migrating; round++) {
        const key = movingKeys[(round * 4 + worker) % movingKeys.length]!;
        const value = `w${worker}-${round}`;
        try {
          if ((await client.set(key, value)) === 'OK') {
            latest.set(key, value);
            writes++;
          }
          await client.get(movingKeys[(round * 7 + worker) % movingKeys.length]!);
        } catch (error) {
          errors.push((error as Error).message);
        }
      }
    };
    const loaders = [0, 1, 2, 3].map(load);

    const asked: string[] = [];
    const created = `${probe}:created-while-migrating`;
    const result = await cluster.reshard(slots.length, from!, to!, {
      slots,
      async whileMigrating(slot) {
        if (slot !== slotOfKey.get(probe!)) return;
        asked.push((await rejectionOf(from!.command('GET', probe!))).message);
        asked.push(String(await client.get(probe!)));
        // A key the source does not hold: ioredis follows the ASK to the target with it too.
        asked.push(String(await client.set(created, 'new')));
      },
    });
    migrating = false;
    await Promise.all(loaders);

    expect(result.slots).toEqual(slots);
    expect(result.keysMoved).toBeGreaterThanOrEqual(movingKeys.length + 1);
    expect(asked).toEqual([`ASK ${slotOfKey.get(probe!)} ${to!.address}`, 'v0', 'OK']);
    expect((await to!.command('GET', created))?.toString()).toBe('new');
    expect((await rejectionOf(from!.command('GET', probe!))).message).toBe(`MOVED ${slotOfKey.get(probe!)} ${to!.address}`);
    for (const slot of slots) expect(cluster.masterOfSlot(slot)).toBe(to);
    expect(errors).toEqual([]);
    expect(writes).toBeGreaterThan(0);
    for (const key of candidates) expect(await client.get(key)).toBe(latest.get(key));
  });
});

describe('a Sentinel setup: 1 master, 1 replica, 3 sentinels', () => {
  it('failover() promotes the replica, and ioredis with sentinels writes to the new master', async () => {
    const client = new Redis({ sentinels: [...sentinel.sentinelAddresses], name: sentinel.masterName, retryStrategy: () => 100, commandTimeout: 500 });
    client.on('error', () => undefined);
    clients.push(client);
    const [master, replica] = [sentinel.master(), sentinel.replica()];
    await client.set('k', 'before');
    expect((await master.command('GET', 'k'))?.toString()).toBe('before');
    await master.command('WAIT', 1, 2000);

    const { elapsedMs, master: promoted, previous } = await sentinel.failover();
    expect(previous).toBe(master);
    expect(promoted).toBe(replica);
    expect(sentinel.master()).toBe(replica);
    // down-after-milliseconds 1 s plus the election.
    expect(elapsedMs).toBeGreaterThan(1000);
    expect(elapsedMs).toBeLessThan(15_000);
    await waitFor(async () => (await client.set('k', 'after')) === 'OK', 'a write through the sentinels after the failover', 15_000, 50);
    expect((await promoted.command('GET', 'k'))?.toString()).toBe('after');

    // The old master comes back as a replica of the new one, and the sentinels agree.
    await sentinel.replica().restart();
    await sentinel.waitUntilHealthy();
    expect((await master.command('INFO', 'replication'))?.toString()).toContain(`master_port:${promoted.port}`);
    expect((await master.command('GET', 'k'))?.toString()).toBe('after');
    // The steps' own bounds (a failover within 15 s, a write within 15 s, health within 45 s) are what this test holds; the test's timeout only has to exceed their sum (30 s did not, on a loaded machine).
  }, 90_000);

  it('stop() ends every process it started, and a second stop() is harmless', async () => {
    const ports = [sentinel.master().port, sentinel.replica().port, ...sentinel.sentinelNodes.map((node) => node.port)];
    await sentinel.stop();
    await sentinel.stop();
    for (const port of ports) expect((await rejectionOf(respCommand(port, ['PING']))).message).toMatch(/ECONNREFUSED/);
  });
});
