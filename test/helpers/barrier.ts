import type { ContextCacheClient } from '../../src/client';
import { bucketOf } from '../../src/redis/keys';
import { waitFor } from './wait';
import { WatchRecorder } from './watch';

let rounds = 0;

/**
 * Resolves once every sidecar has applied the events of all writes answered
 * so far through the others. "Coherent" means subscribed with nothing to
 * replay, not that nothing is in flight: a write is answered once its script
 * ran, and its PUBLISH reaches the other sidecars afterwards (until then
 * their L1 may serve the value it superseded). On a Cluster the message also
 * crosses the cluster bus to the node each subscriber holds: measured under
 * the topology load at 6 ms median, up to ~75 ms. A node's messages reach a
 * subscriber in order (one cluster-bus link, one connection; on one server,
 * PUBLISH fills every subscriber's buffer at once), so a marker written
 * through each sidecar in every bucket (so on every primary that serves one;
 * `buckets` 1 on a single server) proves, once the others' Watch streams
 * report it, that all that node published before was applied there.
 */
export async function eventsDelivered(clients: readonly ContextCacheClient[], buckets: number): Promise<void> {
  const prefix = `barrier-${process.pid}-${++rounds}-`;
  // Per sidecar, one marker key in each bucket.
  const markers = clients.map((_, c) => {
    const keys = new Map<number, string>();
    for (let i = 0; keys.size < buckets; i++) {
      const key = `${prefix}${c}-${i}`;
      if (!keys.has(bucketOf(key, buckets))) keys.set(bucketOf(key, buckets), key);
    }
    return [...keys.values()];
  });
  const watches = clients.map((client) => new WatchRecorder(client.watch({ keyPrefixes: [prefix] })));
  try {
    await Promise.all(watches.map((watch) => watch.started()));
    await Promise.all(clients.map((client, c) => Promise.all(markers[c]!.map((key) => client.set({ key, value: Buffer.from('marker') })))));
    const heard = (watch: WatchRecorder) => new Set(watch.messages.flatMap((m) => (m.event?.$case === 'keyInvalidated' ? [m.event.value.key] : [])));
    await waitFor(
      () =>
        watches.every((watch, w) => {
          const seen = heard(watch);
          return markers.every((keys, c) => c === w || keys.every((key) => seen.has(key)));
        }),
      "every sidecar to hear of the others' markers",
      10_000,
    );
  } finally {
    for (const watch of watches) watch.cancel();
  }
}
