/**
 * A separate process holding N Watch streams open on a sidecar and reading
 * them as fast as they come, as N application processes would. It records
 * when each event reaches each stream (process.hrtime is CLOCK_MONOTONIC,
 * comparable across processes on one machine) and, when told the start
 * times, reports latency percentiles over every stream.
 *
 * Usage: tsx bench/watch-crowd.ts <address> <streams> <key prefix>
 * stdin: "<key> <start ns>" lines, then "report". stdout: "ready", then one JSON line.
 */
import { createInterface } from 'node:readline';
import { ContextCacheClient, type WatchResponse } from '../src/client';
import { percentile } from './lib';

const [address, count, prefix] = process.argv.slice(2);
const clients = Array.from({ length: 4 }, () => new ContextCacheClient(address!));
const total = Number(count);
const arrivals = new Map<string, number[]>();
let started = 0;
for (let i = 0; i < total; i++) {
  const stream = clients[i % clients.length]!.watch({ keyPrefixes: [prefix!] });
  stream.call.on('data', (message: WatchResponse) => {
    const now = Number(process.hrtime.bigint());
    if (message.event?.$case === 'started') {
      if (++started === total) console.log('ready');
      return;
    }
    if (message.event?.$case !== 'keyInvalidated') return;
    const key = message.event.value.key;
    let list = arrivals.get(key);
    if (list === undefined) arrivals.set(key, (list = []));
    list.push(now);
  });
  stream.call.on('error', () => undefined);
}

const starts = new Map<string, number>();
createInterface({ input: process.stdin }).on('line', (line) => {
  if (line !== 'report') {
    const [key, ns] = line.split(' ');
    starts.set(key!, Number(ns));
    return;
  }
  const latencies: number[] = [];
  let missing = 0;
  for (const [key, start] of starts) {
    const list = arrivals.get(key) ?? [];
    missing += total - list.length;
    for (const at of list) latencies.push((at - start) / 1000);
  }
  latencies.sort((a, b) => a - b);
  console.log(JSON.stringify({ deliveries: latencies.length, missing, p50Us: percentile(latencies, 50), p90Us: percentile(latencies, 90), p99Us: percentile(latencies, 99), maxUs: latencies.at(-1) ?? 0 }));
  clients.forEach((client) => client.close());
  setImmediate(() => process.exit(0));
});
