/**
 * watch-memory: what do Watch streams that never read cost a sidecar as
 * deployed? A sidecar (dist/main.js, own process, L1-only, default Watch
 * budgets) gets 1,000 Watch streams over raw HTTP/2, then 3,000 Sets whose
 * events match every stream; its RSS and V8 heap are read from outside.
 * Run twice in the same run: once with streams that never read (the client
 * neither consumes nor acknowledges data, so HTTP/2 flow control stops the
 * transport and what the sidecar would send stays with it), once with
 * streams that read — the baseline: the same fan-out with nothing held.
 * What never reading costs is the difference; the default budgets are meant
 * to keep it well under 150 MiB.
 */
import { connect, constants, type ClientHttp2Session } from 'node:http2';
import { ContextCacheClient } from '../src/client';
import { WatchRequest } from '../src/gen/contextcache/v1/context_cache';
import { startDeployedSidecar } from './deployed';
import { scaled } from './harness';
import type { Bench, BenchReport } from './lib';

const MiB = 1024 * 1024;

/** A gRPC length-prefixed message: flag 0 (not compressed), length, bytes. */
function grpcFrame(message: Uint8Array): Buffer {
  const frame = Buffer.alloc(5 + message.length);
  frame.writeUInt32BE(message.length, 1);
  frame.set(message, 5);
  return frame;
}

async function settledRss(read: () => number): Promise<number> {
  // RSS moves while the sidecar drains its queues; take it once two readings 500 ms apart agree within 1 MiB (at most 10 s).
  let last = read();
  for (let i = 0; i < 20; i++) {
    await new Promise((resolve) => setTimeout(resolve, 500));
    const now = read();
    if (Math.abs(now - last) < MiB) return now;
    last = now;
  }
  return last;
}

interface Reading {
  idleRss: number;
  openRss: number;
  afterRss: number;
  heapUsed: number;
  heapTotal: number;
  external: number;
  delivered: number;
  dropped: number;
}

async function measure(streams: number, writes: number, reading: boolean): Promise<Reading> {
  const sidecar = await startDeployedSidecar({});
  const sessions: ClientHttp2Session[] = [];
  const client = new ContextCacheClient(sidecar.address);
  try {
    const idleRss = await settledRss(() => sidecar.rss());
    const request = grpcFrame(WatchRequest.encode(WatchRequest.fromPartial({})).finish());
    let started = 0;
    for (let i = 0; i < streams; i++) {
      if (i % 100 === 0) sessions.push(connect(`http://${sidecar.address}`));
      const stream = sessions.at(-1)!.request({
        [constants.HTTP2_HEADER_METHOD]: 'POST',
        [constants.HTTP2_HEADER_PATH]: '/contextcache.v1.ContextCache/Watch',
        'content-type': 'application/grpc',
        te: 'trailers',
      });
      // The first bytes (the Started event) are read; a never-reading stream is then paused for good.
      stream.once('data', () => {
        started++;
        if (!reading) stream.pause();
      });
      if (reading) stream.on('data', () => undefined);
      stream.on('error', () => undefined);
      stream.end(request);
    }
    const deadline = Date.now() + 30_000;
    while (started < streams && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 20));
    if (started < streams) throw new Error(`only ${started} of ${streams} Watch streams started within 30 s`);
    const openRss = await settledRss(() => sidecar.rss());
    const value = Buffer.alloc(1024, 'v');
    for (let i = 0; i < writes; i++) await client.set({ key: `watched-${i}`, value, tags: ['t'] });
    const afterRss = await settledRss(() => sidecar.rss());
    return {
      idleRss,
      openRss,
      afterRss,
      heapUsed: await sidecar.metric('nodejs_heap_size_used_bytes'),
      heapTotal: await sidecar.metric('nodejs_heap_size_total_bytes'),
      external: await sidecar.metric('nodejs_external_memory_bytes'),
      delivered: await sidecar.metric('context_cache_watch_events_total{result="delivered"}'),
      dropped: await sidecar.metric('context_cache_watch_events_total{result="dropped"}'),
    };
  } finally {
    client.close();
    for (const session of sessions) session.destroy();
    await sidecar.close();
  }
}

const mib = (bytes: number) => `${(bytes / MiB).toFixed(0)} MiB`;

export const watchMemory: Bench = {
  name: 'watch-memory',
  async run(): Promise<BenchReport> {
    const streams = scaled(1000, 100);
    const writes = scaled(3000, 300);
    const stuck = await measure(streams, writes, false);
    const flowing = await measure(streams, writes, true);
    const line = (name: string, r: Reading) =>
      `${name}: RSS idle ${mib(r.idleRss)}, streams open ${mib(r.openRss)}, after the writes ${mib(r.afterRss)} (+${mib(r.afterRss - r.idleRss)}); V8 heap used ${mib(r.heapUsed)} of ${mib(r.heapTotal)}, external ${mib(r.external)}; events delivered ${r.delivered}, dropped ${r.dropped}`;
    const held = stuck.heapUsed + stuck.external - (flowing.heapUsed + flowing.external);
    return {
      title: `Watch: ${streams} streams, ${writes} Sets of 1 KiB matching every stream, sidecar as deployed (Node ${process.version})`,
      results: [],
      notes: [
        line('streams that never read', stuck),
        line('streams that read (baseline)', flowing),
        `held for the streams that never read (heap used + external, over the baseline): ${mib(held)} (goal: well under 150 MiB)`,
        `RSS after the writes, never read / read: ${(stuck.afterRss / flowing.afterRss).toFixed(2)}x`,
      ],
      figures: {
        streams,
        writes,
        heldBytes: held,
        ...Object.fromEntries(Object.entries(stuck).map(([k, v]) => [`neverRead.${k}`, v])),
        ...Object.fromEntries(Object.entries(flowing).map(([k, v]) => [`reading.${k}`, v])),
      },
    };
  },
};
